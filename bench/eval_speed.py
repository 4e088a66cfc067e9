"""Time tfduch.eval on random codes: the UC Merced protocol size and a larger top-k retrieval.

    python bench/eval_speed.py [--repeats 5] [--large-queries 1000 --large-db 100000]

Prints a markdown table (median and best wall time of each case). Random codes only measure speed;
the metric values are meaningless.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from tfduch.eval import (
    evaluate_retrieval,
    hamming_distances,
    hamming_distances_packed,
    hamming_rank,
    markdown_table,
    pack_codes,
)


def _codes(rng: np.random.Generator, n: int, bits: int) -> np.ndarray:
    return rng.choice(np.array([-1, 1], np.int8), size=(n, bits))


def _time(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), float(np.min(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--bits", type=int, default=128)
    parser.add_argument("--large-queries", type=int, default=1000)
    parser.add_argument("--large-db", type=int, default=100_000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows = []

    n_q, n_db, bits = 210, 840, args.bits
    img_q, txt_q, img_db, txt_db = (_codes(rng, n, bits) for n in (n_q, n_q, n_db, n_db))
    ql, dbl = rng.integers(0, 21, n_q), rng.integers(0, 21, n_db)
    med, best = _time(lambda: evaluate_retrieval(img_q, txt_q, img_db, txt_db, ql, dbl), args.repeats)
    rows.append({"case": f"evaluate_retrieval, 4 directions, {n_q}x{n_db}x{bits}", "median_s": med,
                 "best_s": best})

    q, db = _codes(rng, args.large_queries, bits), _codes(rng, args.large_db, bits)
    size = f"{args.large_queries}x{args.large_db}x{bits}"
    qp, dbp = pack_codes(q), pack_codes(db)
    for name, fn in [
        (f"hamming_distances (matmul), {size}", lambda: hamming_distances(q, db)),
        (f"hamming_distances_packed (popcount), {size}", lambda: hamming_distances_packed(qp, dbp)),
        (f"hamming_rank topk=100, {size}", lambda: hamming_rank(q, db, topk=100)),
    ]:
        med, best = _time(fn, max(1, args.repeats // 2))
        rows.append({"case": name, "median_s": med, "best_s": best})
    print(markdown_table(rows, [("case", "case"), ("median_s", "median (s)"), ("best_s", "best (s)")],
                         floatfmt=".3f"))


if __name__ == "__main__":
    main()
