"""Reporting: aggregate finished cells into the table (JSON + Markdown) and the PR-curve figures."""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any

import numpy as np

from tfduch.eval import markdown_table
from tfduch.eval.metrics import PRCurve
from tfduch.io import atomic_write_bytes, atomic_write_text
from tfduch.reproduce.grid import CLASSICAL, PUBLISHED, REFERENCE, ReproduceSpec, display_name


def _stats(values: list[float]) -> dict[str, Any]:
    arr = np.asarray(values, dtype=np.float64)
    std = float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
    return {"mean": float(arr.mean()), "std": std, "n": len(arr), "values": [float(v) for v in arr]}


def build_table(spec: ReproduceSpec, records: list[dict[str, Any]], dataset: str) -> dict[str, Any]:
    """Aggregate finished cells into rows of mean ± std over seeds (JSON-ready)."""
    by_row: dict[tuple[str, str, int | None], dict[str, list[float]]] = {}
    seeds: dict[tuple[str, str, int | None], list[int]] = {}
    epochs: dict[str, int] = {}
    for r in records:
        for ranking, key in (("hamming", "metrics"), ("cosine", "continuous")):
            report = r.get(key)
            if not report:
                continue
            if r["method"] in REFERENCE:
                ranking = "cosine"
            row = (r["method"], ranking, r["bits"])
            seeds.setdefault(row, []).append(r["seed"])
            for d, res in report["directions"].items():
                if res["map_reference"] is not None:
                    by_row.setdefault(row, {}).setdefault(d, []).append(res["map_reference"])
        if "epochs" in r:
            epochs[r["method"]] = r["epochs"]
    order = {m: i for i, m in enumerate(spec.methods)}
    rows = []
    for (method, ranking, bits), values in sorted(by_row.items(), key=lambda kv: (
            kv[0][1] != "hamming", order.get(kv[0][0], 99), kv[0][2] or 0)):
        published = PUBLISHED.get(method, {})
        rows.append({"method": method, "name": display_name(method), "ranking": ranking, "bits": bits,
                     "seeds": sorted(seeds[(method, ranking, bits)]),
                     "map": {d: _stats(v) for d, v in values.items()},
                     "published": {d: published[d][bits] for d in published if bits in published[d]}
                     if ranking == "hamming" else {}})
    return {"dataset": dataset, "k": 20, "map_definition": "reference (DUCH calc_map_k)",
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "methods": list(spec.methods), "bits": list(spec.bits), "seeds_requested": spec.seeds,
            "epochs": epochs, "epochs_override": spec.epochs, "skipped": dict(spec.skipped), "rows": rows,
            "published": {m: {d: {str(b): v for b, v in per.items()} for d, per in dirs.items()}
                          for m, dirs in PUBLISHED.items()},
            "comparisons": _comparisons(rows, spec)}


def _row_mean(rows: list[dict[str, Any]], method: str, bits: int) -> float | None:
    for row in rows:
        if row["method"] == method and row["bits"] == bits and row["ranking"] == "hamming":
            if all(d in row["map"] for d in ("i2t", "t2i")):
                return (row["map"]["i2t"]["mean"] + row["map"]["t2i"]["mean"]) / 2.0
    return None


def _comparisons(rows: list[dict[str, Any]], spec: ReproduceSpec) -> list[dict[str, Any]]:
    """The issue's bars, checked: CACH vs DUCH, and each learned method vs CCA+ITQ (mean of I→T, T→I)."""
    out = []
    for bits in spec.bits:
        pairs = [("cach", "duch")] + [(m, "cca-itq") for m in spec.methods
                                      if m not in CLASSICAL and m not in REFERENCE]
        for a, b in pairs:
            ma, mb = _row_mean(rows, a, bits), _row_mean(rows, b, bits)
            if ma is not None and mb is not None:
                out.append({"bits": bits, "method": a, "versus": b, "mean_map": ma, "versus_mean_map": mb,
                            "difference": ma - mb, "at_or_above": ma >= mb})
    return out


def _fmt(stats: dict[str, Any] | None, seeds_requested: int) -> str:
    if stats is None:
        return ""
    text = f"{stats['mean']:.3f}"
    if stats["n"] > 1:
        text += f" ± {stats['std']:.3f}"
    if stats["n"] != seeds_requested:
        text += f" ({stats['n']})"
    return text


