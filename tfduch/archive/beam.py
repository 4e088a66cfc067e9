"""Archive encoding as an Apache Beam pipeline: image files (by glob) → code shards (:mod:`tfduch.archive.shards`).

The driver lists the files through Beam's ``FileSystems`` (local, ``gs://``, ``s3://``, ``hdfs://``), sorts
them and cuts the list into N contiguous shards; a shard is the unit of work and of output. Shards whose
codes file already exists and checks out (same model, same inputs) are skipped, so re-running a killed
job redoes only the shards that were in flight. The pipeline is one fused chain per shard::

    Create(pending shards) → Reshuffle → ReadShard (bytes + decode check; bad → dead letter)
      → RunInference(ArchiveModelHandler, batches) → WriteShard (all items of a shard → one file)

Everything after the ``Reshuffle`` runs in one fused stage, so all items of a shard stay in the bundle
that read them and ``WriteShard`` writes each shard as soon as its last item is encoded (no shuffle
barrier: progress is durable while the job runs). The model is any :class:`~tfduch.index.encoders.QueryEncoder`,
loaded once per worker process by ``RunInference``.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import ModelHandler, RunInference
from apache_beam.options.pipeline_options import PipelineOptions

from tfduch.archive import shards as fmt
from tfduch.codes import pack_codes
from tfduch.errors import DataError, TfduchError

__all__ = ["ArchiveItem", "ArchiveModelHandler", "EncodeResult", "EncoderSpec", "encode_archive", "list_inputs",
           "partition"]

METRICS_NAMESPACE = "tfduch_archive"


@dataclass(frozen=True)
class EncoderSpec:
    """How a worker builds its encoder: a run folder, an export, or (tests, plug-ins) any factory."""

    run: str | None = None
    export: str | None = None
    factory: Callable[[], Any] | None = None
    threads: int | None = None  # TF intra-op threads per worker (None: TensorFlow's default)

    def open(self) -> Any:
        if self.threads:
            import tensorflow as tf

            try:
                tf.config.threading.set_intra_op_parallelism_threads(self.threads)
                tf.config.threading.set_inter_op_parallelism_threads(min(2, self.threads))
            except RuntimeError:  # TF already initialised in this process: keep its pools
                pass
        if self.factory is not None:
            return self.factory()
        from tfduch.index.encoders import open_encoder

        return open_encoder(self.run, self.export)


class ArchiveItem(NamedTuple):
    """One input file on its way through the pipeline (``data`` is dropped once encoded)."""

    shard: int
    size: int          # items in this shard
    pos: int           # position within the shard
    id: int            # position in the sorted input list
    path: str
    classname: str | None
    captions: tuple[str, ...]
    data: bytes | None
    reason: str | None  # why this item is dead-lettered (None: fine so far)
    extra: dict[str, Any] | None = None  # more payload fields (geo tiles: footprint, window, scene, ...)


class EncodedItem(NamedTuple):
    item: ArchiveItem   # with data=None
    packed: bytes | None
    reason: str | None


def _check_image(data: bytes, path: str) -> str | None:
    """Decode once with the library's loader: corrupt, truncated and non-image files are named here."""
    from tfduch.data.images import load_image_bytes

    try:
        load_image_bytes(data, name=path)
    except DataError as exc:
        return str(exc)
    return None


def read_shard_items(shard: tuple[int, list[tuple[Any, ...]]]) -> Iterator[ArchiveItem]:
    """Read every file of a shard; unreadable, empty or undecodable files carry a reason instead of bytes.

    An entry with a fifth element is a geo tile (:mod:`tfduch.geo.tiler`): its window is read from its scene
    and turned into PNG bytes by the archive's band recipe; mostly-nodata tiles come back as ``skipped: ...``.
    """
    index, entries = shard
    for pos, (item_id, path, classname, captions, *tile) in enumerate(entries):
        data, reason = None, None
        if tile and tile[0] is not None:
            from tfduch.geo.tiler import tile_job_bytes

            job = tile[0]
            data, reason = tile_job_bytes(job, job["recipe"])
            yield ArchiveItem(index, len(entries), pos, item_id, path, classname, captions, data, reason,
                              job["payload"])
            continue
        try:
            with FileSystems.open(path, compression_type="uncompressed") as f:
                data = f.read()
        except Exception as exc:  # any filesystem's error: the file is dead-lettered, the job goes on
            reason = f"cannot read {path}: {type(exc).__name__}: {exc}"
        if data is not None:
            reason = _check_image(data, path)
            if reason is not None:
                data = None
        yield ArchiveItem(index, len(entries), pos, item_id, path, classname, captions, data, reason)


