"""Milvus (BIN_FLAT, BIN_IVF_FLAT) vs the faiss ``flat`` file index over the same codes: queries/s and recall.

    python bench/milvus_search.py [--n 1000000] [--bits 64] [--queries 200] [--k 20] [--nlist 1024] [--nprobe 16 64]

Draws ``--n`` clustered 64-bit codes (``--centres`` centres, each bit flipped with probability 0.1, and 10 %
uniform codes: learned codes are clustered, which is what IVF needs), indexes them in the flat file index and
in two Milvus archives (``BIN_FLAT`` and ``BIN_IVF_FLAT``) on the server ``$TFDUCH_MILVUS_URI`` or the
embedded one, flushes them (the code index is built before timing), and times top-``--k`` searches of
``--queries`` queries two ways: all queries in one call (throughput) and one query per call (interactive).
BIN_FLAT answers are asserted equal (ids and distances) to the flat backend's; BIN_IVF_FLAT recall@k is the
mean overlap of its top-k ids with the exact top-k. Ratios are against the flat backend measured in the same
run; on a shared machine the absolute numbers move with the neighbours' load (printed).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from tfduch.index import ArchiveIndex
from tfduch.index.milvus import MilvusIndex, MilvusTarget


def codes(n: int, bits: int, centres: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.integers(0, 2, (centres, bits), dtype=np.uint8)
    out = c[rng.integers(0, centres, n)] ^ (rng.random((n, bits)) < 0.1).astype(np.uint8)
    out[:: 10] = rng.integers(0, 2, (len(out[:: 10]), bits), dtype=np.uint8)
    return np.packbits(out, axis=1)


def rate(fn, queries: np.ndarray, k: int, one_by_one: bool) -> tuple[float, object]:
    start = time.perf_counter()
    if one_by_one:
        res = [fn(q[None], k) for q in queries]
        out = (np.concatenate([r[0] for r in res]), np.concatenate([r[1] for r in res]))
    else:
        out = fn(queries, k)
    return len(queries) / (time.perf_counter() - start), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--bits", type=int, default=64)
    ap.add_argument("--centres", type=int, default=2000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--nlist", type=int, default=1024)
    ap.add_argument("--nprobe", type=int, nargs="+", default=[16, 64])
    args = ap.parse_args()
    import faiss

    faiss.omp_set_num_threads(1)  # one thread per search, as the server's tests run it: spinning OpenMP teams
    # beside a loaded machine's other processes cost 10-100x (seen in the first run of this script)
    packed = codes(args.n, args.bits, args.centres)
    rng = np.random.default_rng(1)
    queries = packed[rng.integers(0, args.n, args.queries)] ^ (rng.random((args.queries, args.bits // 8)) < 0.02
                                                              ).astype(np.uint8)
    model = {"bits": args.bits, "model_id": "bench"}
    flat = ArchiveIndex.create(args.bits, model, collections=("image",))
    flat.add("image", packed)
    t = time.perf_counter()
    bf = MilvusIndex.create(MilvusTarget.parse("milvus://local/bench_flat"), args.bits, model, overwrite=True,
                            collections=("image",))
    bf.add("image", packed)
    bf.flush()
    load_flat = time.perf_counter() - t
    t = time.perf_counter()
    ivf = MilvusIndex.create(MilvusTarget.parse("milvus://local/bench_ivf"), args.bits, model, overwrite=True,
                             collections=("image",), index_type="BIN_IVF_FLAT", nlist=args.nlist,
                             nprobe=args.nprobe[0])
    ivf.add("image", packed)
    ivf.flush()
    load_ivf = time.perf_counter() - t
    print(f"{args.n} x {args.bits}-bit codes, top-{args.k}, {args.queries} queries; server {bf.client.uri}; "
          f"load+index: BIN_FLAT {load_flat:.1f} s, BIN_IVF_FLAT(nlist={args.nlist}) {load_ivf:.1f} s; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (shared machine)")
    for one in (False, True):
        mode = "one query per call" if one else "all queries in one call"
        base, exact = rate(flat.collection("image").search, queries, args.k, one)
        print(f"\n{mode}:\n  flat (faiss, file index)   {base:9.1f} q/s   1.00x")
        qps, got = rate(bf.collection("image").search, queries, args.k, one)
        assert np.array_equal(got[0], exact[0]) and np.array_equal(got[1], exact[1]), "BIN_FLAT != flat"
        print(f"  Milvus BIN_FLAT            {qps:9.1f} q/s   {qps / base:.2f}x   (ids and distances == flat)")
        for nprobe in args.nprobe:
            ivf.params["nprobe"] = nprobe
            qps, got = rate(ivf.collection("image").search, queries, args.k, one)
            recall = np.mean([len(set(g) & set(w)) / args.k for g, w in zip(got[0], exact[0], strict=True)])
            print(f"  Milvus BIN_IVF_FLAT np={nprobe:<4} {qps:9.1f} q/s   {qps / base:.2f}x   recall@{args.k} "
                  f"{recall:.3f}")
    bf.drop()
    ivf.drop()


if __name__ == "__main__":
    main()
