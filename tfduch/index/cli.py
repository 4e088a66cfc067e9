"""``tfduch index build|add|remove|info`` and ``tfduch search``: archive search from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from tfduch.errors import TfduchError

INDEX_EPILOG = """\
examples:
  tfduch index build --run runs/duch --images ../shared/data/ucm_captions --out ucm.tfidx
  tfduch index build --export exports/tfduch --images /archive/tiles --out tiles.tfidx --backend mih
  tfduch index add --index ucm.tfidx --images /archive/new_tiles
  tfduch index remove --index ucm.tfidx --ids 17 42
  tfduch index info --index ucm.tfidx
  tfduch index build --from-shards codes/ --out archive.tfidx                       # encode-archive output
  tfduch index build --from-shards codes/ --index-shards 4 --out archive.tfidx      # 4 shards, in parallel
  tfduch index build --from-shards codes/ --out milvus://milvus.example:19530/archive  # into Milvus
  tfduch search "a harbour" --index milvus://local/ucm                               # embedded Milvus

An index file holds two collections: "image" (one item per image) and "text" (one item per caption,
when the source has captions). It records the code length and the id of the model that encoded it and
refuses queries from any other model. Backends: flat (exact scan, default), ivf (approximate, >10x faster
on learned codes), hnsw (approximate graph), mih (exact multi-index hashing); see docs/index.md.
"""

SEARCH_EPILOG = """\
examples:
  tfduch search "planes parked next to a terminal" --index ucm.tfidx -k 20
  tfduch search --image tile.tif --index ucm.tfidx --target text     # nearest captions of an image
  tfduch search --queries captions.txt --index ucm.tfidx --json      # one query per line
  tfduch search --code 8f3a00ff12c4e901 --index ucm.tfidx            # a packed code in hex, no model needed

The model defaults to the one recorded in the index (if its folder still exists); --run / --export
name another copy of it. Ties in Hamming distance are ordered by item id.
"""


# ------------------------------------------------------------------------------------------- helpers
def _model_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    g = p.add_mutually_exclusive_group(required=required)
    g.add_argument("--run", type=Path, help="trained run folder (tfduch train --output)")
    g.add_argument("--export", type=Path, help="exported SavedModel (tfduch export): base, model or version folder")


def _source_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--images", required=required, type=Path,
                   help="dataset folder (captions.json + images/: images and captions are indexed) or a folder of "
                        "images (searched recursively; the sub-folder name is the class)")
    p.add_argument("--captions", type=Path, help="Karpathy-format caption JSON for the images in --images")
    p.add_argument("--split", default="all", choices=("all", "train", "query", "database"),
                   help="index only this part of the protocol split (default: all images)")
    p.add_argument("--split-file", type=Path,
                   help="protocol split JSON (default with --run: the run's split-seed*.json)")
    p.add_argument("--batch-size", type=int, default=32, help="images encoded per batch (default 32)")
    p.add_argument("--on-error", choices=("fail", "skip"), default="fail",
                   help="an unreadable / undecodable / 0-byte image: fail (default, naming the file) or skip it, "
                   "record it in the index metadata ('skipped') and print it")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def query_encoder(args: argparse.Namespace, recorded: dict[str, Any] | None = None) -> Any:
    """The query encoder named by --run/--export, else the one recorded in an index's metadata."""
    from tfduch.index.encoders import open_encoder

    if args.run is not None or args.export is not None:
        return open_encoder(run=args.run, export=args.export)
    source = (recorded or {}).get("source") or {}
    path = source.get("path")
    if path and Path(path).exists():
        return open_encoder(**{source["kind"]: Path(path)})
    where = f" (the index was built with {source.get('kind')} {path}, which no longer exists)" if path else ""
    raise TfduchError(f"which model encodes the queries? pass --run RUN_DIR or --export DIR{where}")


def _split_file(args: argparse.Namespace) -> Path | None:
    if args.split_file is not None or args.split == "all" or args.run is None:
        return args.split_file
    found = sorted(Path(args.run).glob("split-seed*.json"))
    return found[0] if found else None


def _backend_params(pairs: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise TfduchError(f"--param expects KEY=VALUE, got {pair!r}")
        try:
            params[key.replace("-", "_")] = json.loads(value)
        except ValueError:
            params[key.replace("-", "_")] = value
    return params


def add_milvus_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("Milvus (index locations milvus://HOST:PORT/ARCHIVE or milvus://local/ARCHIVE)")
    g.add_argument("--milvus-uri", metavar="URI", help="Milvus server, e.g. http://host:19530 or https://… "
                   "(default: the location's host, $TFDUCH_MILVUS_URI, else the embedded server for milvus://local)")
    g.add_argument("--milvus-token", metavar="TOKEN", help="user:password or API key of a secured Milvus "
                   "(default $TFDUCH_MILVUS_TOKEN)")
    g.add_argument("--milvus-ca-pem", metavar="PEM", help="CA certificate of a TLS Milvus server")


def _milvus_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"uri": getattr(args, "milvus_uri", None), "token": getattr(args, "milvus_token", None),
            "ca_pem": getattr(args, "milvus_ca_pem", None)}


