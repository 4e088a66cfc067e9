"""Archive encoding on Beam (``tfduch encode-archive``): parity, worker scaling, a large archive with a kill.

Part 1 (UCM, the real pipeline): the 2100 UC Merced images are encoded by the single-process
``ExportEncoder`` (reference) and by the Beam pipeline with 1 and 2 DirectRunner worker processes;
prints % bits / codes equal to the reference and images/s (end to end, and steady state from the shard
files' write times, i.e. without worker start-up and model loading) with the 2-worker / 1-worker ratio.

Part 2 (a simulated archive of ``--large-items`` files): symlinks in ``--work`` named after new ids point
at the UCM images, so no image is copied. **Labelled shortcut:** the whole pipeline runs (glob listing,
sharding, FileSystems reads, the decode check of every file, RunInference batching, atomic shard writes,
resume) but the model step looks up each image's cached EfficientNet features (by content hash) and runs
only the export's ``encode_image_features``: at ~20 images/s on this CPU the CNN would need hours for
200 000 images. The printed codes check compares the shortcut's codes with part 1's full-path codes.
The job is SIGKILLed once ``--kill-at`` of its shards are written, then restarted; the restart must
skip exactly the finished shards. Peak RSS is the sum over the job's process tree (``/proc``).

    python bench/beam_encode.py --export /tmp/beamexp/duch --run /tmp/beamrun
    python bench/beam_encode.py --export EXP --run RUN --skip-ucm --large-items 200000 --workers 2
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE.parent))  # run from a checkout without installing

_DEFAULT_DATA = Path(os.environ.get("TFDUCH_DATA", _HERE.parent.parent / "shared" / "data" / "ucm_captions"))


def _quiet() -> None:
    import logging

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("apache_beam").setLevel(logging.WARNING)


def collect_codes(out: Path) -> dict[str, np.ndarray]:
    from tfduch.archive.shards import iter_shards

    return {p: row for s in iter_shards(out) for p, row in zip(s.paths, s.packed, strict=True)}


def agreement(packed: dict[str, np.ndarray], reference: dict[str, np.ndarray], key=lambda p: p
              ) -> tuple[float, float, int]:
    """(% bits equal, % codes equal, items compared) of packed codes against the reference's."""
    paths = sorted(packed)
    a = np.unpackbits(np.stack([packed[p] for p in paths]), axis=1)
    b = np.unpackbits(np.stack([reference[key(p)] for p in paths]), axis=1)
    return 100.0 * float(np.mean(a == b)), 100.0 * float(np.mean(np.all(a == b, axis=1))), len(paths)


def steady_rate(out: Path) -> float:
    """Items/s between the first and the last shard write (excludes start-up and model loading)."""
    from tfduch.archive.shards import read_manifest, read_shard_meta, shard_name

    count = read_manifest(out)["num_shards"]
    files = sorted((out / shard_name(i, count) for i in range(count)), key=lambda p: p.stat().st_mtime)
    if len(files) < 2:
        return float("nan")
    items = sum(read_shard_meta(f)["items"] + read_shard_meta(f)["dead"] for f in files[1:])
    return items / (files[-1].stat().st_mtime - files[0].stat().st_mtime)


