// Archive search page: text box -> /api/search -> thumbnail grid; click a thumbnail -> /api/captions.
// Geo archives: result footprints on a Leaflet map (vendored, no internet), footprint <-> card highlight,
// and a box drawn on the map restricts the search to that area (bbox=minlon,minlat,maxlon,maxlat).
"use strict";

const $ = (id) => document.getElementById(id);
const geo = { map: null, layer: null, box: null, bbox: null, drawing: false, polygons: new Map() };

function highlight(id, fromMap) {
  for (const el of document.querySelectorAll(".result.selected")) el.classList.remove("selected");
  for (const [pid, poly] of geo.polygons) {
    poly.setStyle(pid === id ? { color: "#d7301f", weight: 3, fillOpacity: 0.35 }
                             : { color: "#2c7fb8", weight: 1, fillOpacity: 0.15 });
    if (pid === id) poly.bringToFront();
  }
  const fig = document.querySelector(`.result[data-id="${id}"]`);
  if (fig) {
    fig.classList.add("selected");
    if (fromMap) fig.scrollIntoView({ block: "nearest" });
  }
}

function drawFootprints(results) {
  if (!geo.map) return;
  geo.layer.clearLayers();
  geo.polygons.clear();
  const all = [];
  for (const hit of results) {
    if (!hit.footprint) continue;
    const latlngs = hit.footprint.map(([lon, lat]) => [lat, lon]);
    const poly = L.polygon(latlngs, { color: "#2c7fb8", weight: 1, fillOpacity: 0.15 });
    poly.bindTooltip(`#${hit.rank} d=${hit.distance} · ${hit.scene_id ?? ""}`);
    poly.on("click", () => highlight(hit.id, true));
    poly.addTo(geo.layer);
    geo.polygons.set(hit.id, poly);
    all.push(...latlngs);
  }
  if (all.length) geo.map.fitBounds(L.latLngBounds(all).pad(0.1));
}

function setBox(bounds) {
  if (geo.box) geo.box.remove();
  geo.box = null;
  geo.bbox = null;
  if (bounds) {
    geo.box = L.rectangle(bounds, { color: "#31a354", weight: 2, fill: false, dashArray: "6 4" }).addTo(geo.map);
    const f = (v) => v.toFixed(6);
    geo.bbox = [bounds.getWest(), bounds.getSouth(), bounds.getEast(), bounds.getNorth()].map(f).join(",");
  }
  $("clear-box").disabled = !geo.bbox;
  $("bbox-text").textContent = geo.bbox ? `area filter: ${geo.bbox}` : "no area filter: the whole archive is searched";
}

function initMap(info) {
  $("map-panel").hidden = false;
  geo.map = L.map("map", { zoomControl: true, attributionControl: Boolean(info.basemap) });
  if (info.basemap) L.tileLayer(info.basemap, { maxZoom: 22, attribution: "base map: " + info.basemap }).addTo(geo.map);
  geo.layer = L.featureGroup().addTo(geo.map);
  geo.map.setView([0, 0], 2);
  let start = null;
  let preview = null;
  geo.map.on("mousedown", (e) => {
    if (!geo.drawing) return;
    start = e.latlng;
    geo.map.dragging.disable();
  });
  geo.map.on("mousemove", (e) => {
    if (!geo.drawing || !start) return;
    if (preview) preview.remove();
    preview = L.rectangle(L.latLngBounds(start, e.latlng), { color: "#31a354", weight: 1 }).addTo(geo.map);
  });
  geo.map.on("mouseup", (e) => {
    if (!geo.drawing || !start) return;
    if (preview) preview.remove();
    preview = null;
    const bounds = L.latLngBounds(start, e.latlng);
    start = null;
    geo.drawing = false;
    geo.map.dragging.enable();
    $("draw-box").setAttribute("aria-pressed", "false");
    $("map").classList.remove("drawing");
    setBox(bounds);
    if ($("query").value.trim()) search();
  });
  $("draw-box").addEventListener("click", () => {
    geo.drawing = !geo.drawing;
    $("draw-box").setAttribute("aria-pressed", String(geo.drawing));
    $("map").classList.toggle("drawing", geo.drawing);
  });
  $("clear-box").addEventListener("click", () => { setBox(null); if ($("query").value.trim()) search(); });
}

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
  cls.textContent = hit.class ?? hit.scene_id ?? "?";
  cap.append(`#${hit.rank} `, cls, " ", dist);
  fig.append(img, cap);
  fig.title = hit.caption || hit.name || "";
  fig.addEventListener("click", () => { highlight(hit.id, false); showCaptions(hit); });
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
    const area = geo.bbox ? `&bbox=${encodeURIComponent(geo.bbox)}` : "";
    const res = await getJSON(`/api/search?q=${encodeURIComponent(q)}&k=${encodeURIComponent(k)}${area}`);
    grid.replaceChildren(...res.results.map(card));
    drawFootprints(res.results);
    const notes = res.notices.length ? ` (${res.notices.join("; ")})` : "";
    const where = geo.bbox ? " in the area" : "";
    setStatus(`${res.results.length} images for “${res.query}”${where} in ${res.ms} ms${notes}`, false);
  } catch (err) {
    grid.replaceChildren();
    setStatus(err.message, true);
  }
}

async function showCaptions(hit) {
  const panel = $("captions");
  panel.hidden = false;
  $("captions-title").textContent = `${hit.class ?? (hit.scene_id ? "tile" : "image")} · ${hit.name || hit.id}`;
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
    if (info.geo && window.L) initMap(info);
  } catch (err) {
    $("info").textContent = `cannot read the index: ${err.message}`;
  }
}

init();