class ArchiveModelHandler(ModelHandler[ArchiveItem, EncodedItem, Any]):
    """RunInference adapter for a tfduch encoder: image bytes in, packed codes out, failures as dead letters.

    Items already marked bad pass through untouched. If a batch fails (an image the checker accepted but
    the model's decoder rejects), its items are encoded one at a time so only the culprit is dead-lettered.
    """

    def __init__(self, spec: EncoderSpec, batch_size: int = 32) -> None:
        super().__init__(min_batch_size=batch_size, max_batch_size=batch_size)
        self.spec = spec

    def load_model(self) -> Any:
        return self.spec.open()

    def run_inference(self, batch: Sequence[ArchiveItem], model: Any,
                      inference_args: dict[str, Any] | None = None) -> Iterable[EncodedItem]:
        good = [i for i, item in enumerate(batch) if item.data is not None]
        packed: dict[int, bytes] = {}
        failed: dict[int, str] = {}
        try:
            codes = _encode(model, [batch[i].data for i in good])
            packed = {i: row for i, row in zip(good, codes, strict=True)}
        except Exception:  # find the bad item(s) one by one
            for i in good:
                try:
                    packed[i] = _encode(model, [batch[i].data])[0]
                except Exception as exc:
                    failed[i] = f"encoder rejected {batch[i].path}: {type(exc).__name__}: {str(exc)[:300]}"
        out = []
        for i, item in enumerate(batch):
            reason = item.reason if item.data is None else failed.get(i)
            out.append(EncodedItem(item._replace(data=None), packed.get(i), reason))
        return out

    def get_num_bytes(self, batch: Sequence[ArchiveItem]) -> int:
        return sum(len(item.data or b"") for item in batch)

    def get_metrics_namespace(self) -> str:
        return METRICS_NAMESPACE


def _encode(model: Any, data: list[bytes | None]) -> list[bytes]:
    codes = np.asarray(model.encode_images(data))
    if codes.ndim != 2 or len(codes) != len(data):
        raise TfduchError(f"encoder returned codes of shape {codes.shape} for {len(data)} images")
    return [row.tobytes() for row in pack_codes(codes)]


