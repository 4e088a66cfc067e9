// Archive search page: text box -> /api/search -> thumbnail grid; click a thumbnail -> /api/captions.
"use strict";

const $ = (id) => document.getElementById(id);

function setStatus(text, isError) {
  const el = $("status");
  el.textContent = text;
  el.className = isError ? "error" : "muted";
}

async function getJSON(url) {
  const response = await fetch(url);
  const body = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

function card(hit) {
  const fig = document.createElement("figure");
  fig.className = "result";
  fig.dataset.id = hit.id;
  fig.dataset.class = hit.class ?? "";
  fig.dataset.distance = hit.distance;
  fig.tabIndex = 0;
  const img = document.createElement("img");
  img.src = hit.thumb;
  img.alt = hit.name || `image ${hit.id}`;
  img.loading = "lazy";
  const cap = document.createElement("figcaption");
  const dist = document.createElement("span");
  dist.className = "distance";
  dist.textContent = `d=${hit.distance}`;
  const cls = document.createElement("span");
  cls.className = "class";
  cls.textContent = hit.class ?? "?";
  cap.append(`#${hit.rank} `, cls, " ", dist);
  fig.append(img, cap);
  fig.title = hit.caption || hit.name || "";
  fig.addEventListener("click", () => showCaptions(hit));
  fig.addEventListener("keydown", (e) => { if (e.key === "Enter") showCaptions(hit); });
  return fig;
}

async function search(event) {
  if (event) event.preventDefault();
  const q = $("query").value;
  const k = $("k").value;
  const grid = $("results");
  if (!q.trim()) {
    grid.replaceChildren();
    setStatus("Type a few words describing the scene you are looking for.", true);
    return;
  }
  setStatus("searching…");
  try {
    const res = await getJSON(`/api/search?q=${encodeURIComponent(q)}&k=${encodeURIComponent(k)}`);
    grid.replaceChildren(...res.results.map(card));
    const notes = res.notices.length ? ` (${res.notices.join("; ")})` : "";
    setStatus(`${res.results.length} images for “${res.query}” in ${res.ms} ms${notes}`, false);
  } catch (err) {
    grid.replaceChildren();
    setStatus(err.message, true);
  }
}

async function showCaptions(hit) {
  const panel = $("captions");
  panel.hidden = false;
  $("captions-title").textContent = `${hit.class ?? "image"} · ${hit.name || hit.id}`;
  $("captions-image").src = hit.thumb;
  const list = $("captions-list");
  list.replaceChildren();
  try {
    const res = await getJSON(`/api/captions?id=${encodeURIComponent(hit.id)}&k=5`);
    for (const c of res.results) {
      const li = document.createElement("li");
      li.className = "caption";
      li.dataset.class = c.class ?? "";
      li.textContent = `${c.caption} `;
      const d = document.createElement("span");
      d.className = "distance";
      d.textContent = `d=${c.distance}`;
      li.append(d);
      list.append(li);
    }
    if (!res.results.length) list.textContent = res.notices.join("; ");
  } catch (err) {
    list.textContent = err.message;
  }
}

async function init() {
  $("search-form").addEventListener("submit", search);
  $("close-captions").addEventListener("click", () => { $("captions").hidden = true; });
  try {
    const info = await getJSON("/api/info");
    $("query").maxLength = info.max_query_chars * 4; // the server cuts to max_query_chars and says so
    $("info").textContent = `${info.counts.image ?? 0} images, ${info.counts.text ?? 0} captions · ` +
      `${info.bits}-bit codes · model ${info.model_id ?? "unknown"}`;
  } catch (err) {
    $("info").textContent = `cannot read the index: ${err.message}`;
  }
}

init();
