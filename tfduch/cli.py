"""``tfduch`` command line: encode features, train, evaluate, or run the whole DUCH protocol.

Every command reads the same config (built-in defaults = ``configs/duch.yaml``) and accepts
``--set section.field=value`` overrides, so a command line fully describes a run.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from tfduch.config import DATA_ENV, SPLIT_METHODS, STRATEGIES, Config, load_config
from tfduch.errors import run_command

# Further commands live beside the code they drive; each module defines ``register(subparsers)``
# adding its parser with ``set_defaults(func=...)``.
COMMAND_MODULES: list[str] = [
    "tfduch.serving.cli",
    "tfduch.reproduce_cli",
    "tfduch.index.cli",
    "tfduch.web.cli",
    "tfduch.export.cli",
    "tfduch.archive.cli",
    "tfduch.data.cli",
]

EPILOG = f"""\
examples:
  tfduch run --data ../shared/data/ucm_captions            # encode, train DUCH (64 bits), evaluate, print mAP
  tfduch run --data ucm                                    # a registered dataset, fetched on first use
  tfduch run --data DIR --bits 16 --epochs 50 --output runs/duch16
  tfduch train --config configs/duch_reference.yaml --data DIR   # the reference code's behaviour
  tfduch evaluate --run runs/duch                          # re-evaluate a trained run
  tfduch features --data DIR                               # only encode (and cache) features

