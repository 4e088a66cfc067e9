"""Write a :class:`~tfduch.eval.metrics.RetrievalReport` to disk: JSON, a markdown table, two plots.

Every file is written atomically (temporary file in the same folder, then ``os.replace``) so that
a crash or a concurrent reader never sees a half-written report. Plots use matplotlib's
object-oriented API on an Agg canvas: no display, no global pyplot state.
"""

from __future__ import annotations

import io
import json
import math
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tfduch.eval.metrics import RetrievalReport
from tfduch.io import atomic_write_bytes, atomic_write_text

__all__ = ["markdown_table", "write_report"]

Column = str | tuple[str, str]


def _cell(value: Any, floatfmt: str) -> str:
    if value is None:
        return ""
    if isinstance(value, (float, np.floating)):
        return "nan" if math.isnan(float(value)) else format(float(value), floatfmt)
    text = str(value)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column], floatfmt: str = ".4f"
                   ) -> str:
    """A GitHub-flavoured markdown table, one row per mapping.

    ``columns`` are keys, or ``(key, header)`` pairs to rename a column. Floats are formatted with
    ``floatfmt``, missing keys and ``None`` give empty cells, ``|`` in cells is escaped. Numeric
    columns are right-aligned. Reused by the benchmark tables.
    """
    if not columns:
        raise ValueError("markdown_table needs at least one column")
    keys = [c if isinstance(c, str) else c[0] for c in columns]
    headers = [c if isinstance(c, str) else c[1] for c in columns]
    body = [[_cell(row.get(key), floatfmt) for key in keys] for row in rows]

    def numeric(key: str) -> bool:
        values = [row.get(key) for row in rows if row.get(key) is not None]
        return bool(values) and all(isinstance(v, (int, float, np.integer, np.floating))
                                    and not isinstance(v, bool) for v in values)

    aligns = ["---:" if numeric(key) else ":---" for key in keys]
    lines = ["| " + " | ".join(_cell(h, floatfmt) for h in headers) + " |",
             "| " + " | ".join(aligns) + " |"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines) + "\n"


def _metrics_markdown(report: RetrievalReport, title: str) -> str:
    k = report.k
    rows = [{"direction": name, "ref": r.map_reference, "std": r.map_standard,
             **{f"p@{kk}": float(p) for kk, p in zip(report.ks, r.p_at_k, strict=True)}}
            for name, r in report.directions.items()]
    map_cols: list[Column] = [("direction", "direction"), ("ref", f"mAP@{k} (reference)"),
                              ("std", f"mAP@{k} (standard)")]
    p_cols: list[Column] = [("direction", "direction")] + [(f"p@{kk}", f"P@{kk}") for kk in report.ks]
    parts = [f"# {title}", "",
             f"{report.n_bits} bits, {report.n_query} queries, {report.n_database} database items. "
             "Ranking by Hamming distance, ties broken by database index. *reference* = DUCH's "
             f"`calc_map_k` (first min({k}, R) relevant items of the full ranking); *standard* = AP@{k} "
             "over the top-k list.", "",
             markdown_table(rows, map_cols)]
    if report.ks:
        parts += ["## Precision at k", "", markdown_table(rows, p_cols)]
    return "\n".join(parts)


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    return buf.getvalue()


def _plot_pr(report: RetrievalReport, title: str) -> bytes:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4.5))
    ax = fig.add_subplot()
    for name, r in report.directions.items():
        ok = ~np.isnan(r.pr.precision) & ~np.isnan(r.pr.recall)
        ax.plot(r.pr.recall[ok], r.pr.precision[ok], marker=".", markersize=3, label=name)
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02),
           title=f"{title}: PR over Hamming radius ({report.n_bits} bits)")
    ax.grid(alpha=0.3)
    ax.legend()
    return _png(fig)


def _plot_p_at_k(report: RetrievalReport, title: str) -> bytes:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4.5))
    ax = fig.add_subplot()
    for name, r in report.directions.items():
        ax.plot(report.ks, r.p_at_k, marker="o", label=name)
    ax.set(xlabel="k", ylabel="precision@k", ylim=(0, 1.02), title=f"{title}: P@k ({report.n_bits} bits)")
    if report.ks and min(report.ks) > 0 and max(report.ks) / min(report.ks) >= 20:
        ax.set_xscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    return _png(fig)


def write_report(report: RetrievalReport, out_dir: str | os.PathLike[str],
                 title: str = "Retrieval evaluation", plots: bool = True) -> dict[str, pathlib.Path]:
    """Write ``metrics.json``, ``metrics.md``, ``pr_curve.png`` and ``p_at_k.png`` into ``out_dir``.

    Returns the written paths by name (``json``, ``markdown``, ``pr_curve``, ``p_at_k``). NaN values
    become ``null`` in the JSON. ``plots=False`` skips the PNGs (e.g. for per-epoch evaluations).
    """
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"title": title, **report.to_dict()}
    paths = {
        "json": atomic_write_text(out / "metrics.json",
                                  json.dumps(payload, indent=2, allow_nan=False) + "\n"),
        "markdown": atomic_write_text(out / "metrics.md", _metrics_markdown(report, title)),
    }
    if plots:
        paths["pr_curve"] = atomic_write_bytes(out / "pr_curve.png", _plot_pr(report, title))
        paths["p_at_k"] = atomic_write_bytes(out / "p_at_k.png", _plot_p_at_k(report, title))
    return paths
