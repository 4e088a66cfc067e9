"""One index vs a set of index shards over the same codes: equal answers, queries/s of each.

    python bench/sharded_search.py [--n 1000000] [--shards 4] [--queries 300] [--k 20] [--rounds 3]

Writes ``--n`` random 64-bit codes as an ``encode-archive`` folder (4 archive shards), builds one index
and ``--shards`` index shards from it with ``tfduch.index.from_shards`` (the path ``tfduch index build
--from-shards`` takes), opens both memory-mapped with :func:`tfduch.index.open_index` and checks that
every query gets exactly the same ids and distances (asserted, for k = ``--k`` and k = 1000). Then it
times one query per call and all queries in one call, interleaving the two indexes query by query.

Times are wall seconds (the shard set's point is to use several cores at once, which CPU time of the
process would not show) and CPU seconds; on a shared machine both depend on the neighbours' load, so
the load average is printed beside them. faiss runs one OpenMP thread per search in both cases; the shard
set searches its shards on a thread pool of min(shards, CPUs) threads.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from tfduch.archive.shards import write_manifest, write_shard
from tfduch.index import open_index
from tfduch.index.from_shards import build_from_shards


def write_archive(folder: Path, packed: np.ndarray, archive_shards: int) -> None:
    bounds = np.linspace(0, len(packed), archive_shards + 1).astype(int)
    for i in range(archive_shards):
        rows = range(bounds[i], bounds[i + 1])
        payloads = [{"path": f"/archive/{r}.tif", "id": str(r), "class": None, "captions": []} for r in rows]
        write_shard(folder, i, archive_shards, packed[bounds[i] : bounds[i + 1]], [p["path"] for p in payloads],
                    payloads)
    write_manifest(folder, {"bits": packed.shape[1] * 8, "model_id": "bench-random", "model": {},
                            "num_shards": archive_shards})


def timed(fn: object, *args: object) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn(*args)  # type: ignore[operator]
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--bits", type=int, default=64)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=None, help="build processes (default: one per shard, <= CPUs)")
    args = ap.parse_args()
    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(0)
    packed = rng.integers(0, 256, (args.n, args.bits // 8), dtype=np.uint8)
    queries = rng.integers(0, 256, (args.queries, args.bits // 8), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_archive(root / "codes", packed, 4)
        t = time.perf_counter()
        build_from_shards(root / "codes", root / "one.tfidx", workers=1)
        build_one = time.perf_counter() - t
        t = time.perf_counter()
        build_from_shards(root / "codes", root / "set.tfidx", index_shards=args.shards, workers=args.workers)
        build_set = time.perf_counter() - t
        one, sharded = (open_index(root / name).collection("image") for name in ("one.tfidx", "set.tfidx"))
        for k in (args.k, 1000):
            a, b = one.search(queries, k), sharded.search(queries, k)
            assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]), f"results differ at k={k}"
            for i in range(0, args.queries, 7):
                s1, s2 = one.search(queries[i : i + 1], k), sharded.search(queries[i : i + 1], k)
                assert np.array_equal(s1[0], s2[0]) and np.array_equal(s1[1], s2[1])
        single = {"one": [0.0, 0.0], "set": [0.0, 0.0]}
        batch = {"one": [0.0, 0.0], "set": [0.0, 0.0]}
        for _ in range(args.rounds):
            for i in range(args.queries):
                for name, index in (("one", one), ("set", sharded)):
                    w, c = timed(index.search, queries[i : i + 1], args.k)
                    single[name][0] += w
                    single[name][1] += c
            for name, index in (("one", one), ("set", sharded)):
                w, c = timed(index.search, queries, args.k)
                batch[name][0] += w
                batch[name][1] += c
        total = args.rounds * args.queries
        load = os.getloadavg()[0]
        print(f"{args.n} random {args.bits}-bit codes, {args.queries} queries x {args.rounds} rounds, top-{args.k}, "
              f"{os.cpu_count()} CPUs, load average {load:.1f}; results equal (k={args.k} and k=1000): yes")
        print(f"build (wall): one index {build_one:.1f} s, {args.shards} shards {build_set:.1f} s")
        print("| mode | one index q/s | shard set q/s | set / one | CPU s per query, one / set |")
        print("|---|---:|---:|---:|---:|")
        for mode, times in (("one query per call", single), (f"{args.queries} queries per call", batch)):
            qps_one, qps_set = total / times["one"][0], total / times["set"][0]
            print(f"| {mode} | {qps_one:,.0f} | {qps_set:,.0f} | {qps_set / qps_one:.2f} | "
                  f"{1e3 * times['one'][1] / total:.2f} ms / {1e3 * times['set'][1] / total:.2f} ms |")


if __name__ == "__main__":
    main()