def open_location(location: Any, args: argparse.Namespace, verify: bool = True) -> Any:
    """An index file, a shard set or an archive in Milvus (``milvus://…``), whichever ``location`` names."""
    from tfduch.index.milvus import is_milvus_location

    if is_milvus_location(location):
        from tfduch.index.milvus import open_milvus

        return open_milvus(location, **_milvus_options(args))
    from tfduch.index.sharded import open_index

    return open_index(location, verify=verify)


def _print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, ensure_ascii=False, indent=1)
    sys.stdout.write("\n")


def _cell(value: Any, width: int) -> str:
    text = "" if value is None else str(value).replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def print_hits(hits: list[Any], title: str) -> None:
    """A ranked table: rank, id, Hamming distance, class, and the caption or path of each item."""
    print(title)
    print(f"{'rank':>4}  {'id':>7}  {'dist':>4}  {'class':<18}  path / caption")
    for h in hits:
        text = h.payload.get("caption") if "image_id" in h.payload else h.payload.get("path")
        print(f"{h.rank:>4}  {h.id:>7}  {h.distance:>4}  {_cell(h.payload.get('class'), 18):<18}  "
              f"{_cell(text, 100)}")


def _writable(path: Path, args: argparse.Namespace) -> Any:
    """A single index to update; a shard set is refused up front (it is rebuilt, not edited)."""
    from tfduch.index.milvus import is_milvus_location
    from tfduch.index.sharded import is_shard_set
    from tfduch.index.store import load_index

    if is_milvus_location(path):
        return open_location(path, args)
    if is_shard_set(path):
        raise TfduchError(f"{path} is a shard set (tfduch index build --index-shards): it is read-only; rebuild it "
                          "with tfduch index build --from-shards ... --overwrite")
    return load_index(path)


# ------------------------------------------------------------------------------------------ commands
def cmd_build(args: argparse.Namespace) -> int:
    from tfduch.index.build import add_items, collect_items
    from tfduch.index.milvus import is_milvus_location
    from tfduch.index.store import ArchiveIndex

    milvus = is_milvus_location(args.out)
    if milvus and args.index_shards != 1 and args.from_shards is None:
        raise TfduchError("--index-shards needs --from-shards")
    if not milvus and args.resume:
        raise TfduchError("--resume applies to Milvus locations (milvus://…); a file index is written atomically")
    if not milvus and args.out.exists() and not args.overwrite:
        raise TfduchError(f"{args.out} exists: pass --overwrite to replace it (or use `tfduch index add`)")
    if (args.images is None) == (args.from_shards is None):
        raise TfduchError("give one source: --images (files to encode) or --from-shards (a tfduch encode-archive "
                          "output folder)")
    if args.from_shards is not None:
        return _build_from_shards(args)
    if args.index_shards != 1:
        raise TfduchError("--index-shards needs --from-shards (encode the archive with tfduch encode-archive first)")
    if args.run is None and args.export is None:
        raise TfduchError("--images needs the model that encodes them: pass --run RUN_DIR or --export DIR")
    items = collect_items(args.images, args.captions, args.split, _split_file(args))
    encoder = query_encoder(args)
    if milvus:
        from tfduch.index.milvus import MilvusIndex, MilvusTarget

        target = MilvusTarget.parse(args.out, **_milvus_options(args))
        index = MilvusIndex.create(target, encoder.metadata["bits"], encoder.metadata, overwrite=args.overwrite,
                                   resume=args.resume, **_backend_params(args.param))
        args.backend = "milvus"
    else:
        index = ArchiveIndex.create(encoder.metadata["bits"], encoder.metadata, args.backend,
                                    **_backend_params(args.param))
    ids = add_items(index, encoder, items, batch_size=args.batch_size, progress=not args.quiet,
                    on_error=args.on_error)
    index.save(args.out)
    if milvus:
        index.flush()  # seal the rows and wait for the code index
    _print_skipped(index, before=0)
    counts = ", ".join(f"{len(v)} {k} items" for k, v in ids.items())
    where = index.target.location() if milvus else args.out
    print(f"indexed {counts} ({index.bits}-bit codes, backend {args.backend}, model {index.model_id}) → {where}")
    return 0


