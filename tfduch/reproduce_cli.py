"""``tfduch reproduce``: the whole comparison table in one resumable command (see :mod:`tfduch.reproduce`)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from tfduch.config import DATA_ENV

DESCRIPTION = """\
Train and evaluate every method at every code length with several training seeds, on the same cached
frozen features, protocol split (seed 42) and evaluation, and write one table: mAP@20 for I→T and T→I
(and I→I, T→T) per method × bits as mean ± std over seeds, beside the published UCM numbers where
they exist, plus a PR-curve figure per code length.

Each finished cell (method, bits, seed) is stored atomically in OUT/cells/ and skipped when the
command is run again with the same settings, so an interrupted reproduction resumes where it
stopped; changing a method's config, --epochs or the dataset recomputes only the cells it affects.
The table is rebuilt from all finished cells at the end of every run.
"""

EPILOG = """\
methods:
  duch, cach, djsrh, jdsh  learned, trained with configs/<method>.yaml (each also gives a "tanh codes,
                           cosine" row: its continuous codes ranked by cosine = what binarisation costs)
  chnr                     learned; run only when tfduch.models.chnr exists
  cach-no-similarity, cach-no-contrastive, cach-no-autoencoder, cach-no-consistency,
  cach-pairwise-only, cach-no-cluster, cach-adversarial
                           CACH ablations: one piece switched off (or on), everything else equal
  cca-itq, ridge-itq       classical hashing on the same features (seconds)
  cosine                   cosine ranking of the frozen encoder features, no training (I→I, T→T only)

examples:
  tfduch reproduce --dataset ../shared/data/ucm_captions --out runs/reproduce
  tfduch reproduce --dataset DIR --methods duch,cach,cca-itq --bits 64 --seeds 1 --epochs 30 --out runs/quick
  tfduch reproduce --dataset DIR --methods cach,cach-no-similarity,cach-no-autoencoder --bits 64 \\
      --out runs/reproduce --name ablation

outputs: OUT/<name>.md, OUT/<name>.json, OUT/<name>_pr_<bits>bits.png, OUT/cells/*.json (name: reproduce)
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("reproduce", help="train + evaluate every method × bits × seed into one table",
                              description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", "--data", dest="dataset",
                   help=f"dataset folder (Karpathy captions JSON + images/; default: ${DATA_ENV})")
    p.add_argument("--methods", default="duch,duch-paper,chnr,cach,djsrh,jdsh,cca-itq,ridge-itq,cosine",
                   help="comma-separated rows to compute (default: %(default)s)")
    p.add_argument("--bits", default="16,32,64,128", help="comma-separated code lengths (default: %(default)s)")
    p.add_argument("--seeds", type=int, default=3, help="training seeds per cell, 0..N-1 (default: %(default)s)")
    p.add_argument("--out", type=Path, default=Path("runs/reproduce"),
                   help="output folder: cells, table, figures, split (default: %(default)s)")
    p.add_argument("--epochs", type=int,
                   help="train every learned method for this many epochs instead of its config's (the table says so)")
    p.add_argument("--config-dir", type=Path, help="folder with <method>.yaml configs (default: the repo's configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override applied to every learned method, e.g. --set train.batch_size=128")
    p.add_argument("--checkpoint", action="store_true",
                   help="checkpoint inside a cell (every train.checkpoint_every epochs, default 5), so an interrupted "
                   "training resumes mid-cell (finished cells are always kept)")
    p.add_argument("--name", default="reproduce",
                   help="table file name in OUT (default: %(default)s); use another name for an ablation that "
                   "shares OUT's cells, e.g. --name ablation")
    p.add_argument("--table-only", action="store_true",
                   help="run nothing: rebuild the table from the cells finished so far (partial seeds are marked)")
    p.add_argument("--keep-models", action="store_true", help="keep each learned cell's trained weights in OUT/runs/")
    p.add_argument("--cache-dir", help="feature / weights cache folder (default: $TFDUCH_CACHE or ~/.cache/tfduch)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch logs")
    p.set_defaults(func=cmd_reproduce)


def cmd_reproduce(args: argparse.Namespace) -> int:
    from tfduch.reproduce import DEFAULT_CONFIG_DIR, ReproduceSpec, parse_list, reproduce

    if args.cache_dir:
        os.environ["TFDUCH_CACHE"] = str(args.cache_dir)
    spec = ReproduceSpec(
        out=args.out, methods=parse_list(args.methods, name="--methods"),
        bits=parse_list(args.bits, int, name="--bits"), seeds=args.seeds, dataset=args.dataset,
        epochs=args.epochs, config_dir=args.config_dir or DEFAULT_CONFIG_DIR, overrides=tuple(args.overrides),
        checkpoint=args.checkpoint, keep_models=args.keep_models, progress=not args.quiet,
        name=args.name, table_only=args.table_only)
    result = reproduce(spec)
    print(result.paths["markdown"].read_text())
    print(f"{len(result.ran)} cells run, {len(result.reused)} reused; table: {result.paths['markdown']}")
    if result.failed:
        print(f"{len(result.failed)} cells failed (rerun to retry): " + ", ".join(result.failed))
        return 1
    return 0
