"""Search speed of the archive index on 1M codes: our backends beside faiss ``IndexBinaryFlat``, one thread.

    python bench/search_speed.py [--n 1000000] [--queries 300] [--k 20] [--rounds 3] [--hnsw]

Two databases of 64-bit codes: uniformly random codes (the worst case for every index: the 20th
neighbour is ~16 bits away) and codes shaped like learned ones — perturbed cluster centres (``--clusters``
centres, each bit of a member flipped with probability ``--flip``), queried with fresh members.

For each method: queries/s answering one query per call (the latency an interactive search sees) and
with all queries in one call, and the ratio to ``IndexBinaryFlat`` measured in the same run. Times are
CPU seconds of this (single-threaded) process, summed over ``--rounds`` with the methods interleaved query
by query, so the load of other processes on a shared machine neither counts nor favours a method;
recall@k against the exact ranking, build time and memory per item (heap bytes the structure allocates,
from glibc's ``mallinfo2``, plus the 8-byte codes where it searches the stored code array in place).

Recall is tie-aware: the share of returned items no farther than the exact k-th distance (with many codes
at that distance, which of them is returned is a tie-break, not an error). Our ``flat`` and ``mih``
return exactly the (distance, id) ranking of :mod:`tfduch.eval`; the table checks it.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import time
from collections.abc import Callable
from typing import Any

import faiss
import numpy as np

from tfduch.eval import hamming_rank, markdown_table, unpack_codes
from tfduch.index import HammingIndex

#: CPU seconds of this process: on a shared machine wall time measures the neighbours' load, CPU time our work.
CLOCK = time.process_time


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]


_LIBC = ctypes.CDLL("libc.so.6")
_LIBC.mallinfo2.restype = _MallInfo2


def heap_bytes() -> int:
    """Bytes allocated through malloc and still in use (numpy arrays and faiss structures both use it)."""
    info = _LIBC.mallinfo2()
    return info.uordblks + info.hblkhd


def random_codes(rng: np.random.Generator, n: int, bits: int) -> np.ndarray:
    return rng.integers(0, 256, (n, bits // 8), dtype=np.uint8)


def clustered_codes(rng: np.random.Generator, centres: np.ndarray, n: int, flip: float) -> np.ndarray:
    """Packed members of random centres (packed), each bit flipped with probability ``flip``."""
    members = centres[rng.integers(0, len(centres), n)]
    bits = centres.shape[1] * 8
    noise = np.packbits(rng.random((n, bits), dtype=np.float32) < flip, axis=1)
    return members ^ noise


def exact_reference(db: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The (distance, id)-ordered top k of :func:`tfduch.eval.ranking.hamming_rank` (numpy, no faiss)."""
    bits = db.shape[1] * 8
    ids = hamming_rank(unpack_codes(queries, bits), unpack_codes(db, bits), topk=k)
    return ids, distances_of(db, queries, ids)


def distances_of(db: np.ndarray, queries: np.ndarray, ids: np.ndarray) -> np.ndarray:
    rows = db[np.maximum(ids, 0)]
    dist = np.bitwise_count(rows ^ queries[:, None, :]).sum(axis=-1, dtype=np.int32)
    return np.where(ids < 0, np.iinfo(np.int32).max, dist)


def _empty_payloads(n: int) -> Any:
    from tfduch.index.payload import PayloadStore

    return PayloadStore(np.zeros(0, np.uint8), np.zeros(n + 1, np.int64))


def recall(dist: np.ndarray, ref_dist: np.ndarray) -> float:
    return float(np.mean(dist <= ref_dist[:, -1:]))


