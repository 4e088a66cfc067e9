"""UCM end to end through the search path: index the database images, query with the test captions.

    python bench/search_e2e_ucm.py --run RUN_DIR [--data ../shared/data/ucm_captions] [--out DIR]

1. ``tfduch index build --run RUN --images DATA --split database`` encodes the 840 database images of the
   run's protocol split from their files (and their captions) into an index;
2. ``tfduch search --queries Q.txt --target image -k 840 --json`` answers the 210 query captions (one
   per query image, the protocol's caption choice) with the full ranking of the database;
3. mAP@20 is computed from those rankings and compared with :func:`tfduch.eval.map_at_k` on the same
   codes (the index's image codes, the captions' codes): the numbers and the rankings must be equal.

Also reported: how many bits of the index codes (images encoded from their files) agree with the codes
the run evaluated (from cached features), and the run's own t2i mAP@20 from ``metrics.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def tfduch(*args: str) -> str:
    """Run the CLI as a user would; returns stdout (raises on a non-zero exit)."""
    done = subprocess.run([sys.executable, "-m", "tfduch.cli", *args], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"tfduch {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def ap_reference(relevant_in_order: np.ndarray, k: int) -> float:
    """DUCH's calc_map_k for one query from its full ranking (see tfduch.eval.metrics)."""
    hits = np.flatnonzero(relevant_in_order)[:k]
    return float(np.mean(np.arange(1, len(hits) + 1) / (hits + 1))) if len(hits) else 0.0


def ap_standard(relevant_in_order: np.ndarray, k: int) -> float:
    top = relevant_in_order[:k]
    if not top.any():
        return 0.0
    return float(np.mean((np.cumsum(top) / np.arange(1, k + 1))[top]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, type=Path, help="trained 64-bit UCM run (tfduch train)")
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "data"
                        / "ucm_captions")
    parser.add_argument("--out", type=Path, help="folder for the index and the query file (default: a temp dir)")
    parser.add_argument("--k", type=int, default=20)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="tfduch_e2e_"))
    out.mkdir(parents=True, exist_ok=True)

    from tfduch.data.karpathy import load_dataset
    from tfduch.data.split import ProtocolSplit
    from tfduch.eval import map_at_k
    from tfduch.index import load_index

    split_file = sorted(args.run.glob("split-seed*.json"))[0]
    split = ProtocolSplit.load(split_file)
    dataset = load_dataset(args.data)
    labels = dataset.labels
    # one query per line: whitespace is collapsed (the tokenizer splits on it anyway), for both paths alike
    queries = [" ".join(q.split()) for q in dataset.captions_of(split.query, split.caption_choice)]
    (out / "queries.txt").write_text("\n".join(queries) + "\n", encoding="utf-8")

    index_path = out / "ucm_database.tfidx"
    t0 = time.perf_counter()
    tfduch("index", "build", "--run", str(args.run), "--images", str(args.data), "--split", "database",
           "--split-file", str(split_file), "--out", str(index_path), "--overwrite", "--quiet")
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    answers = json.loads(tfduch("search", "--queries", str(out / "queries.txt"), "--index", str(index_path),
                                "--target", "image", "-k", str(len(split.database)), "--json"))
    search_s = time.perf_counter() - t0
    assert len(answers) == len(queries), (len(answers), len(queries))

    index = load_index(index_path)
    images = index.collection("image")
    path_to_item = {str(s.path): i for i, s in enumerate(dataset.samples)}
    db_items = np.array([path_to_item[images.payload(int(i))["path"]] for i in images.ids])
    assert np.array_equal(db_items, split.database), "index order must follow the split's database order"
    db_labels, q_labels = labels[split.database], labels[split.query]

    # mAP from the search results (ids are positions in the database order: ids 0..839)
    rankings = np.array([[r["id"] for r in a["results"]] for a in answers])
    rel = db_labels[rankings] == q_labels[:, None]
    map_search = np.mean([ap_reference(r, args.k) for r in rel])
    map_search_std = np.mean([ap_standard(r, args.k) for r in rel])

    # the evaluation module on the same codes
    from tfduch.index.encoders import RunEncoder

    encoder = RunEncoder(args.run)
    q_codes = encoder.encode_texts(queries)
    db_codes = np.unpackbits(np.asarray(images.codes), axis=1).astype(np.int8) * 2 - 1
    map_eval = map_at_k(q_codes, db_codes, q_labels, db_labels, k=args.k)
    map_eval_std = map_at_k(q_codes, db_codes, q_labels, db_labels, k=args.k, definition="standard")
    from tfduch.eval import hamming_rank

    same_ranking = bool(np.array_equal(hamming_rank(q_codes, db_codes), rankings))

    # the codes the run evaluated (cached features) vs the index (images encoded from files)
    from tfduch.pipeline import encode_retrieval_sets, prepare

    prep = prepare(encoder.cfg, progress=False)
    run_codes = encode_retrieval_sets(encoder.model, prep)
    image_bits = float(np.mean(run_codes["database_image"] == db_codes))
    text_bits = float(np.mean(run_codes["query_text"] == q_codes))
    map_run_codes = map_at_k(run_codes["query_text"], run_codes["database_image"], q_labels, db_labels, k=args.k)
    metrics = json.loads((args.run / "metrics.json").read_text())["directions"]["t2i"]

    print(f"\nUCM t2i through the search path: {len(queries)} caption queries, {len(db_items)} database images "
          f"({index.bits}-bit codes, model {index.model_id})")
    print(f"  index build {build_s:.0f} s (encode {len(db_items)} images + {len(index.collection('text'))} "
          f"captions), 210 searches {search_s:.0f} s incl. loading the model")
    print(f"  mAP@{args.k} (reference) from `tfduch search`: {map_search:.6f}")
    print(f"  mAP@{args.k} (reference) tfduch.eval, same codes: {map_eval:.6f}  equal: {map_search == map_eval}")
    print(f"  mAP@{args.k} (standard)  search {map_search_std:.6f} / eval {map_eval_std:.6f}  "
          f"equal: {map_search_std == map_eval_std}")
    print(f"  full rankings identical to tfduch.eval.hamming_rank: {same_ranking}")
    print(f"  bits equal to the run's evaluated codes: images {image_bits:.5f}, captions {text_bits:.5f}")
    print(f"  mAP@{args.k} on the run's evaluated codes: {map_run_codes:.6f} (metrics.json t2i: "
          f"{metrics['map_reference']:.6f})")
    ok = same_ranking and map_search == map_eval and map_search_std == map_eval_std
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