def part_ucm(args: argparse.Namespace) -> dict[str, np.ndarray]:
    from tfduch.archive.beam import EncoderSpec, encode_archive, list_inputs, pipeline_options
    from tfduch.index.encoders import ExportEncoder

    pattern = str(args.data / "images" / "*")
    files = list_inputs([pattern])
    print(f"== part 1: {len(files)} UCM images ({pattern}), export {args.export}; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    t0 = time.perf_counter()
    encoder = ExportEncoder(args.export)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    codes = np.concatenate([encoder.encode_images(files[i:i + 32]) for i in range(0, len(files), 32)])
    single_s = time.perf_counter() - t0
    reference = dict(zip(files, np.packbits(codes > 0, axis=1), strict=True))
    print(f"single process ExportEncoder: {len(files) / single_s:.1f} images/s ({single_s:.1f} s + {load_s:.1f} s "
          "model load)")
    del encoder
    rates = {}
    for workers in args.workers:
        out = args.work / f"ucm-{workers}w"
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        result = encode_archive([pattern], str(out), EncoderSpec(export=str(args.export)), shard_size=args.shard_size,
                                batch_size=32, options=pipeline_options(num_workers=workers),
                                progress_interval=30, captions=str(args.data / "captions.json"))
        wall = time.perf_counter() - t0
        bits, exact, n = agreement(collect_codes(out), reference)
        rates[workers] = (len(files) / wall, steady_rate(out))
        print(f"Beam DirectRunner multi_processing, {workers} worker(s): {n} items, {result.dead} dead letters, "
              f"{bits:.3f} % bits equal, {exact:.2f} % codes equal to single process; "
              f"{rates[workers][0]:.1f} images/s end to end ({wall:.1f} s incl. start-up), "
              f"{rates[workers][1]:.1f} images/s steady state")
    if 1 in rates and 2 in rates:
        print(f"2 workers / 1 worker: {rates[2][0] / rates[1][0]:.2f}x end to end, "
              f"{rates[2][1] / rates[1][1]:.2f}x steady state")
    return reference


# ------------------------------------------------------------------------------------------ part 2: shortcut
class CachedFeatureEncoder:
    """The export's ``encode_image_features`` on cached features looked up by image content (a shortcut)."""

    def __init__(self, export: str, table: str) -> None:
        from tfduch.index.encoders import ExportEncoder

        self.encoder = ExportEncoder(export)
        self.metadata = {**self.encoder.metadata, "shortcut": "cached EfficientNet features by sha1 (bench)"}
        with np.load(table) as z:
            self.features = z["features"]
            self.rows = {h: i for i, h in enumerate(z["sha1"])}

    def encode_images(self, images: list[bytes]) -> np.ndarray:
        rows = [self.rows[hashlib.sha1(data).hexdigest()] for data in images]
        return np.asarray(self.encoder.exported.encode_features(self.features[rows], "image"), np.int8)


def feature_table(args: argparse.Namespace) -> Path:
    """sha1 of each UCM file → its cached clean-view features (the feature cache, not recomputed)."""
    table = args.work / "feature-table.npz"
    if not table.exists():
        from tfduch.config import load_config
        from tfduch.pipeline import prepare

        cfg = load_config(args.run / "config.yaml", [f"data.root={args.data}"])
        prep = prepare(cfg, progress=False)
        sha = [hashlib.sha1(s.path.read_bytes()).hexdigest() for s in prep.dataset.samples]
        np.savez(table, sha1=np.asarray(sha), features=prep.features.image)
    return table


def link_farm(args: argparse.Namespace) -> tuple[str, dict[str, str]]:
    """``--large-items`` symlinks ``NNNNNNN-<ucm name>`` → UCM images; returns the glob and link → target."""
    files = sorted(str(p) for p in (args.data / "images").iterdir() if p.is_file())
    folder = args.work / f"links-{args.large_items}"
    names = {str(folder / f"{i:07d}-{Path(files[i % len(files)]).name}"): files[i % len(files)]
             for i in range(args.large_items)}
    if not folder.is_dir() or sum(1 for _ in os.scandir(folder)) != args.large_items:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for link, target in names.items():
            os.symlink(target, link)
    return str(folder / "*.webp"), names


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry.name}/statm") as f:
                rss[int(entry.name)] = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        total += rss.get(p, 0)
        stack.extend(children.get(p, []))
    return total