class WriteShard(beam.DoFn):
    """Collect a shard's items (they arrive in its bundle) and write the shard file once all are there."""

    def __init__(self, folder: str, num_shards: int, model_id: str, bits: int) -> None:
        self.folder, self.num_shards, self.model_id, self.bits = folder, num_shards, model_id, bits
        self.items_counter = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "items_encoded")
        self.dead_counter = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "dead_letters")
        self.shard_counter = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "shards_written")

    def start_bundle(self) -> None:
        self.pending: dict[int, dict[int, EncodedItem]] = {}

    def process(self, result: EncodedItem) -> Iterator[dict[str, Any]]:
        items = self.pending.setdefault(result.item.shard, {})
        items[result.item.pos] = result
        if len(items) == result.item.size:
            yield self._write(result.item.shard, [items[p] for p in range(result.item.size)])
            del self.pending[result.item.shard]

    def finish_bundle(self) -> None:
        if self.pending:  # cannot happen with a fused stage; fail loudly rather than write a partial shard
            raise RuntimeError(f"shards {sorted(self.pending)} ended their bundle incomplete")

    def _write(self, index: int, results: list[EncodedItem]) -> dict[str, Any]:
        ok = [r for r in results if r.packed is not None]
        dead = [{"path": r.item.path, "id": r.item.id, "reason": r.reason} for r in results if r.packed is None]
        packed = (np.frombuffer(b"".join(r.packed for r in ok), np.uint8).reshape(len(ok), -1) if ok  # type: ignore[misc]
                  else np.zeros((0, self.bits // 8), np.uint8))
        payloads = [{"path": r.item.path, "id": r.item.id, "class": r.item.classname,
                     "captions": list(r.item.captions), **(r.item.extra or {})} for r in ok]
        meta = {"model_id": self.model_id, "bits": self.bits,
                "inputs_sha256": fmt.inputs_digest([r.item.path for r in results])}
        fmt.write_shard(self.folder, index, self.num_shards, packed, [r.item.path for r in ok], payloads, dead, meta)
        self.items_counter.inc(len(ok))
        self.dead_counter.inc(len(dead))
        self.shard_counter.inc()
        return {"shard": index, "items": len(ok), "dead": len(dead)}


# ----------------------------------------------------------------------------------------------- the driver
def _glob_root(pattern: str) -> str:
    """The folder part of a glob before its first wildcard (``/a/b/*/*.tif`` → ``/a/b``)."""
    cut = min((pattern.find(c) for c in "*?[" if c in pattern), default=len(pattern))
    return pattern[:cut].rsplit("/", 1)[0] if "/" in pattern[:cut] else "."


def list_inputs(patterns: Sequence[str]) -> list[str]:
    """The sorted, de-duplicated file URIs matching the globs (DataError if none match)."""
    paths: set[str] = set()
    for pattern in patterns:
        try:
            results = FileSystems.match([pattern])
        except Exception as exc:  # e.g. an unregistered scheme
            raise DataError(f"cannot list {pattern!r}: {exc}") from None
        paths.update(m.path for r in results for m in r.metadata_list)
    if not paths:
        raise DataError(f"no files match {' '.join(map(repr, patterns))}")
    return sorted(paths)


def partition(num_items: int, num_shards: int) -> list[tuple[int, int]]:
    """Contiguous ``[start, end)`` ranges of shard 0..N-1: a pure function of the counts, so reruns agree."""
    return [(i * num_items // num_shards, (i + 1) * num_items // num_shards) for i in range(num_shards)]


def _labels(paths: Sequence[str], patterns: Sequence[str], captions: str | None
            ) -> tuple[list[str | None], list[tuple[str, ...]]]:
    """Class and captions per file: from a Karpathy captions JSON (by file name), else the sub-folder name."""
    roots = sorted({_glob_root(p).rstrip("/") for p in patterns}, key=len, reverse=True)
    classes: list[str | None] = []
    for path in paths:
        parent = path.rsplit("/", 1)[0]
        root = next((r for r in roots if parent == r or parent.startswith(r + "/")), None)
        classes.append(parent.rsplit("/", 1)[-1] if root is not None and parent != root else None)
    texts: list[tuple[str, ...]] = [() for _ in paths]
    if captions:
        for i, (classname, caps) in ((i, _caption_index(captions).get(p.rsplit("/", 1)[-1], (None, None)))
                                     for i, p in enumerate(paths)):
            if caps is not None:
                classes[i], texts[i] = classname, caps
    return classes, texts


def _caption_index(json_path: str) -> dict[str, tuple[str, tuple[str, ...]]]:
    """file name → (class, captions) of a Karpathy JSON, parsed by :mod:`tfduch.data.karpathy`'s own rules.

    Why not ``load_karpathy``: it insists that every image sits in one local folder, while archive files
    may live anywhere (other folders, object stores) and be matched by name only.
    """
    if json_path not in _CAPTIONS:
        from tfduch.data import karpathy

        data = karpathy._read_json(Path(json_path))
        if not isinstance(data, dict) or not isinstance(data.get("images"), list):
            raise DataError(f"{json_path}: not a Karpathy caption file (no list 'images')")
        parsed = [karpathy._parse_entry(Path(json_path), i, e) for i, e in enumerate(data["images"])]
        labels, classnames = karpathy._assign_labels(Path(json_path), parsed)
        _CAPTIONS[json_path] = {p["filename"]: (classnames[labels[i]], tuple(p["captions"]))
                                for i, p in enumerate(parsed)}
    return _CAPTIONS[json_path]


_CAPTIONS: dict[str, dict[str, tuple[str, tuple[str, ...]]]] = {}


@dataclass
class EncodeResult:
    """What a run did: shards written now / skipped as already done, items encoded, dead letters."""

    folder: str
    num_shards: int
    written: list[int]
    skipped: list[int]
    items: int
    dead: int
    seconds: float
    items_per_second: float
    manifest: dict[str, Any] = field(default_factory=dict)


def _shard_ok(folder: str, index: int, count: int, model_id: str, digest: str) -> bool:
    path = fmt.join(folder, fmt.shard_name(index, count))
    if not fmt.file_exists(path) or not fmt.file_exists(fmt.join(folder, fmt.dead_letter_name(index, count))):
        return False
    try:
        meta = fmt.read_shard_meta(path)
    except fmt.ShardError:
        return False
    return (meta.get("index"), meta.get("count"), meta.get("model_id"), meta.get("inputs_sha256")) == \
        (index, count, model_id, digest)


def _check_manifest(folder: str, manifest: dict[str, Any]) -> None:
    """Refuse to mix two encodings in one folder: another model, code length, file list or sharding."""
    try:
        old = fmt.read_manifest(folder)
    except fmt.ShardError:
        if fmt.file_exists(fmt.join(folder, fmt.MANIFEST_NAME)):
            raise
        if not fmt.is_remote(folder) and any(Path(folder).glob("codes-*-of-*.npz")):
            raise fmt.ShardError(f"{folder} holds code shards but no manifest: use an empty or new folder") from None
        return
    for key, what in (("model_id", "model"), ("bits", "code length"), ("inputs_sha256", "input file list"),
                      ("num_shards", "shard count"), ("geo_recipe", "band recipe / tiling")):
        if old.get(key) != manifest.get(key):
            hint = {"num_shards": " (give the same --shards / --shard-size as before)",
                    "inputs_sha256": f" ({old.get('num_files')} files from {old.get('input_glob')} before, "
                                     f"{manifest['num_files']} from {manifest['input_glob']} now)"}.get(key, "")
            raise fmt.ShardError(f"{folder} already holds shards of another {what}: {key} {old.get(key)!r} there, "
                                 f"{manifest[key]!r} now{hint}; use another --out folder or delete it")


def _progress(folder: str, num_shards: int, pending: dict[int, int], done_before: int, interval: float,
              stop: threading.Event, log: Callable[[str], None]) -> None:
    """Poll the output folder for newly written shards and print counts and items/s (works on any runner)."""
    start = time.monotonic()
    total = sum(pending.values())
    while not stop.wait(interval):
        done = [i for i in pending if fmt.file_exists(fmt.join(folder, fmt.shard_name(i, num_shards)))]
        items = sum(pending[i] for i in done)
        elapsed = time.monotonic() - start
        rate = items / elapsed
        eta = f", ETA {(total - items) / rate / 60:.1f} min" if rate > 0 else ""
        log(f"progress: {len(done) + done_before}/{num_shards} shards done ({len(done)} this run), "
            f"{items}/{total} items encoded this run, {rate:.1f} items/s{eta}")


def pipeline_options(runner: str = "DirectRunner", num_workers: int = 1, direct_mode: str = "multi_processing",
                     extra: Sequence[str] = ()) -> PipelineOptions:
    """Beam options: our defaults for the DirectRunner, then the user's pass-through flags (which win)."""
    flags = [f"--runner={runner}", "--default_sdk_harness_log_level=WARNING"]
    if runner.lower() in ("direct", "directrunner"):
        flags += [f"--direct_running_mode={direct_mode}", f"--direct_num_workers={num_workers}"]
    return PipelineOptions(flags + list(extra))


def encode_archive(patterns: Sequence[str], out: str, spec: EncoderSpec, *, shards: int | None = None,
                   shard_size: int = 1000, batch_size: int = 32, captions: str | None = None,
                   options: PipelineOptions | None = None, progress_interval: float = 10.0,
                   log: Callable[[str], None] = print, tiles: Any = None, milvus: Any = None,
                   milvus_batch: int = 1000, milvus_overwrite: bool = False) -> EncodeResult:
    """Encode every file matching ``patterns`` into code shards under ``out``; resumes a previous run.

    ``spec`` is opened once here (for bits / model id) and once per worker process by ``RunInference``.
    ``tiles`` (a :class:`tfduch.geo.tiler.TilePlan`): encode its planned scene tiles instead of files;
    ``patterns`` then only names the scene sources in the manifest.
    ``milvus`` (a :class:`tfduch.index.milvus.MilvusTarget`) also upserts every shard's codes into that
    archive's ``image`` collection (:mod:`tfduch.archive.milvus_sink`): shards encoded now and shards already
    on disk, so a re-run completes an interrupted load without duplicates.
    """
    if isinstance(patterns, str):
        patterns = [patterns]
    paths = list(tiles.keys) if tiles is not None else list_inputs(patterns)
    if not paths:
        raise DataError("nothing to encode: no inputs")
    if shards is not None and shards < 1 or shard_size < 1 or batch_size < 1:
        raise DataError("--shards, --shard-size and --batch-size must be positive")
    num_shards = min(len(paths), shards if shards is not None else math.ceil(len(paths) / shard_size))
    encoder = spec.open()
    meta = dict(encoder.metadata)
    bits, model_id = int(meta["bits"]), str(meta["model_id"])
    del encoder
    if tiles is not None:
        classes, texts = [None] * len(paths), [()] * len(paths)
        recipe = tiles.recipe.to_dict()
        jobs = [{**job, "recipe": recipe} for job in tiles.jobs]
    else:
        classes, texts = _labels(paths, patterns, captions)
        jobs = [None] * len(paths)
    ranges = partition(len(paths), num_shards)
    digests = [fmt.inputs_digest(paths[a:b]) for a, b in ranges]
    out = str(out) if fmt.is_remote(str(out)) else str(Path(out).resolve())
    manifest = {"status": "running", "bits": bits, "packed_bytes": bits // 8, "model_id": model_id, "model": meta,
                "input_glob": list(patterns), "num_files": len(paths), "inputs_sha256": fmt.inputs_digest(paths),
                "num_shards": num_shards, "captions": captions,
                **({"geo": tiles.describe(), "geo_recipe": {"recipe": tiles.recipe.describe(),
                                                            "tiling": vars(tiles.spec).copy()}} if tiles else {}),
                "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if not fmt.is_remote(out):
        Path(out).mkdir(parents=True, exist_ok=True)
    _check_manifest(out, manifest)
    try:
        manifest["created_at"] = fmt.read_manifest(out)["created_at"]
    except (fmt.ShardError, KeyError):
        pass
    fmt.write_manifest(out, manifest)

    skipped = [i for i in range(num_shards) if _shard_ok(out, i, num_shards, model_id, digests[i])]
    todo = [i for i in range(num_shards) if i not in set(skipped)]
    log(f"{len(paths)} files in {num_shards} shards → {out}: {len(skipped)} already done, {len(todo)} to encode "
        f"({bits}-bit model {model_id})")
    start = time.monotonic()
    if milvus is not None:
        from tfduch.archive import milvus_sink

        milvus = milvus_sink.prepare_archive(milvus, meta, overwrite=milvus_overwrite)
    if todo or (milvus is not None and skipped):
        elements = [(i, [(a + j, paths[a + j], classes[a + j], texts[a + j], jobs[a + j])
                         for j in range(ranges[i][1] - a)])
                    for i in todo for a in [ranges[i][0]]]
        stop = threading.Event()
        watcher = threading.Thread(target=_progress, daemon=True, args=(
            out, num_shards, {i: ranges[i][1] - ranges[i][0] for i in todo}, len(skipped), progress_interval,
            stop, log))
        watcher.start()
        try:
            with beam.Pipeline(options=options or pipeline_options()) as p:
                written = (p
                           | "Shards" >> beam.Create(elements, reshuffle=False)
                           | "Spread" >> beam.Reshuffle()
                           | "Read" >> beam.FlatMap(read_shard_items)
                           | "Encode" >> RunInference(ArchiveModelHandler(spec, batch_size))
                           | "Write" >> beam.ParDo(WriteShard(out, num_shards, model_id, bits)))
                if milvus is not None:
                    from tfduch.archive import milvus_sink

                    _ = ((written | "WrittenShard" >> beam.Map(lambda r: r["shard"]),
                          p | "ShardsOnDisk" >> beam.Create(skipped))
                         | "AllShards" >> beam.Flatten()
                         | "ShardRecords" >> beam.FlatMap(lambda i: milvus_sink.shard_records(out, num_shards, i))
                         | "Milvus" >> milvus_sink.WriteToMilvus(milvus, "image", milvus_batch))
        finally:
            stop.set()
            watcher.join()
    seconds = time.monotonic() - start

    items = dead = 0
    reasons: dict[str, int] = {}
    for i in range(num_shards):
        if not _shard_ok(out, i, num_shards, model_id, digests[i]):
            raise TfduchError(f"shard {i} of {num_shards} was not written; re-run the same command to finish")
        shard_meta = fmt.read_shard_meta(fmt.join(out, fmt.shard_name(i, num_shards)))
        items += int(shard_meta["items"])
        dead += int(shard_meta["dead"])
        if shard_meta["dead"]:
            for record in fmt.read_dead_letters(out, i, num_shards):
                kind = str(record.get("reason", "")).split(":", 1)[0]
                reasons[kind] = reasons.get(kind, 0) + 1
    if milvus is not None:
        from tfduch.archive import milvus_sink

        index = milvus_sink.finish_archive(milvus, len(paths))
        manifest["milvus"] = {"location": index.target.location(), "uri": index.client.uri,
                              "items": len(index.collection("image"))}
        log(f"indexed {manifest['milvus']['items']} items into {manifest['milvus']['location']}")
    encoded_now = sum(ranges[i][1] - ranges[i][0] for i in todo)
    rate = encoded_now / seconds if todo and seconds > 0 else 0.0
    manifest.update(status="complete", items=items, dead_letters=dead, dead_letter_reasons=reasons,
                    completed_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    last_run={"shards_written": len(todo), "shards_skipped": len(skipped), "seconds": round(seconds, 3),
                              "items_per_second": round(rate, 3), "options": (options or pipeline_options()
                                                                              ).get_all_options(drop_default=True)})
    fmt.write_manifest(out, manifest)
    return EncodeResult(out, num_shards, todo, skipped, items, dead, seconds, rate, manifest)