def _build_from_shards(args: argparse.Namespace) -> int:
    from tfduch.index.from_shards import build_from_shards
    from tfduch.index.milvus import is_milvus_location

    spec = {"run": str(args.run)} if args.run is not None else {"export": str(args.export)} if args.export else None
    milvus = None
    if is_milvus_location(args.out):
        milvus = {**_milvus_options(args), "overwrite": args.overwrite, "resume": args.resume}
        args.backend = "milvus"
    result = build_from_shards(args.from_shards, args.out, index_shards=args.index_shards, workers=args.workers,
                               encoder_spec=spec, backend=args.backend, backend_params=_backend_params(args.param),
                               batch_size=args.batch_size, milvus=milvus)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    counts = ", ".join(f"{n} {k} items" for k, n in result.count.items())
    what = f"a set of {result.num_shards} index shards" if result.num_shards > 1 else "one index"
    print(f"indexed {counts} from {args.from_shards} into {what} (backend {args.backend}, model {result.model_id}) "
          f"→ {result.path}")
    return 0


def _print_skipped(index: Any, before: int) -> None:
    skipped = (index.metadata.get("skipped") or [])[before:]
    if skipped:
        print(f"skipped {len(skipped)} unreadable images (recorded in the index metadata under 'skipped'):")
        for s in skipped:
            print(f"  {s['path']}: {s['reason']}")