def table_markdown(table: dict[str, Any]) -> str:
    """The human-readable table: one block per direction, published rows beside ours."""
    bits, n_seeds = table["bits"], table["seeds_requested"]
    lines = [f"# Reproduction on {table['dataset']}: mAP@{table['k']}", "",
             f"mAP@{table['k']} with the {table['map_definition']} definition; ranking by Hamming distance "
             "(ties by database index) unless marked cosine. Cells: mean ± sample std over training seeds "
             f"({n_seeds} requested; a number in brackets = seeds actually finished). Same frozen features, "
             "split and evaluation for every row. Published rows: DUCH paper (Mikriukov et al. 2022), UCM.", ""]
    if table["epochs"]:
        lines.append("Training epochs: " + ", ".join(f"{display_name(m)} {e}" for m, e in table["epochs"].items())
                     + (" (--epochs override)" if table["epochs_override"] else "") + ".")
        lines.append("")
    if any(row["method"] in REFERENCE for row in table["rows"]):
        lines += ["*cosine · frozen features* ranks by cosine on the frozen encoder outputs, without training and "
                  "without codes (the same value in every column); cross-modal it is n/a, since the image and text "
                  "encoders do not share a space. *tanh codes, cosine* rows rank a learned method's continuous "
                  "codes by cosine: the gap to its Hamming row is what binarisation costs.", ""]
    for method, why in table["skipped"].items():
        lines += [f"*{display_name(method)} not run: {why}.*", ""]
    rows = table["rows"]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["ranking"]), []).append(row)
    for directions, title in ((("i2t", "t2i"), "Cross-modal"), (("i2i", "t2t"), "Uni-modal")):
        for d in directions:
            body = []
            for (method, ranking), per_bits in groups.items():
                cells = {r["bits"]: r for r in per_bits}
                if all(d not in r["map"] for r in per_bits):
                    if method in REFERENCE and title == "Cross-modal":
                        body.append({"method": display_name(method), **{f"b{b}": "n/a" for b in bits}})
                    continue
                name = display_name(method) + (" (tanh codes, cosine)" if ranking == "cosine"
                                               and method not in REFERENCE else "")
                if None in cells:  # bit-free reference: same value in every column
                    value = _fmt(cells[None]["map"].get(d), 1)
                    body.append({"method": name, **{f"b{b}": value for b in bits}})
                    continue
                body.append({"method": name, **{f"b{b}": _fmt(cells[b]["map"].get(d), n_seeds)
                                                 if b in cells else "" for b in bits}})
                published = PUBLISHED.get(method, {}).get(d)
                if ranking == "hamming" and published:
                    body.append({"method": f"{display_name(method)} (published)",
                                 **{f"b{b}": f"{published[b]:.3f}" if b in published else "" for b in bits}})
            if body:
                arrow = {"i2t": "I→T", "t2i": "T→I", "i2i": "I→I", "t2t": "T→T"}[d]
                lines += [f"## {title}: {arrow}", "",
                          markdown_table(body, [("method", "method")] + [(f"b{b}", f"{b} bits") for b in bits])]
    comparisons = table.get("comparisons") or []
    if comparisons:
        lines += ["## Checks (mean of I→T and T→I)", "",
                  markdown_table([{"bits": c["bits"], "method": display_name(c["method"]),
                                   "versus": display_name(c["versus"]), "ours": c["mean_map"],
                                   "theirs": c["versus_mean_map"], "difference": c["difference"],
                                   "at or above": "yes" if c["at_or_above"] else "NO"} for c in comparisons],
                                 ["bits", "method", "versus", "ours", "theirs", "difference", "at or above"],
                                 floatfmt=".4f")]
    return "\n".join(lines)


def _mean_curve(curves: list[PRCurve]) -> PRCurve:
    precision = np.nanmean(np.stack([c.precision for c in curves]), axis=0)
    recall = np.nanmean(np.stack([c.recall for c in curves]), axis=0)
    return PRCurve(curves[0].radius, precision, recall)


def pr_figure(records: list[dict[str, Any]], bits: int, title: str) -> bytes | None:
    """PNG of the Hamming-radius PR curves (I→T and T→I) of every method at one code length, seed-averaged."""
    import io
    import warnings

    from matplotlib.figure import Figure

    curves: dict[str, dict[str, list[PRCurve]]] = {}
    for r in records:
        if r["bits"] != bits:
            continue
        for d in ("i2t", "t2i"):
            res = r["metrics"]["directions"].get(d)
            if res is not None:
                curves.setdefault(r["method"], {}).setdefault(d, []).append(PRCurve.from_dict(res["pr"]))
    if not curves:
        return None
    fig = Figure(figsize=(11, 4.5))
    for i, d in enumerate(("i2t", "t2i")):
        ax = fig.add_subplot(1, 2, i + 1)
        for method, per_dir in curves.items():
            if d not in per_dir:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN radii of some seeds
                curve = _mean_curve(per_dir[d])
            ok = ~np.isnan(curve.precision) & ~np.isnan(curve.recall)
            ax.plot(curve.recall[ok], curve.precision[ok], marker=".", markersize=3, label=display_name(method))
        ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02),
               title=f"{title}: {'I→T' if d == 'i2t' else 'T→I'}, {bits} bits")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def write_table(table: dict[str, Any], out: Path, records: list[dict[str, Any]], name: str = "reproduce"
                ) -> dict[str, Path]:
    """``<name>.json``, ``<name>.md`` and ``<name>_pr_<bits>bits.png`` for every code length with results."""
    paths = {"json": atomic_write_text(out / f"{name}.json", json.dumps(table, indent=2, allow_nan=False) + "\n"),
             "markdown": atomic_write_text(out / f"{name}.md", table_markdown(table))}
    for bits in table["bits"]:
        png = pr_figure(records, bits, table["dataset"])
        if png is not None:
            paths[f"pr_{bits}"] = atomic_write_bytes(out / f"{name}_pr_{bits}bits.png", png)
    return paths