def run_case(name: str, db: np.ndarray, queries: np.ndarray, args: argparse.Namespace) -> list[dict[str, Any]]:
    n, k, bits = len(db), args.k, db.shape[1] * 8
    ref_ids, ref_dist = exact_reference(db, queries, k)
    payloads = _empty_payloads(n)
    methods: dict[str, dict[str, Any]] = {}

    def add_method(label: str, build: Callable[[], Any], search: Callable[[Any], Callable[[np.ndarray], Any]],
                   result: Callable[[Any, np.ndarray], tuple[np.ndarray, np.ndarray]], shares_codes: bool) -> None:
        """``shares_codes``: the structure searches the benchmark's code array in place (count its bytes)."""
        gc.collect()
        before = heap_bytes()
        start = time.perf_counter()
        obj = build()
        mem = (heap_bytes() - before) / n + (db.shape[1] if shares_codes else 0)
        methods[label] = {"obj": obj, "build_s": time.perf_counter() - start, "mem": mem, "fn": search(obj),
                          "result": result}

    def faiss_flat() -> Any:
        index = faiss.IndexBinaryFlat(bits)
        index.add(db)
        return index

    add_method("faiss IndexBinaryFlat", faiss_flat, lambda ix: lambda q: ix.search(q, k),
               lambda ix, q: ix.search(q, k)[::-1], shares_codes=False)

    def ours(backend: str, **params: Any) -> Callable[[], Any]:
        def build() -> Any:
            return HammingIndex(bits, backend, codes=db, ids=np.arange(n, dtype=np.int64), payloads=payloads,
                                **params)
        return build

    backends = [("tfduch flat (default, exact ties)", "flat", {}),
                (f"tfduch mih (exact, {args.nhash} tables)", "mih", {"nhash": args.nhash, "max_nflip": 2}),
                (f"tfduch ivf (nlist={args.nlist}, nprobe=2)", "ivf", {"nlist": args.nlist, "nprobe": 2}),
                (f"tfduch ivf (nlist={args.nlist}, nprobe=8)", "ivf", {"nlist": args.nlist, "nprobe": 8})]
    if args.hnsw:
        backends.append(("tfduch hnsw (M=16, ef=64)", "hnsw", {"m": 16, "ef_construction": 40, "ef_search": 64}))
    for label, backend, params in backends:
        add_method(label, ours(backend, **params), lambda ix: lambda q: ix.search(q, k),
                   lambda ix, q: ix.search(q, k), shares_codes=True)

    order = list(methods.values())
    for m in order:
        m["fn"](queries[:5])  # warm-up
        m["single"], m["batch"] = 0.0, 0.0
    for r in range(args.rounds):
        for i in range(len(queries)):  # one query per call, methods interleaved query by query
            q = queries[i : i + 1]
            for m in order[(i + r) % len(order):] + order[: (i + r) % len(order)]:
                start = CLOCK()
                m["fn"](q)
                m["single"] += CLOCK() - start
        for m in order:
            start = CLOCK()
            m["fn"](queries)
            m["batch"] += CLOCK() - start
    total = args.rounds * len(queries)
    base = methods["faiss IndexBinaryFlat"]
    base_single, base_batch = total / base["single"], total / base["batch"]
    rows = []
    for label, m in methods.items():
        ids, _ = m["result"](m["obj"], queries)
        dist = distances_of(db, queries, ids)
        qps_single, qps_batch = total / m["single"], total / m["batch"]
        rows.append({
            "database": name, "method": label,
            "q/s 1-by-1": qps_single, "ratio": qps_single / base_single,
            "q/s batch": qps_batch, "ratio batch": qps_batch / base_batch,
            f"recall@{k}": recall(dist, ref_dist),
            "= eval ranking": bool(np.array_equal(ids, ref_ids) and np.array_equal(dist, ref_dist)),
            "build s (wall)": m["build_s"], "B/item": m["mem"],
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="database size")
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds (summed)")
    parser.add_argument("--clusters", type=int, default=1000, help="cluster centres of the learned-like set")
    parser.add_argument("--flip", type=float, default=0.06, help="bit-flip probability around a centre")
    parser.add_argument("--nhash", type=int, default=4, help="mih: hash tables (substrings of bits/nhash bits)")
    parser.add_argument("--nlist", type=int, default=1024, help="ivf: inverted lists")
    parser.add_argument("--hnsw", action="store_true", help="also build HNSW (several minutes for 1M codes)")
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(0)
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    rows += run_case("random", random_codes(rng, args.n, args.bits), random_codes(rng, args.queries, args.bits),
                     args)
    centres = random_codes(rng, args.clusters, args.bits)
    rows += run_case(f"clustered ({args.clusters} centres, flip {args.flip})",
                     clustered_codes(rng, centres, args.n, args.flip),
                     clustered_codes(rng, centres, args.queries, args.flip), args)
    print(f"\n{args.n:,} codes of {args.bits} bits, {args.queries} queries × {args.rounds} rounds, top-{args.k}, "
          f"1 thread, CPU time ({time.perf_counter() - t0:.0f} s wall in all)\n")
    print(markdown_table(rows, list(rows[0]), floatfmt=".3g"))


if __name__ == "__main__":
    main()
