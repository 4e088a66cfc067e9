"""``tfduch encode-archive``: encode an image archive into code shards with an Apache Beam pipeline."""

from __future__ import annotations

import argparse
import json

from tfduch.errors import TfduchError

INSTALL_HINT = 'encode-archive needs Apache Beam: pip install "tfduch[beam]" (or pip install "apache-beam==2.77.0")'

EPILOG = """\
examples:
  tfduch encode-archive --input 'archive/**/*.tif' --export exports/duch --out shards/
  tfduch encode-archive --input 'data/ucm/images/*.webp' --captions data/ucm/captions.json \\
      --run runs/duch --out shards/ --num-workers 2 --shard-size 500
  tfduch encode-archive --input 'gs://bucket/tiles/*.png' --export /models/duch --out gs://bucket/shards \\
      --runner DataflowRunner -- --project=P --region=europe-west1 --temp_location=gs://bucket/tmp \\
      --sdk_container_image=IMAGE          (see docs/scale.md, "Archive encoding on Beam")

The sorted file list is cut into shards (--shards N, or ceil(files / --shard-size)); each shard becomes
OUT/codes-SSSSS-of-NNNNN.npz (packed codes, paths, JSON payloads) plus dead-letter-SSSSS-of-NNNNN.jsonl
(unreadable, empty, corrupt or non-image files with the reason), written atomically; OUT/manifest.json
records the model, the inputs and the totals. Re-running the same command skips finished shards, so a
killed job resumes; another model or another file list in the same OUT is refused. The shards feed
`tfduch index build --from-shards OUT`.

Beam pipeline options go after `--` (or as --pipeline-option KEY=VALUE) and override ours; the default
is the DirectRunner in multi_processing mode with --num-workers processes.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    register_archive(subparsers)
    p = subparsers.add_parser(
        "encode-archive", help="encode an image archive (glob) into code shards with Apache Beam (resumable)",
        description="Read every image matching --input through Beam's FileSystems (local, gs://, s3://, "
        "hdfs://), encode it with a trained run or an export via RunInference, and write sharded code files "
        "that the index ingests. Bad files go to dead-letter files and never stop the job.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", "-i", action="append", metavar="GLOB",
                     help="file glob (quote it; repeatable), e.g. 'archive/*/*.tif' or 'gs://bucket/tiles/*.png'; "
                     "a file in a sub-folder of the glob's fixed part gets that sub-folder's name as its class")
    src.add_argument("--scenes", action="append", metavar="GLOB|STAC",
                     help="geo-referenced scenes to cut into tiles: GeoTIFF/COG glob or STAC Item / ItemCollection "
                     "/ catalog JSON (local; repeatable); see the geo options below and docs/geo.md")
    p.add_argument("--out", required=True, help="output folder for manifest.json and the shard files")
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--run", help="trained run folder (tfduch train)")
    model.add_argument("--export", help="exported SavedModel: base, model or version folder (tfduch export)")
    p.add_argument("--captions", metavar="JSON",
                   help="Karpathy captions JSON: class and captions of each file, matched by file name")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--shards", type=int, help="number of shards N (default: ceil(files / --shard-size))")
    size.add_argument("--shard-size", type=int, default=1000, help="files per shard (default 1000)")
    p.add_argument("--batch-size", type=int, default=32, help="images per RunInference batch (default 32)")
    p.add_argument("--runner", default="DirectRunner",
                   help="Beam runner: DirectRunner (default), DataflowRunner, FlinkRunner, SparkRunner, ...")
    p.add_argument("--num-workers", type=int, default=1,
                   help="DirectRunner worker processes (default 1); other runners take their own flags after --")
    p.add_argument("--direct-mode", default="multi_processing", choices=("multi_processing", "multi_threading",
                                                                          "in_memory"),
                   help="DirectRunner running mode (default multi_processing)")
    p.add_argument("--threads-per-worker", type=int, metavar="N",
                   help="TensorFlow intra-op threads in each worker (default: TensorFlow's choice)")
    p.add_argument("--pipeline-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a Beam pipeline option, e.g. --pipeline-option project=P (repeatable)")
    p.add_argument("--progress-interval", type=float, default=10.0, metavar="SECONDS",
                   help="seconds between progress lines (default 10)")
    p.add_argument("--json", action="store_true", help="print the final summary as JSON")
    p.add_argument("--thumbnails", metavar="DIR", help="with --scenes: also write each tile as PNG under DIR")
    from tfduch.geo.options import add_geo_args

    add_geo_args(p)
    p.add_argument("--milvus", metavar="LOCATION",
                   help="also upsert the codes into an archive in Milvus (milvus://HOST:PORT/NAME or "
                        "milvus://local/NAME): encode and index in one job; a re-run finishes an interrupted load")
    p.add_argument("--milvus-batch", type=int, default=1000, metavar="N", help="rows per Milvus upsert (default 1000)")
    p.add_argument("--milvus-overwrite", action="store_true", help="drop an existing Milvus archive of that name first")
    from tfduch.index.cli import add_milvus_args

    add_milvus_args(p)
    p.add_argument("beam_args", nargs="*", metavar="-- BEAM_FLAGS",
                   help="everything after -- is passed to Beam unchanged (e.g. -- --project=P --region=R)")
    p.set_defaults(func=cmd_encode_archive)


def _beam_flags(args: argparse.Namespace) -> list[str]:
    flags = []
    for option in args.pipeline_option:
        key, sep, value = option.partition("=")
        if not sep or not key.strip("-"):
            raise TfduchError(f"--pipeline-option wants KEY=VALUE, got {option!r}")
        flags.append(f"--{key.lstrip('-')}={value}")
    return flags + list(args.beam_args)


def cmd_encode_archive(args: argparse.Namespace) -> int:
    try:
        from tfduch.archive import beam as archive_beam
    except ImportError as exc:
        if "apache_beam" not in str(exc):
            raise
        raise TfduchError(INSTALL_HINT) from None
    for flag in ("shards", "shard_size", "batch_size", "num_workers", "threads_per_worker"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise TfduchError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    import logging

    logging.getLogger("apache_beam").setLevel(logging.WARNING)  # Beam's INFO lines would drown the progress
    options = archive_beam.pipeline_options(args.runner, args.num_workers, args.direct_mode, _beam_flags(args))
    spec = archive_beam.EncoderSpec(run=args.run, export=args.export, threads=args.threads_per_worker)
    tiles = None
    if args.scenes:
        from tfduch.geo.options import recipe_from_args, tile_spec_from_args
        from tfduch.geo.tiler import plan

        tiles = plan(args.scenes, tile_spec_from_args(args), recipe_from_args(args), asset=args.asset,
                     thumbnails=args.thumbnails)
    milvus = None
    if args.milvus:
        from tfduch.index.milvus import MilvusTarget

        milvus = MilvusTarget.parse(args.milvus, uri=args.milvus_uri, token=args.milvus_token,
                                    ca_pem=args.milvus_ca_pem)
    result = archive_beam.encode_archive(
        args.input or args.scenes, args.out, spec, shards=args.shards, shard_size=args.shard_size,
        batch_size=args.batch_size, captions=args.captions, options=options,
        progress_interval=args.progress_interval, tiles=tiles, milvus=milvus, milvus_batch=args.milvus_batch,
        milvus_overwrite=args.milvus_overwrite)
    summary = {"out": result.folder, "shards": result.num_shards, "written": len(result.written),
               "skipped": len(result.skipped), "items": result.items, "dead_letters": result.dead,
               "seconds": round(result.seconds, 2), "items_per_second": round(result.items_per_second, 2),
               "dead_letter_reasons": result.manifest.get("dead_letter_reasons", {})}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"done: {result.items} items encoded in {result.num_shards} shards ({len(result.written)} written "
              f"now, {len(result.skipped)} already done) in {result.seconds:.1f} s "
              f"({result.items_per_second:.1f} items/s); {result.dead} dead letters"
              + (f" {summary['dead_letter_reasons']}" if result.dead else "") + f" → {result.folder}")
    return 0


# ------------------------------------------------------------------------------ tfduch archive tile / demo
def register_archive(subparsers: argparse._SubParsersAction) -> None:
    from tfduch.geo.options import add_geo_args

    p = subparsers.add_parser("archive", help="geo-referenced scenes: cut into tiles, build a demo scene set",
                              description="Work with geo-referenced archives (GeoTIFF / COG / STAC); see docs/geo.md.")
    sub = p.add_subparsers(dest="archive_command", required=True, metavar="SUBCOMMAND")
    t = sub.add_parser("tile", help="cut scenes into 8-bit RGB PNG tiles with footprints (no model needed)",
                       description="Plan the tile grid of each scene, apply the band recipe and write OUT/tiles/"
                       "SCENE/rRRR_cCCC.png, OUT/tiles.jsonl (one payload per tile: scene, window, CRS, transform, "
                       "footprints, time) and OUT/geo.json (recipe, tiling, counts). encode-archive --scenes does "
                       "the same on Beam and encodes the tiles.")
    t.add_argument("--scenes", action="append", required=True, metavar="GLOB|STAC", help="scenes (repeatable)")
    t.add_argument("--out", required=True, help="output folder")
    t.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_geo_args(t)
    t.set_defaults(func=cmd_archive_tile)
    d = sub.add_parser("demo", help="build geo-referenced test scenes from UC Merced images; with a model, run "
                       "tile → encode → index → search end to end",
                       description="Writes OUT/scenes (8-bit GeoTIFF, 16-bit 4-band with nodata, COG, STAC "
                       "catalog) from UC Merced images (or synthetic pixels), tiles them; with --run/--export also "
                       "encodes the tiles on Beam, builds OUT/archive.tfidx and searches it with an area filter.")
    d.add_argument("--out", required=True, help="output folder")
    d.add_argument("--data", help="UC Merced folder (default: $TFDUCH_DATA or ../shared/data/ucm_captions)")
    d.add_argument("--images", type=int, default=16, help="images per scene mosaic (default 16, 4 per row)")
    model = d.add_mutually_exclusive_group()
    model.add_argument("--run", help="trained run folder")
    model.add_argument("--export", help="exported SavedModel")
    d.add_argument("--query", default="a baseball field", help="text query for the end-to-end search")
    d.set_defaults(func=cmd_archive_demo)


def cmd_archive_tile(args: argparse.Namespace) -> int:
    from tfduch.geo.options import recipe_from_args, tile_spec_from_args
    from tfduch.geo.tiler import plan, write_tiles

    summary = write_tiles(plan(args.scenes, tile_spec_from_args(args), recipe_from_args(args), asset=args.asset),
                          args.out, log=(lambda _: None) if args.json else print)
    if args.json:
        print(json.dumps(summary))
    return 0


def cmd_archive_demo(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from tfduch.geo import require
    from tfduch.geo.demo import build_scene_set
    from tfduch.geo.recipe import BandRecipe
    from tfduch.geo.scenes import TileSpec
    from tfduch.geo.tiler import plan, write_tiles

    require()
    out = Path(args.out)
    data = args.data or os.environ.get("TFDUCH_DATA") or "../shared/data/ucm_captions"
    info = build_scene_set(out / "scenes", n_images=args.images, data_root=data)
    print(f"scenes: {', '.join(info['scenes'].values())}; STAC catalog {info['stac']}")
    sources = [info["scenes"]["rgb"], info["scenes"]["cog"]]
    tiles = plan(sources, TileSpec(256), BandRecipe())
    ms = plan([info["scenes"]["ms"]], TileSpec(256), BandRecipe(bands=("B04", "B03", "B02"), scale="fixed",
                                                               scale_args=(1000.0, 11200.0)))
    write_tiles(tiles, out / "tiles")
    write_tiles(ms, out / "tiles-ms")
    if not (args.run or args.export):
        print("no --run/--export given: stopping after tiling (give a model to encode, index and search)")
        return 0
    import shutil

    from tfduch.archive import beam as archive_beam
    from tfduch.index import cli as index_cli
    from tfduch.index.from_shards import build_from_shards

    spec = archive_beam.EncoderSpec(run=args.run, export=args.export)
    allp = plan(sources + [info["stac"]], TileSpec(256), BandRecipe())
    archive_beam.encode_archive(sources, str(out / "shards"), spec, tiles=allp, shard_size=16,
                                options=archive_beam.pipeline_options(num_workers=2), progress_interval=30)
    if (out / "archive.tfidx").exists():
        (out / "archive.tfidx").unlink()
    shutil.rmtree(out / "archive.tfidx.geo.npz", ignore_errors=True)
    build_from_shards(out / "shards", out / "archive.tfidx")
    b = allp.jobs[0]["payload"]
    bbox = f"{b['lon_min']},{b['lat_min']},{b['lon_max'] + 0.003},{b['lat_max']}"
    print(f"search {args.query!r} within {bbox}:")
    parser = argparse.ArgumentParser(prog="tfduch")
    index_cli.register(parser.add_subparsers())
    search = parser.parse_args(["search", args.query, "--index", str(out / "archive.tfidx"), f"--bbox={bbox}", "-k",
                                "5", *(["--run", args.run] if args.run else ["--export", args.export])])
    return int(search.func(search))