The dataset folder holds a Karpathy-format captions JSON (captions.json or dataset_*.json) and an
images/ folder (`tfduch datasets import` builds one from your own CSV/JSONL/folders), or a registered
dataset name (`tfduch datasets list`); it can also be given with the {DATA_ENV} environment variable.
Features and converted encoder weights are cached under $TFDUCH_CACHE (default ~/.cache/tfduch).
"""


def _common(p: argparse.ArgumentParser, with_output: bool = True, training: bool = True) -> None:
    p.add_argument("--config", type=Path, help="YAML config (default: built-in DUCH defaults, see configs/)")
    p.add_argument("--data", help=f"dataset folder, or a registered dataset name (ucm, sydney, rsicd, rsitmd, nwpu: "
                   f"fetched into $TFDUCH_DATA_HOME when absent; see `tfduch datasets list`) (default: data.root "
                   f"or ${DATA_ENV})")
    if with_output:
        p.add_argument("--output", help="run folder for split, checkpoints, logs and reports (default: runs/duch)")
    if training:
        p.add_argument("--bits", type=int, help="code length K in bits, a multiple of 8 (e.g. 16, 32, 64, 128)")
        p.add_argument("--epochs", type=int, help="training epochs")
        p.add_argument("--seed", type=int, help="training seed")
    p.add_argument("--split-seed", type=int, help="protocol split seed (default 42)")
    p.add_argument("--split-method", choices=SPLIT_METHODS,
                   help="how the split draws its images: reference = the DUCH reference code's draw (Python "
                   "random; the default), numpy = tfduch 0.1's draw (old run folders)")
    p.add_argument("--cache-dir", help="feature / weights cache folder")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field, e.g. --set loss.temperature=0.5 (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _strategy(p: argparse.ArgumentParser) -> None:
    p.add_argument("--strategy", choices=STRATEGIES,
                   help="tf.distribute strategy (train.strategy): mirrored = the GPUs of this host, multiworker = "
                   "the machines in TF_CONFIG; see docs/scale.md")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tfduch",
        description="Unsupervised deep cross-modal hashing (DUCH) for remote-sensing image-text retrieval.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--verbose", action="store_true",
                        help="also show TensorFlow/absl/CUDA start-up logs and Keras warnings (hidden by default; "
                        "accepted anywhere on the command line, or set TFDUCH_VERBOSE=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="whole protocol: features → train → evaluate → mAP table",
                       description="Encode the dataset (cached), train the configured method on the protocol "
                       "split, evaluate mAP@K in all four directions and print the table beside the "
                       "classical baselines (CCA+ITQ, ridge+PCA+ITQ) computed on the same features.")
    _common(p)
    _strategy(p)
    p.add_argument("--no-baselines", action="store_true", help="skip the classical baseline rows")
    p.set_defaults(func=lambda a: cmd_train(a, baselines=not a.no_baselines))

    p = sub.add_parser("features", help="encode and cache image/caption features",
                       description="Encode every image (clean + augmented views) and every caption with the "
                       "frozen encoders and store them in the feature cache. Later runs reuse them.")
    _common(p, training=False)
    p.set_defaults(func=cmd_features)

    p = sub.add_parser("train", help="train a hashing model on cached features (resumes if interrupted)",
                       description="Train on the protocol split; checkpoints into OUTPUT/checkpoints every 5 epochs "
                       "and after the last (train.checkpoint_every=N for every N epochs; the last two are kept; "
                       "train.checkpoint_background=true writes them from an in-memory copy in a background "
                       "thread) and resumes from the last one when re-run with the same --output.")
    _common(p)
    _strategy(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a trained run (mAP@K, P@K, PR curves)",
                       description="Re-encode the query/database items with a trained run's model and write "
                       "metrics.json, metrics.md and plots into the run folder.")
    p.add_argument("--run", required=True, type=Path, help="run folder written by train/run")
    p.add_argument("--data", help="dataset folder or registered name (default: the one recorded in the run's config)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_evaluate)
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    overrides = list(getattr(args, "overrides", []) or [])
    mapping = {"data": "data.root", "output": "output_dir", "bits": "model.bits", "epochs": "train.epochs",
               "seed": "train.seed", "split_seed": "data.split_seed",
               "split_method": "data.split_method", "cache_dir": "features.cache_dir",
               "strategy": "train.strategy"}
    for attr, key in mapping.items():
        value = getattr(args, attr, None)
        if value is not None:
            overrides.append(f"{key}={value}")
    return load_config(getattr(args, "config", None), overrides)


def _print_table(rows: list[dict], k: int) -> None:
    from tfduch.eval import markdown_table

    columns = ["method"] + [f"{d} mAP@{k}" for d in ("i2t", "t2i", "i2i", "t2t")] + \
              [f"{d} AP@{k} std" for d in ("i2t", "t2i")]
    print(markdown_table(rows, columns, floatfmt=".4f"))


def _print_recall_table(reports: list[tuple[str, object]]) -> None:
    """Datasets without classes (relevance = the item's own caption / image): recall@K, not mAP."""
    from tfduch.eval import markdown_table

    ks = [k for k in (1, 5, 10) if k in reports[0][1].ks]  # type: ignore[attr-defined]
    columns = ["method"] + [f"{d} R@{k}" for d in ("i2t", "t2i") for k in ks]
    rows = []
    for name, rep in reports:
        rec = rep.recall_at_k()  # type: ignore[attr-defined]
        rows.append({"method": name, **{f"{d} R@{k}": rec[f"{d}/recall@{k}"] for d in ("i2t", "t2i") for k in ks}})
    print("no classes in this dataset: relevant = the item's own caption/image, so recall@K (docs/datasets.md)")
    print(markdown_table(rows, columns, floatfmt=".4f"))


def _row(name: str, summary: dict[str, float], k: int) -> dict:
    row: dict = {"method": name}
    for d in ("i2t", "t2i", "i2i", "t2t"):
        row[f"{d} mAP@{k}"] = summary.get(f"{d}/map@{k}")
    for d in ("i2t", "t2i"):
        row[f"{d} AP@{k} std"] = summary.get(f"{d}/map@{k}_std")
    return row


def cmd_features(args: argparse.Namespace) -> int:
    from tfduch.pipeline import prepare

    cfg = config_from_args(args)
    prep = prepare(cfg, progress=not args.quiet)
    fs = prep.features
    print(f"dataset {prep.dataset.name}: {len(prep.dataset)} images, {prep.dataset.num_classes} classes")
    print(f"image features {fs.image.shape} + augmented {fs.image_aug.shape} [{fs.encoder_ids['image']}]")
    print(f"caption features {fs.captions.shape} [{fs.encoder_ids['text']}]")
    print(f"split: {len(prep.split.train)} train / {len(prep.split.query)} query / {len(prep.split.database)} "
          f"database (seed {prep.split.seed})")
    return 0


def cmd_train(args: argparse.Namespace, baselines: bool = False) -> int:
    from tfduch.pipeline import evaluate_encoders, fit_classical, prepare, train_and_evaluate
    from tfduch.training.distribute import make_strategy

    cfg = config_from_args(args)
    make_strategy(cfg.train.strategy)  # first: a multi-worker cluster must be set up before any other TF op
    if args.quiet:
        cfg.train.verbose = "2"
    prep = prepare(cfg, progress=not args.quiet)
    print(f"Training {cfg.model.method.upper()} ({cfg.model.bits} bits, {cfg.train.epochs} epochs) on "
          f"{len(prep.split.train)} {prep.dataset.name} pairs → {cfg.output_dir}")
    _, report, summary = train_and_evaluate(cfg, prep)
    print(f"\ntrained in {summary['train_seconds']:.1f} s; reports in {cfg.output_dir}/metrics.md\n")
    rows = [_row(f"{cfg.model.method.upper()}-{cfg.model.bits}", report.summary(), cfg.eval.k)]
    reports = [(rows[0]["method"], report)]
    if baselines:
        from tfduch.methods import CLASSICAL

        for method in CLASSICAL.values():
            try:
                hasher, _ = fit_classical(method.name, prep, cfg.model.bits)
            except ValueError as exc:  # e.g. a small own dataset spans fewer directions than bits
                print(f"baseline {method.display} skipped: {exc}", file=sys.stderr)
                continue
            rep = evaluate_encoders(prep, hasher.encode_image, hasher.encode_text, cfg.eval.k, cfg.eval.ks)
            rows.append(_row(f"{method.display}-{cfg.model.bits}", rep.summary(), cfg.eval.k))
            reports.append((rows[-1]["method"], rep))
    if prep.dataset.relevance == "instance":
        _print_recall_table(reports)
    else:
        _print_table(rows, cfg.eval.k)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from tfduch.eval import write_report
    from tfduch.pipeline import encode_retrieval_sets, evaluate_codes, load_trained, prepare

    cfg, model, meta = load_trained(args.run)
    if args.data:
        cfg.data.root = args.data
    prep = prepare(cfg, progress=not args.quiet)
    if meta.get("dataset_fingerprint") != prep.dataset.fingerprint():
        print("warning: the dataset changed since this model was trained", file=sys.stderr)
    report = evaluate_codes(encode_retrieval_sets(model, prep), cfg)
    title = f"{cfg.model.method.upper()} {cfg.model.bits} bits on {prep.dataset.name}"
    write_report(report, args.run, title=title, plots=cfg.eval.plots)
    name = f"{cfg.model.method.upper()}-{cfg.model.bits}"
    if prep.dataset.relevance == "instance":
        _print_recall_table([(name, report)])
    else:
        _print_table([_row(name, report.summary(), cfg.eval.k)], cfg.eval.k)
    return 0


def main(argv: list[str] | None = None) -> int:
    from tfduch.logs import quiet_native_logs, silence_python_warnings

    args = list(sys.argv[1:] if argv is None else argv)
    # --verbose is accepted anywhere on the line (tfduch run --data X --verbose), so it is taken out before parsing.
    verbose = "--verbose" in args or os.environ.get("TFDUCH_VERBOSE", "") not in ("", "0")
    args = [a for a in args if a != "--verbose"]
    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        silence_python_warnings()
    with quiet_native_logs(enabled=not verbose):
        return run_command(build_parser().parse_args(args))


if __name__ == "__main__":
    sys.exit(main())