def cmd_add(args: argparse.Namespace) -> int:
    from tfduch.index.build import add_items, collect_items

    index = _writable(args.index, args)
    encoder = query_encoder(args, index.metadata.get("model"))
    index.check_compatible(encoder.metadata)
    items = collect_items(args.images, args.captions, args.split, _split_file(args))
    before = len(index.metadata.get("skipped") or [])
    ids = add_items(index, encoder, items, batch_size=args.batch_size, progress=not args.quiet,
                    on_error=args.on_error)
    index.save(args.index)
    _print_skipped(index, before)
    for name, new in ids.items():
        if len(new):
            print(f"added {len(new)} {name} items (ids {new[0]}..{new[-1]}) → {args.index}")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    index = _writable(args.index, args)
    removed = {args.collection: index.remove(args.collection, args.ids)}
    if hasattr(index, "remove_captions_of"):  # Milvus: captions are found by their image_id field
        if args.collection == "image" and not args.keep_captions:
            removed["text"] = index.remove_captions_of(args.ids)
    elif args.collection == "image" and not args.keep_captions and "text" in index.collections:
        texts = index.collection("text")
        wanted = set(args.ids)
        live = np.flatnonzero(~texts.removed) if texts.removed is not None else np.arange(len(texts.ids))
        captions = [int(texts.ids[r]) for r in live if texts.payloads[int(r)].get("image_id") in wanted]
        if captions:
            removed["text"] = index.remove("text", captions)
    if args.compact:
        for coll in index.collections.values():
            coll.compact()
    index.save(args.index)
    print("removed " + ", ".join(f"{n} {name} items" for name, n in removed.items()) + f" from {args.index}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    info = open_location(args.index, args, verify=True).info()
    if args.json:
        _print_json(info)
        return 0
    model = info.get("model") or {}
    source = model.get("source") or {}
    shard_set = info.get("shard_set")
    kind = f", a set of {shard_set['num_shards']} shards" if shard_set else ""
    if "server" in info:
        print(f"index      {info['server']['location']}  (Milvus at {info['server']['uri']})")
    else:
        print(f"index      {args.index}  ({info.get('file', {}).get('bytes', 0) / 1e6:.2f} MB{kind}, "
              "checksum verified)")
    print(f"codes      {info['bits']} bits, model {info.get('model_id')} ({model.get('method')}, "
          f"{source.get('kind')} {source.get('path')})")
    print(f"created    {info.get('created_at')}   updated {info.get('updated_at') or '-'}")
    for name, coll in info["collections"].items():
        backend = coll["backend"]
        params = ", ".join(f"{k}={v}" for k, v in backend.items() if k not in ("name", "bits"))
        print(f"{name:<10} {coll['count']} items ({coll['removed']} removed, awaiting compaction), "
              f"backend {backend['name']}{f' ({params})' if params else ''}")
    for skipped in info.get("skipped") or []:
        print(f"skipped    {skipped['path']}: {skipped['reason']}")
    for entry in (shard_set or {}).get("shards", []):
        ranges = "  ".join(f"{name} ids {a}..{b - 1} ({b - a})" if b > a else f"{name} -"
                           for name, (a, b) in entry["ids"].items())
        print(f"shard      {entry['file']}  {entry['bytes'] / 1e6:.2f} MB  {ranges}")
    return 0


def _parse_codes(hexes: list[str], bits: int) -> np.ndarray:
    try:
        rows = [np.frombuffer(bytes.fromhex(h), np.uint8) for h in hexes]
    except ValueError as exc:
        raise TfduchError(f"--code expects hexadecimal packed codes: {exc}") from None
    bad = [h for h, r in zip(hexes, rows, strict=True) if len(r) != bits // 8]
    if bad:
        raise TfduchError(f"--code {bad[0]!r}: a {bits}-bit code is {bits // 4} hex digits")
    return np.stack(rows)


def cmd_search(args: argparse.Namespace) -> int:
    from tfduch.index.searcher import Searcher

    texts = list(args.query)
    if args.queries is not None:
        lines = args.queries.read_text(encoding="utf-8").splitlines()
        texts += [line for line in lines if line.strip()]
    kinds = sum(bool(x) for x in (texts, args.image, args.code))
    if kinds != 1:
        raise TfduchError("give one kind of query: text (QUERY / --queries), --image PATH, or --code HEX")
    index = open_location(args.index, args)
    target = args.target
    index.collection(target).check_k(args.k)
    area = args.bbox is not None or args.time is not None
    if args.code:
        labels = [f"code {h}" for h in args.code]
        codes = _parse_codes(args.code, index.bits)
        results = _filtered(index, args, codes) if area else Searcher(index).by_code(codes, args.k, target)
    else:
        searcher = Searcher(index, query_encoder(args, index.metadata.get("model")))
        if texts:
            labels = texts
            results = _filtered(index, args, searcher.encoder.encode_texts(texts)) if area and \
                all(t.strip() for t in texts) else searcher.by_text(texts, args.k, target)
        else:
            labels = [f"image {p}" for p in args.image]
            results = _filtered(index, args, searcher.encoder.encode_images([Path(p) for p in args.image])) \
                if area else searcher.by_image([Path(p) for p in args.image], args.k, target)
    fmt = "json" if args.json else args.format
    if fmt == "json":
        _print_json([{"query": q, "target": target, "results": [h.to_dict() for h in hits]}
                     for q, hits in zip(labels, results, strict=True)])
    elif fmt in ("geojson", "stac"):
        from tfduch.geo.formats import to_geojson, to_stac

        rows = [[h.to_dict() for h in hits] for hits in results]
        _print_json((to_geojson if fmt == "geojson" else to_stac)(rows, labels))
    else:
        for q, hits in zip(labels, results, strict=True):
            print_hits(hits, f"\n{q!r} → top {args.k} {target} items" + (" in the area/time" if area else ""))
    return 0


def _filtered(index: Any, args: argparse.Namespace, codes: np.ndarray) -> list[list[Any]]:
    """Exact search among image tiles whose footprint meets --bbox and whose time is within --time."""
    from tfduch.geo.spatial import parse_bbox, parse_time
    from tfduch.index.area import area_search

    if args.target != "image":
        raise TfduchError("--bbox / --time select image tiles: use them with --target image")
    return area_search(index, args.index, codes, args.k, parse_bbox(args.bbox) if args.bbox is not None else None,
                       parse_time(args.time) if args.time is not None else None)


# ---------------------------------------------------------------------------------------- registration
def register(subparsers: Any) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser("index", help="build, update and inspect an archive search index",
                              description="Encode an image archive (and its captions) once into a persistent "
                              "Hamming index that `tfduch search` and `tfduch web` query in milliseconds.",
                              epilog=INDEX_EPILOG, formatter_class=fmt)
    sub = p.add_subparsers(dest="index_command", required=True, metavar="SUBCOMMAND")

    b = sub.add_parser("build", help="encode images (+ captions) into a new index file",
                       description="Encode every image (and caption) with a trained run or an export and write a "
                       "new index file atomically. An existing file is replaced only with --overwrite.",
                       epilog=INDEX_EPILOG, formatter_class=fmt)
    _model_args(b)
    _source_args(b, required=False)
    b.add_argument("--from-shards", type=Path, metavar="DIR",
                   help="index a tfduch encode-archive output folder (manifest.json + codes-*.npz) instead of "
                        "--images: its codes need no model; --run/--export (the archive's model) also indexes the "
                        "captions in its payloads")
    b.add_argument("--index-shards", type=int, default=1, metavar="N",
                   help="with --from-shards: write N index shards (built in parallel) and a shard-set manifest at "
                        "--out; tfduch search opens it like one index (default 1: one index file)")
    b.add_argument("--workers", type=int, metavar="N",
                   help="processes building the index shards (default: one per shard, at most the CPU count)")
    b.add_argument("--out", required=True, type=Path,
                   help="index file to write (e.g. archive.tfidx), or an archive in Milvus: milvus://HOST:PORT/NAME "
                        "(milvus://local/NAME: embedded server; --param index_type=BIN_IVF_FLAT nlist=… nprobe=…)")
    b.add_argument("--backend", default="flat", choices=("flat", "mih", "hnsw", "ivf"),
                   help="search structure: flat = exact scan (default); ivf = approximate, >10x faster on "
                        "learned codes; hnsw = approximate graph; mih = exact multi-index hashing, fast only for "
                        "near-duplicate search (see docs/index.md)")
    b.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="backend parameter, e.g. --param nhash=4, --param ef_search=128, --param nprobe=32")
    b.add_argument("--overwrite", action="store_true", help="replace an existing index file (or Milvus archive)")
    b.add_argument("--resume", action="store_true",
                   help="Milvus: finish an interrupted build of the same archive and model (rows are upserted by "
                        "id, so nothing is duplicated)")
    add_milvus_args(b)
    b.set_defaults(func=cmd_build)

    a = sub.add_parser("add", help="encode more images (+ captions) into an existing index",
                       description="Append items without rebuilding; the index is rewritten atomically, so a "
                       "failure leaves it as it was. The model must be the one that built the index.")
    a.add_argument("--index", required=True, type=Path, help="index file (or milvus://…) to update")
    _model_args(a)
    _source_args(a)
    add_milvus_args(a)
    a.set_defaults(func=cmd_add)

    r = sub.add_parser("remove", help="delete items by id",
                       description="Delete items by id (all or none). Removing images also removes their captions "
                       "unless --keep-captions. Flat indexes compact at once; other backends keep tombstones "
                       "that searches skip until --compact rebuilds them.")
    r.add_argument("--index", required=True, type=Path, help="index file to update")
    r.add_argument("--ids", required=True, type=int, nargs="+", help="item ids (as printed by tfduch search)")
    r.add_argument("--collection", default="image", choices=("image", "text"), help="collection of the ids")
    r.add_argument("--keep-captions", action="store_true", help="keep the captions of removed images")
    r.add_argument("--compact", action="store_true", help="rebuild the search structure without the removed items")
    add_milvus_args(r)
    r.set_defaults(func=cmd_remove)

    i = sub.add_parser("info", help="print metadata, counts and backend of an index (verifies its checksums)",
                       description="Print an index's model, code length, item counts, backend, skipped files and "
                       "build times, after verifying the checksums of every section.")
    i.add_argument("--index", required=True, type=Path, help="index file")
    i.add_argument("--json", action="store_true", help="machine-readable output")
    add_milvus_args(i)
    i.set_defaults(func=cmd_info)

    s = subparsers.add_parser("search", help="search an index by text, image or code",
                              description="Top-k search of an index: prints a ranked table (rank, id, Hamming "
                              "distance, class, path or caption) per query, or JSON with --json.",
                              epilog=SEARCH_EPILOG, formatter_class=fmt)
    s.add_argument("query", nargs="*", help="caption(s) to search for")
    s.add_argument("--index", required=True, type=Path,
                   help="index file or shard set (tfduch index build); a shard set is searched in parallel")
    s.add_argument("-k", type=int, default=20, help="results per query (default 20; at most the collection size)")
    s.add_argument("--image", action="append", default=[], metavar="PATH", help="query image file (repeatable)")
    s.add_argument("--code", action="append", default=[], metavar="HEX", help="packed query code in hex (repeatable)")
    s.add_argument("--queries", type=Path, help="text file with one caption query per line")
    s.add_argument("--target", default="image", choices=("image", "text"),
                   help="collection to search: image (default) or text (captions)")
    s.add_argument("--json", action="store_true", help="print JSON instead of tables (= --format json)")
    s.add_argument("--format", default="table", choices=("table", "json", "geojson", "stac"),
                   help="output: table (default), json, geojson (a FeatureCollection of tile footprints with rank, "
                   "distance, scene, window, thumbnail; opens in QGIS) or stac (an ItemCollection of STAC Items)")
    s.add_argument("--bbox", metavar="MINLON,MINLAT,MAXLON,MAXLAT",
                   help="only tiles whose footprint intersects this WGS84 box (geo archives, docs/geo.md)")
    s.add_argument("--time", metavar="FROM/TO",
                   help="only tiles acquired within FROM/TO (ISO 8601 dates or times; '..' = open end)")
    _model_args(s)
    add_milvus_args(s)
    s.set_defaults(func=cmd_search)
