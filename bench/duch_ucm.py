"""DUCH on UC Merced at several code lengths, beside the paper's row and two classical baselines.

Usage (full protocol, 100 epochs; the features are encoded once and cached):
    python bench/duch_ucm.py --data ../shared/data/ucm_captions --bits 16,32,64,128
    python bench/duch_ucm.py --bits 64 --seeds 0,1,2 --split-seeds 42   # spread over training seeds
    python bench/duch_ucm.py --bits 64 --seeds 0 --split-seeds 42,7,123 # spread over split seeds

Prints mAP@20 (reference calc_map_k and standard AP@20) for I→T and T→I, the training time of each
run, and CCA+ITQ / ridge+PCA+ITQ computed on the same features and split in the same run.
Results also go to OUT/results.json and OUT/results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from tfduch.baselines import CCAITQ, RidgePCAITQ
from tfduch.config import load_config
from tfduch.eval import evaluate_retrieval, markdown_table
from tfduch.io import atomic_write_json, atomic_write_text
from tfduch.pipeline import prepare, retrieval_features, train_and_evaluate, training_features

PAPER = {"i2t": {16: 0.760, 32: 0.794, 64: 0.844, 128: 0.870}, "t2i": {16: 0.799, 32: 0.851, 64: 0.916, 128: 0.927}}
TARGET = {"i2t": {16: 0.92, 32: 0.93, 64: 0.95, 128: 0.96}, "t2i": {16: 0.96, 32: 0.98, 64: 0.98, 128: 0.98}}


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def baseline_rows(prep, bits: int, k: int) -> list[dict]:
    tf_ = training_features(prep)
    q_img, q_txt, q_lab = retrieval_features(prep, "query")
    d_img, d_txt, d_lab = retrieval_features(prep, "database")
    rows = []
    for name, cls in (("CCA+ITQ", CCAITQ), ("Ridge+PCA+ITQ", RidgePCAITQ)):
        model = cls(bits).fit(tf_.image, tf_.text)
        rep = evaluate_retrieval(model.encode_image(q_img), model.encode_text(q_txt), model.encode_image(d_img),
                                 model.encode_text(d_txt), q_lab, d_lab, k=k).summary()
        rows.append({"method": name, "bits": bits, **rep})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("TFDUCH_DATA", "../shared/data/ucm_captions"))
    ap.add_argument("--bits", default="16,32,64,128")
    ap.add_argument("--seeds", default="0", help="training seeds")
    ap.add_argument("--split-seeds", default="42")
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--out", default="runs/bench_duch_ucm")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--baselines-only", action="store_true", help="only the classical baselines (no DUCH training)")
    args = ap.parse_args()
    out = Path(args.out)
    rows: list[dict] = []
    for split_seed in _ints(args.split_seeds):
        for bits in _ints(args.bits):
            for seed in _ints(args.seeds):
                run_dir = out / f"split{split_seed}-bits{bits}-seed{seed}"
                cfg = load_config(None, [f"data.root={args.data}", f"model.bits={bits}", f"train.seed={seed}",
                                         f"data.split_seed={split_seed}", f"train.epochs={args.epochs}",
                                         f"output_dir={run_dir}", "train.checkpoint=false", "train.verbose=0",
                                         *args.overrides])
                prep = prepare(cfg, progress=True)
                if args.baselines_only:
                    break
                t0 = time.perf_counter()
                _, report, summary = train_and_evaluate(cfg, prep, plots=False)
                rows.append({"method": "DUCH", "bits": bits, "seed": seed, "split_seed": split_seed,
                             "train_seconds": round(summary["train_seconds"], 1),
                             "wall_seconds": round(time.perf_counter() - t0, 1), **report.summary()})
                print(json.dumps(rows[-1]), flush=True)
            # Once per split and code length: the baselines do not depend on the training seed.
            for row in baseline_rows(prep, bits, cfg.eval.k):
                rows.append({**row, "split_seed": split_seed})
    atomic_write_json(out / "results.json", rows)
    table = summarise(rows)
    atomic_write_text(out / "results.md", table)
    print(table)
    return 0


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def summarise(rows: list[dict]) -> str:
    """One line per method × bits: mean ± std over seeds/splits, beside the paper row and the targets."""
    out_rows = []
    for method in dict.fromkeys(r["method"] for r in rows):
        for bits in sorted({r["bits"] for r in rows if r["method"] == method}):
            sel = [r for r in rows if r["method"] == method and r["bits"] == bits]
            row = {"method": method, "bits": bits, "runs": len(sel)}
            for d in ("i2t", "t2i"):
                row[f"{d} mAP@20"] = _mean_std([r[f"{d}/map@20"] for r in sel])
                row[f"{d} AP@20 std"] = _mean_std([r[f"{d}/map@20_std"] for r in sel])
                if method == "DUCH":
                    row[f"{d} paper"] = PAPER[d].get(bits)
                    row[f"{d} target"] = TARGET[d].get(bits)
            if "train_seconds" in sel[0]:
                row["train s"] = f"{np.mean([r['train_seconds'] for r in sel]):.0f}"
            out_rows.append(row)
    columns = ["method", "bits", "runs", "i2t mAP@20", "i2t AP@20 std", "i2t paper", "i2t target", "t2i mAP@20",
               "t2i AP@20 std", "t2i paper", "t2i target", "train s"]
    return markdown_table(out_rows, columns, floatfmt=".3f")


if __name__ == "__main__":
    sys.exit(main())