def run_child(args: argparse.Namespace, out: Path, glob: str, kill_at: int | None) -> dict[str, Any]:
    """Run the encode job in its own process group; SIGKILL it once ``kill_at`` shards exist."""
    from tfduch.archive.shards import shard_name

    cmd = [sys.executable, __file__, "--child", str(out), "--child-glob", glob, "--export", str(args.export),
           "--run", str(args.run), "--data", str(args.data), "--work", str(args.work),
           "--shard-size", str(args.shard_size), "--workers", str(args.workers[-1])]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []

    def forward() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if line.startswith(("progress", "done", "child", "Traceback")) or "Error" in line or "shards →" in line:
                print("   ", line.rstrip(), flush=True)

    reader = threading.Thread(target=forward, daemon=True)
    reader.start()
    peak, killed = 0, False
    num_shards = -(-args.large_items // args.shard_size)
    while proc.poll() is None:
        peak = max(peak, tree_rss(proc.pid))
        if kill_at is not None:
            done = sum(1 for i in range(num_shards) if (out / shard_name(i, num_shards)).exists())
            if done >= kill_at:
                os.killpg(proc.pid, signal.SIGKILL)
                killed = True
                proc.wait()
                break
        time.sleep(0.5)
    reader.join(timeout=5)
    summary = next((json.loads(line[6:]) for line in lines if line.startswith("child ")), None)
    return {"seconds": time.perf_counter() - t0, "peak_rss": peak, "killed": killed, "rc": proc.returncode,
            "summary": summary}


def child(args: argparse.Namespace) -> int:
    _quiet()
    from tfduch.archive.beam import EncoderSpec, encode_archive, pipeline_options

    spec = EncoderSpec(factory=functools.partial(CachedFeatureEncoder, str(args.export), str(feature_table(args))))
    result = encode_archive([args.child_glob], args.child, spec, shard_size=args.shard_size, batch_size=64,
                            options=pipeline_options(num_workers=args.workers[-1]), progress_interval=15,
                            log=lambda s: print(s, flush=True))
    print("child " + json.dumps({"written": len(result.written), "skipped": len(result.skipped), "items": result.items,
                                 "dead": result.dead, "seconds": result.seconds,
                                 "items_per_second": result.items_per_second}), flush=True)
    return 0


def part_large(args: argparse.Namespace, reference: dict[str, np.ndarray] | None) -> None:
    from tfduch.archive.shards import read_manifest

    feature_table(args)
    t0 = time.perf_counter()
    glob, links = link_farm(args)
    num_shards = -(-args.large_items // args.shard_size)
    print(f"== part 2: {args.large_items} items ({len(set(links.values()))} distinct UCM images behind symlinks, "
          f"made in {time.perf_counter() - t0:.1f} s), {num_shards} shards, {args.workers[-1]} worker(s); "
          "SHORTCUT: model step = cached features + encode_image_features (decode check, I/O, Beam are real)")
    out = args.work / f"large-{args.large_items}"
    shutil.rmtree(out, ignore_errors=True)
    kill_at = max(1, int(args.kill_at * num_shards))
    first = run_child(args, out, glob, kill_at)
    from tfduch.archive.shards import shard_name

    done = sorted(i for i in range(num_shards) if (out / shard_name(i, num_shards)).exists())
    print(f"killed (SIGKILL to the process group) after {first['seconds']:.1f} s with {len(done)}/{num_shards} "
          f"shards written; peak RSS {first['peak_rss'] / 2**20:.0f} MiB")
    second = run_child(args, out, glob, None)
    s = second["summary"] or {}
    print(f"restart: rc {second['rc']}, {s.get('skipped')} shards skipped (expected {len(done)}), "
          f"{s.get('written')} written, {s.get('items')} items, {s.get('dead')} dead letters, "
          f"{s.get('items_per_second', 0):.1f} items/s over the restart's pipeline, {second['seconds']:.1f} s wall; "
          f"peak RSS {second['peak_rss'] / 2**20:.0f} MiB")
    assert s.get("skipped") == len(done) and read_manifest(out)["status"] == "complete", "resume did not match"
    from tfduch.archive.beam import partition

    total_items = sum(b - a for i, (a, b) in enumerate(partition(args.large_items, num_shards)) if i not in done)
    print(f"overall: {args.large_items} items in {first['seconds'] + second['seconds']:.1f} s wall over both runs "
          f"({args.large_items / (first['seconds'] + second['seconds']):.1f} items/s incl. the lost in-flight work); "
          f"restart encoded {total_items} items")
    if reference is not None:
        bits, exact, n = agreement(collect_codes(out), reference, key=lambda p: links[p])
        print(f"shortcut codes vs part 1's full-path codes of the same images: {bits:.3f} % bits, {exact:.2f} % codes "
              f"equal ({n} items)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--export", type=Path, required=True, help="tfduch export (base, model or version folder)")
    p.add_argument("--run", type=Path, required=True, help="the run it was exported from (its feature cache)")
    p.add_argument("--data", type=Path, default=_DEFAULT_DATA, help="UCM dataset folder ($TFDUCH_DATA)")
    p.add_argument("--work", type=Path, default=Path("/tmp/beam_bench"), help="scratch folder (links, shards)")
    p.add_argument("--workers", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2],
                   help="DirectRunner worker counts for part 1 (part 2 uses the last), default 1,2")
    p.add_argument("--shard-size", type=int, default=1000)
    p.add_argument("--large-items", type=int, default=200_000)
    p.add_argument("--kill-at", type=float, default=0.4, help="fraction of shards written before the SIGKILL")
    p.add_argument("--skip-ucm", action="store_true")
    p.add_argument("--skip-large", action="store_true")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--child-glob", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.child:
        return child(args)
    _quiet()
    reference = None
    if not args.skip_ucm:
        reference = part_ucm(args)
    elif (args.work / "ucm-reference.npz").exists():
        with np.load(args.work / "ucm-reference.npz") as z:
            reference = dict(zip(z["paths"], z["packed"], strict=True))
    if reference is not None:
        np.savez(args.work / "ucm-reference.npz", paths=np.asarray(sorted(reference)),
                 packed=np.stack([reference[k] for k in sorted(reference)]))
    if not args.skip_large:
        part_large(args, reference)
    return 0


if __name__ == "__main__":
    sys.exit(main())
