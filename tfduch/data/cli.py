"""``tfduch datasets list | fetch NAME | import SOURCE OUT | info DIR``: get benchmarks or bring your own data."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tfduch.data.registry import DATA_HOME_ENV, MARKER, MIRROR_ENV, REGISTRY, data_home, installed_path

EPILOG = f"""\
examples:
  tfduch datasets list                                   # registered benchmarks, their sources and status
  tfduch datasets fetch ucm                              # download, verify, extract, convert into the data home
  tfduch datasets fetch rsicd --mirror /mnt/datasets     # air-gapped: files from a folder (or http mirror)
  tfduch datasets import my_captions.csv data/mine       # your own image,caption[,class] rows
  tfduch datasets import my_captions.csv data/mine --on-error skip   # leave bad rows out, with a report
  tfduch datasets info data/mine
  tfduch run --data ucm                                  # a registered name works wherever --data DIR does

Datasets live under ${DATA_HOME_ENV} (default ~/.cache/tfduch/datasets); ${MIRROR_ENV} sets a default mirror.
See docs/datasets.md for the sources, checksums, citations and how classes are derived.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("datasets", help="list / fetch benchmark datasets, import your own, inspect one",
                              description="Caption benchmarks (UCM-captions, Sydney-captions, RSICD, RSITMD, "
                              "NWPU-Captions) fetched and verified, or your own images and captions imported, "
                              "into the Karpathy layout every tfduch command reads.",
                              epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="datasets_command", required=True, metavar="ACTION")

    q = sub.add_parser("list", help="registered datasets, where they come from and whether they are installed")
    q.add_argument("--home", help=f"data home (default: ${DATA_HOME_ENV} or ~/.cache/tfduch/datasets)")
    q.set_defaults(func=cmd_list)

    q = sub.add_parser("fetch", help="download (resumable), verify, extract and convert a registered dataset")
    q.add_argument("name", help=f"one of: {', '.join(REGISTRY)}")
    q.add_argument("--home", help=f"data home (default: ${DATA_HOME_ENV} or ~/.cache/tfduch/datasets)")
    q.add_argument("--mirror", help=f"a folder holding the source files (FILE or NAME/FILE) or an http(s) base URL "
                   f"serving NAME/FILE (default: ${MIRROR_ENV})")
    q.add_argument("--force", action="store_true", help="convert again even when the dataset is installed")
    q.add_argument("--quiet", action="store_true", help="no progress bars")
    q.set_defaults(func=cmd_fetch)

    q = sub.add_parser("import", help="build a dataset from your own CSV / JSONL / folder of images and captions")
    q.add_argument("source", type=Path, help="CSV/TSV with image,caption[,class] columns, a JSONL file, or a folder "
                   "<class>/<name>.jpg with <name>.txt captions (one per line)")
    q.add_argument("out", type=Path, help="dataset folder to write (captions.json + images/)")
    q.add_argument("--name", help="dataset name shown in reports (default: the folder name)")
    q.add_argument("--images-root", type=Path, help="folder the image paths are relative to (default: the "
                   "source file's folder)")
    q.add_argument("--on-error", choices=("fail", "skip"), default="fail",
                   help="fail (default): list every bad row and write nothing; skip: leave them out and report them")
    q.add_argument("--force", action="store_true", help="replace OUT if it exists")
    q.set_defaults(func=cmd_import)

    q = sub.add_parser("info", help="summary of a dataset folder (or registered name): images, captions, classes")
    q.add_argument("dir", help="dataset folder or registered name")
    q.set_defaults(func=cmd_info)


def cmd_list(args: argparse.Namespace) -> int:
    home = data_home(args.home)
    print(f"data home: {home}")
    for spec in REGISTRY.values():
        status = "installed" if installed_path(spec.name, home) else "not installed"
        n = f"{spec.num_images} images" if spec.num_images else ""
        print(f"\n{spec.name:8s} {spec.title} [{status}] {n}")
        print(f"         source: {spec.homepage}")
        print(f"         classes: {spec.classes}")
        for res in spec.resources:
            size = f"{res.size} bytes" if res.size else "size unpublished"
            print(f"         file {res.filename}: {size}, check: {res.verified}; {res.url or 'manual download'}")
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    from tfduch.data.fetch import fetch_dataset

    path = fetch_dataset(args.name, home=args.home, mirror=args.mirror, progress=not args.quiet, force=args.force)
    print(f"{args.name}: ready at {path}")
    print(f"use it with: tfduch run --data {args.name}   (or --data {path})")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from tfduch.data.importer import import_dataset

    report = import_dataset(args.source, args.out, name=args.name, images_root=args.images_root,
                            on_error=args.on_error, force=args.force)
    print(f"imported {report.images} images, {report.captions} captions from {report.rows} rows into {args.out}")
    if report.relevance == "instance":
        print("no classes: each image is its own class, so evaluation reports recall@K (docs/datasets.md)")
    if report.problems:
        print(f"skipped {len(report.problems)} bad rows (listed in {args.out / MARKER}):")
        for p in report.problems:
            print(f"  {p}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from tfduch.data.resolve import open_dataset

    ds = open_dataset(args.dir)
    caps = ds.captions_per_image
    print(f"{ds.name}: {len(ds)} images, {int(caps.sum())} captions ({caps.min()}-{caps.max()} per image), "
          f"{ds.num_classes} classes, relevance {ds.relevance}")
    print(f"folder: {ds.root}")
    marker = Path(ds.root) / MARKER
    if marker.is_file():
        facts = json.loads(marker.read_text())
        for key in ("title", "citation", "licence", "classes", "imported_from", "skipped"):
            if facts.get(key):
                value = facts[key]
                print(f"{key}: {len(value)} rows" if isinstance(value, list) else f"{key}: {value}")
    if ds.relevance == "class":
        counts = {}
        for s in ds.samples:
            counts[s.classname] = counts.get(s.classname, 0) + 1
        shown = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())[:30])
        print(f"classes: {shown}{' ...' if len(counts) > 30 else ''}")
    return 0
