"""CHNR vs DUCH under injected caption noise on UC Merced, beside the reference numbers.

    python bench/noise_sweep.py --data ../shared/data/ucm_captions [--p 0.5] [--schemes w,w3,threshold]
        [--epochs 100] [--switch-epoch 50] [--output runs/noise_sweep]

For every noise level p the captions of a share p of the training pairs (outside a fixed, never
corrupted 20 %) are replaced by captions of an image of another class; one noise file per p is shared
by every method, so all of them see identical noise. Runs:

* DUCH on the noisy pairs (no weighting), and DUCH on clean pairs (p = 0) once, as the ceiling;
* CHNR with each weighting scheme. Phase 1 (detector + hashing on the clean subset) does not depend on
  the scheme, so it is trained once per p and every scheme resumes from its checkpoint for phase 2.

Prints mAP@20 (the reference ``calc_map_k`` definition) I→T and T→I per run beside the reference CSV
(``comrados/noisy_captions`` plots/plots_table_ucm.csv, 64 bits), the share of the mAP that DUCH loses
to noise which CHNR recovers, and the detector's ROC-AUC against the known corrupted pairs. Every run
folder keeps its metrics, config and noise report; ``OUTPUT/noise_sweep.{json,md}`` hold the table.
The full sweep is long on a CPU (each 64-bit UCM run takes minutes): select p, schemes and epochs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
ALL_P = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5)

# mAP@20 at 64 bits from the reference CSV; CHNR's weighting schemes are the DUCH-NR-* rows there
# (NW = w, EW = w³, DW = threshold); "none" (clean-subset pre-training, then unit weights) is taken to be
# DUCH-PTC. Keys: p → (I→T, T→I).
REFERENCE: dict[str, dict[float, tuple[float, float]]] = {
    "chnr-w": {0.05: (.868, .922), 0.1: (.844, .912), 0.2: (.846, .908), 0.3: (.829, .884), 0.4: (.794, .856),
               0.5: (.779, .811)},
    "chnr-w3": {0.05: (.851, .916), 0.1: (.851, .918), 0.2: (.862, .902), 0.3: (.820, .896), 0.4: (.839, .882),
                0.5: (.821, .876)},
    "chnr-threshold": {0.05: (.844, .929), 0.1: (.832, .912), 0.2: (.844, .909), 0.3: (.823, .892),
                       0.4: (.822, .885), 0.5: (.797, .850)},
    "chnr-none": {0.05: (.849, .911), 0.1: (.828, .907), 0.2: (.804, .869), 0.3: (.740, .851), 0.4: (.713, .766),
                  0.5: (.614, .689)},
    "duch": {0.05: (.840, .925), 0.1: (.822, .905), 0.2: (.799, .882), 0.3: (.727, .821), 0.4: (.691, .739),
             0.5: (.557, .641)},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--data", default=os.environ.get("TFDUCH_DATA", str(REPO.parent / "shared/data/ucm_captions")),
                        help="UC Merced captions folder (default: $TFDUCH_DATA or ../shared/data/ucm_captions)")
    parser.add_argument("--output", type=Path, default=REPO / "runs" / "noise_sweep",
                        help="folder for every run, the noise files and the table (re-running resumes/reuses)")
    parser.add_argument("--p", default=",".join(map(str, ALL_P)), help="comma-separated noise levels")
    parser.add_argument("--schemes", default="w,w3,threshold",
                        help="CHNR weightings among w, w3, threshold, none (comma-separated; empty: no CHNR)")
    parser.add_argument("--epochs", type=int, default=100, help="training epochs of every run (DUCH and CHNR)")
    parser.add_argument("--switch-epoch", type=int, default=None,
                        help="CHNR phase 1 length (default: half of --epochs, as the reference's 50 of 100)")
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument("--no-duch", action="store_true", help="skip DUCH on the noisy pairs")
    parser.add_argument("--no-clean", action="store_true", help="skip noise-free DUCH")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override for every run (repeatable)")
    parser.add_argument("--verbose", default="0", help="keras fit verbosity per run (0, 1, 2)")
    args = parser.parse_args(argv)
    args.p = [float(x) for x in args.p.split(",") if x.strip()]
    args.schemes = [s for s in args.schemes.split(",") if s.strip()]
    args.switch_epoch = args.epochs // 2 if args.switch_epoch is None else args.switch_epoch
    bad = [s for s in args.schemes if s not in ("w", "w3", "threshold", "none")]
    if bad or not all(0 <= p < 1 for p in args.p) or not 0 < args.switch_epoch < args.epochs:
        parser.error(f"need schemes among w,w3,threshold,none (got {bad}), p in [0, 1), 0 < switch-epoch < epochs")
    return args


def run_config(args: argparse.Namespace, method: str, out: Path, p: float, noise_file: Path | None,
               epochs: int, weighting: str = "w3", checkpoint: bool = False):
    from tfduch.config import load_config

    overrides = [f"data.root={args.data}", f"output_dir={out}", f"model.bits={args.bits}", f"train.epochs={epochs}",
                 f"noise.p={p}", f"noise.chnr.switch_epoch={args.switch_epoch}", f"noise.chnr.weighting={weighting}",
                 f"train.checkpoint={checkpoint}", "train.tensorboard=false", f"train.verbose={args.verbose}",
                 f"data.split_file={args.output / 'split-seed42.json'}", *args.overrides]
    if noise_file is not None:
        overrides.append(f"noise.file={noise_file}")
    return load_config(REPO / "configs" / "chnr.yaml" if method == "chnr" else None,
                       [*overrides, f"model.method={method}"])


def train_run(args: argparse.Namespace, prepared: Any, name: str, cfg: Any) -> dict[str, Any]:
    """Train + evaluate one run (or reuse a finished one) and return its table row."""
    import json

    import yaml

    from tfduch.pipeline import train_and_evaluate

    out = Path(cfg.output_dir)
    saved = out / "config.yaml"
    used = out.is_dir() and any(p.name != "checkpoints" for p in out.iterdir())  # checkpoints: CHNR's phase 1
    if used and (not saved.is_file() or yaml.safe_load(saved.read_text()) != cfg.to_dict()):
        raise SystemExit(f"{out} holds a run with other settings (or an unfinished foreign one): delete it or pick "
                         "another --output")
    done = out / "summary.json"
    summary = json.loads(done.read_text()) if done.is_file() else {}
    if summary.get("epochs") == cfg.train.epochs and "metrics" in summary:  # finished earlier: reuse
        metrics = summary["metrics"]
    else:
        _, report, summary = train_and_evaluate(cfg, prepared, out, plots=False)
        metrics = report.summary()
    k = cfg.eval.k
    return {"run": name, "i2t": metrics[f"i2t/map@{k}"], "t2i": metrics[f"t2i/map@{k}"],
            "auc": (summary.get("noise") or {}).get("roc_auc_outside_clean_subset"),
            "auc_all": (summary.get("noise") or {}).get("roc_auc"), "seconds": summary.get("train_seconds")}


def chnr_phase1(args: argparse.Namespace, prepared: Any, p: float, noise_file: Path) -> tuple[Path, dict[str, Any]]:
    """Train phase 1 once (with checkpoints) so that every scheme can resume from it."""
    out = args.output / f"p{p:g}" / "chnr-phase1"
    cfg = run_config(args, "chnr", out, p, noise_file, args.switch_epoch, checkpoint=True)
    return out / "checkpoints", train_run(args, prepared, "chnr phase 1 only", cfg)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from tfduch.pipeline import prepare

    args.output.mkdir(parents=True, exist_ok=True)
    prepared = prepare(run_config(args, "duch", args.output, 0.0, None, args.epochs), progress=True)
    plan: list[tuple[float, str]] = [] if args.no_clean else [(0.0, "duch")]
    for p in args.p:
        plan += [] if args.no_duch else [(p, "duch")]
        plan += [(p, f"chnr-{s}") for s in args.schemes]
    rows: list[dict[str, Any]] = []
    phase1: dict[float, Path] = {}
    bar = tqdm(plan, desc="noise sweep", unit="run", file=sys.stdout)
    for p, name in bar:
        bar.set_postfix_str(f"p={p:g} {name}")
        noise_file = args.output / f"noise-p{p:g}-seed0.json" if p > 0 or name != "duch" else None
        if name == "duch":
            out = args.output / ("clean" if p == 0 else f"p{p:g}") / "duch"
            row = train_run(args, prepared, name, run_config(args, "duch", out, p, noise_file, args.epochs))
        else:
            scheme = name.split("-", 1)[1]
            if p not in phase1:
                phase1[p], row1 = chnr_phase1(args, prepared, p, noise_file)
                rows.append({**row1, "p": p, "method": "chnr-phase1"})
            out = args.output / f"p{p:g}" / name
            if not (out / "checkpoints").exists():
                shutil.copytree(phase1[p], out / "checkpoints")
            cfg = run_config(args, "chnr", out, p, noise_file, args.epochs, scheme, checkpoint=True)
            row = train_run(args, prepared, name, cfg)
        rows.append({**row, "p": p, "method": name})
        tqdm.write(f"p={p:g} {name}: I→T {row['i2t']:.4f} T→I {row['t2i']:.4f}"
                   + (f" detector AUC {row['auc']:.3f}" if row.get("auc") is not None else ""), file=sys.stdout)
    print_table(args, rows)
    return 0


def print_table(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    from tfduch.eval import markdown_table
    from tfduch.io import atomic_write_json, atomic_write_text

    clean = next((r for r in rows if r["method"] == "duch" and r["p"] == 0), None)
    table = []
    for r in rows:
        ref = REFERENCE.get(r["method"], {}).get(r["p"], (None, None))
        noisy = next((d for d in rows if d["method"] == "duch" and d["p"] == r["p"]), None)
        row = {"p": r["p"], "method": r["method"], "I→T": r["i2t"], "T→I": r["t2i"], "ref I→T": ref[0],
               "ref T→I": ref[1], "I→T / ref": r["i2t"] / ref[0] if ref[0] else None,
               "T→I / ref": r["t2i"] / ref[1] if ref[1] else None, "detector AUC": r.get("auc")}
        if clean and noisy and r["p"] > 0 and r["method"] != "duch":
            for d, key in (("I→T", "i2t"), ("T→I", "t2i")):
                lost = clean[key] - noisy[key]
                row[f"recovered {d}"] = (r[key] - noisy[key]) / lost if lost > 1e-9 else None
        table.append(row)
    columns = ["p", "method", "I→T", "T→I", "ref I→T", "ref T→I", "I→T / ref", "T→I / ref", "recovered I→T",
               "recovered T→I", "detector AUC"]
    text = (f"mAP@20 (reference calc_map_k), {args.bits} bits, {args.epochs} epochs (CHNR phase 1: "
            f"{args.switch_epoch}); 'recovered' = (CHNR − DUCH noisy) / (DUCH clean − DUCH noisy); "
            "detector AUC on the pairs outside the clean subset\n\n" + markdown_table(table, columns, floatfmt=".3f"))
    print(text)
    atomic_write_text(args.output / "noise_sweep.md", text + "\n")
    atomic_write_json(args.output / "noise_sweep.json", {"args": {k: str(v) for k, v in vars(args).items()},
                                                          "rows": table})


if __name__ == "__main__":
    sys.exit(main())
