"""Tests of tfduch.eval: Hamming ranking, both mAP@K definitions, P@K, PR curves and reports."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from tfduch.eval import (
    RetrievalReport,
    as_pm1_codes,
    evaluate_retrieval,
    hamming_distances,
    hamming_distances_packed,
    hamming_rank,
    map_at_k,
    markdown_table,
    pack_codes,
    precision_at_k_curve,
    precision_recall_curve,
    relevance_matrix,
    unpack_codes,
    write_report,
)
from tfduch.eval.metrics import direction_metrics

# ---------------------------------------------------------------------------------- brute-force oracle


def _bf_dist(q: np.ndarray, db: np.ndarray) -> np.ndarray:
    return np.array([[int(np.sum(a != b)) for b in db] for a in q])


def _bf_rel(ql: np.ndarray, dbl: np.ndarray) -> np.ndarray:
    if ql.ndim == 1:
        return np.array([[a == b for b in dbl] for a in ql])
    return np.array([[bool(np.any((a > 0) & (b > 0))) for b in dbl] for a in ql])


def _bf_order(dist_row: np.ndarray) -> list[int]:
    # Sort by (distance, database index): the documented tie-breaking.
    return sorted(range(len(dist_row)), key=lambda j: (dist_row[j], j))


def _bf_map(q, db, ql, dbl, k, definition):
    dist, rel = _bf_dist(q, db), _bf_rel(ql, dbl)
    aps = []
    for i in range(len(q)):
        ranked = [bool(rel[i, j]) for j in _bf_order(dist[i])]
        if definition == "reference":  # DUCH calc_map_k, written as in the paper's code
            n_rel = sum(ranked)
            if n_rel == 0:
                aps.append(0.0)
                continue
            total = min(k, n_rel)
            positions = [p + 1 for p, r in enumerate(ranked) if r][:total]
            aps.append(float(np.mean([(j + 1) / p for j, p in enumerate(positions)])))
        else:
            precisions, hits = [], 0
            for p, r in enumerate(ranked[:k]):
                if r:
                    hits += 1
                    precisions.append(hits / (p + 1))
            aps.append(float(np.mean(precisions)) if precisions else 0.0)
    return float(np.mean(aps))


def _bf_p_at_k(q, db, ql, dbl, ks):
    dist, rel = _bf_dist(q, db), _bf_rel(ql, dbl)
    out = []
    for k in ks:
        kk = min(k, db.shape[0])
        out.append(np.mean([sum(rel[i, j] for j in _bf_order(dist[i])[:kk]) / kk for i in range(len(q))]))
    return np.array(out)


def _bf_pr(q, db, ql, dbl):
    dist, rel = _bf_dist(q, db), _bf_rel(ql, dbl)
    n_bits = q.shape[1]
    prec, rec = [], []
    for r in range(n_bits + 1):
        ps = [rel[i][dist[i] <= r].mean() for i in range(len(q)) if np.any(dist[i] <= r)]
        rs = [rel[i][dist[i] <= r].sum() / rel[i].sum() for i in range(len(q)) if rel[i].sum() > 0]
        prec.append(np.mean(ps) if ps else np.nan)
        rec.append(np.mean(rs) if rs else np.nan)
    return np.array(prec), np.array(rec)


def _random_problem(seed: int, n_q=13, n_db=41, n_bits=6, n_classes=4, multi_hot=False):
    # Few bits on purpose: many equal distances, so tie-breaking is exercised.
    rng = np.random.default_rng(seed)
    q = rng.choice(np.array([-1, 1], np.int8), size=(n_q, n_bits))
    db = rng.choice(np.array([-1, 1], np.int8), size=(n_db, n_bits))
    if multi_hot:
        ql = (rng.random((n_q, n_classes)) < 0.3).astype(np.int64)
        dbl = (rng.random((n_db, n_classes)) < 0.3).astype(np.int64)
    else:
        ql = rng.integers(0, n_classes + 1, n_q)  # class n_classes may be absent from the db
        dbl = rng.integers(0, n_classes, n_db)
    return q, db, ql, dbl


# --------------------------------------------------------------------------------------- hand-worked


# One query q = ++++ and five database codes (4 bits) at Hamming distances 2, 0, 1, 1, 3.
# Ranking with ties by index: item1 (d0), item2 (d1), item3 (d1), item0 (d2), item4 (d3).
# Labels make the ranked relevance [yes, no, yes, no, yes] (item2 and item3 tie: the order matters).
HAND_Q = np.array([[1, 1, 1, 1]], np.int8)
HAND_DB = np.array([[-1, -1, 1, 1], [1, 1, 1, 1], [-1, 1, 1, 1], [1, -1, 1, 1], [-1, -1, -1, 1]], np.int8)
HAND_QL = np.array([0])
HAND_DBL = np.array([1, 0, 1, 0, 0])


def test_hand_worked_distances_and_ranking():
    assert hamming_distances(HAND_Q, HAND_DB).tolist() == [[2, 0, 1, 1, 3]]
    assert hamming_rank(HAND_Q, HAND_DB).tolist() == [[1, 2, 3, 0, 4]]
    assert hamming_rank(HAND_Q, HAND_DB, topk=3).tolist() == [[1, 2, 3]]


@pytest.mark.parametrize(
    ("k", "definition", "expected"),
    [
        # reference: relevant hits at positions 1, 3, 5 of the full ranking; R = 3.
        (1, "reference", 1.0),  # m = 1: 1/1
        (2, "reference", (1 / 1 + 2 / 3) / 2),  # m = 2: 5/6, looks past position 2
        (5, "reference", (1 / 1 + 2 / 3 + 3 / 5) / 3),  # m = 3: 34/45
        (50, "reference", 34 / 45),  # k beyond R: same as k = R
        # standard: only the top-k list counts.
        (1, "standard", 1.0),  # [yes]: P@1 = 1
        (2, "standard", 1.0),  # [yes, no]: one hit, P@1 = 1
        (4, "standard", (1 / 1 + 2 / 3) / 2),  # [yes, no, yes, no]: 5/6
        (5, "standard", 34 / 45),  # whole list
    ],
)
def test_hand_worked_map(k, definition, expected):
    assert map_at_k(HAND_Q, HAND_DB, HAND_QL, HAND_DBL, k=k, definition=definition) == pytest.approx(expected)


def test_query_without_relevant_items_counts_as_zero():
    # A second query of class 7 (absent from the db): AP 0, but it stays in the denominator.
    q = np.concatenate([HAND_Q, HAND_Q])
    ql = np.array([0, 7])
    for definition, single in [("reference", 5 / 6), ("standard", 1.0)]:
        assert map_at_k(q, HAND_DB, ql, HAND_DBL, k=2, definition=definition) == pytest.approx(single / 2)
    # No query has a relevant item at all: mAP is 0, not NaN.
    assert map_at_k(HAND_Q, HAND_DB, np.array([9]), HAND_DBL, k=3) == 0.0


def test_hand_worked_p_at_k_and_pr():
    # Ranked relevance [1, 0, 1, 0, 1]: P@1 = 1, P@2 = 1/2, P@3 = 2/3, P@5 = 3/5; k = 9 is clipped to 5.
    p = precision_at_k_curve(HAND_Q, HAND_DB, HAND_QL, HAND_DBL, ks=(1, 2, 3, 5, 9))
    np.testing.assert_allclose(p, [1, 1 / 2, 2 / 3, 3 / 5, 3 / 5])
    # Within radius r: r0 {item1}, r1 {+item2, item3}, r2 {+item0}, r3 {+item4}, r4 same.
    pr = precision_recall_curve(HAND_Q, HAND_DB, HAND_QL, HAND_DBL)
    np.testing.assert_array_equal(pr.radius, [0, 1, 2, 3, 4])
    np.testing.assert_allclose(pr.precision, [1, 2 / 3, 2 / 4, 3 / 5, 3 / 5])
    np.testing.assert_allclose(pr.recall, [1 / 3, 2 / 3, 2 / 3, 1, 1])


# ------------------------------------------------------------------------------- ranking properties


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_distances_match_brute_force_and_packed(seed):
    rng = np.random.default_rng(seed)
    for n_bits in (13, 64, 128):
        q = rng.choice(np.array([-1, 1], np.int8), size=(7, n_bits))
        db = rng.choice(np.array([-1, 1], np.int8), size=(30, n_bits))
        expected = _bf_dist(q, db)
        d = hamming_distances(q, db, block_elements=50)  # several blocks
        assert d.dtype == np.int32
        np.testing.assert_array_equal(d, expected)
        np.testing.assert_array_equal(hamming_distances_packed(pack_codes(q), pack_codes(db), 100), expected)


def test_pack_unpack_roundtrip():
    rng = np.random.default_rng(3)
    codes = rng.choice(np.array([-1, 1], np.int8), size=(9, 13))
    packed = pack_codes(codes)
    assert packed.dtype == np.uint8 and packed.shape == (9, 2)
    np.testing.assert_array_equal(unpack_codes(packed, 13), codes)
    with pytest.raises(ValueError):
        unpack_codes(packed, 17)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_ranking_ties_broken_by_index(seed):
    q, db, _, _ = _random_problem(seed, n_q=9, n_db=60, n_bits=4)
    dist = hamming_distances(q, db)
    full = hamming_rank(q, db, block_elements=70)
    for i in range(q.shape[0]):
        np.testing.assert_array_equal(full[i], np.lexsort((np.arange(db.shape[0]), dist[i])))
    for topk in (1, 5, 17, 60, 100):
        np.testing.assert_array_equal(hamming_rank(q, db, topk=topk, block_elements=70),
                                      full[:, : min(topk, 60)])


def test_identical_database_codes_keep_index_order():
    db = np.tile(np.array([[1, -1, 1]], np.int8), (6, 1))
    assert hamming_rank(db[:2], db).tolist() == [list(range(6))] * 2
    assert hamming_rank(db[:1], db, topk=4).tolist() == [[0, 1, 2, 3]]


def test_code_conversion_rule():
    bits = np.array([[1, 0, 1]])
    np.testing.assert_array_equal(as_pm1_codes(bits), [[1, -1, 1]])
    np.testing.assert_array_equal(as_pm1_codes(bits.astype(bool)), [[1, -1, 1]])
    np.testing.assert_array_equal(as_pm1_codes(bits.astype(np.float32)), [[1, -1, 1]])
    np.testing.assert_array_equal(as_pm1_codes(np.array([[0.3, 0.0, -0.2]])), [[1, 1, -1]])  # sign, 0 → +1
    assert as_pm1_codes(np.array([[-1, 1]])).dtype == np.int8
    with pytest.raises(ValueError):
        as_pm1_codes(np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError):
        hamming_distances(np.ones((2, 8)), np.ones((2, 16)))


# ------------------------------------------------------------------------- vectorised vs brute force


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("multi_hot", [False, True])
def test_metrics_match_brute_force(seed, multi_hot):
    q, db, ql, dbl = _random_problem(seed, multi_hot=multi_hot)
    for k in (1, 3, 10, 41, 60):
        for definition in ("reference", "standard"):
            got = map_at_k(q, db, ql, dbl, k=k, definition=definition)
            assert got == pytest.approx(_bf_map(q, db, ql, dbl, k, definition), abs=1e-12), (k, definition)
    ks = (1, 2, 5, 10, 41, 50)
    np.testing.assert_allclose(precision_at_k_curve(q, db, ql, dbl, ks), _bf_p_at_k(q, db, ql, dbl, ks))
    pr = precision_recall_curve(q, db, ql, dbl)
    bf_prec, bf_rec = _bf_pr(q, db, ql, dbl)
    np.testing.assert_allclose(pr.precision, bf_prec)
    np.testing.assert_allclose(pr.recall, bf_rec)
    # One pass with small blocks gives the same numbers.
    res = direction_metrics(q, db, ql, dbl, k=10, ks=ks, block_elements=45)
    assert res.map_reference == pytest.approx(_bf_map(q, db, ql, dbl, 10, "reference"))
    assert res.map_standard == pytest.approx(_bf_map(q, db, ql, dbl, 10, "standard"))


def test_relevance_matrix_multi_hot():
    ql = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 0]])
    dbl = np.array([[1, 1, 0], [0, 0, 1], [0, 0, 0]])
    assert relevance_matrix(ql, dbl).tolist() == [[True, False, False], [True, True, False],
                                                  [False, False, False]]
    with pytest.raises(ValueError):
        relevance_matrix(np.array([0, 1]), dbl)
    # Single labels may be class names or integral floats as well as ints.
    assert relevance_matrix(np.array(["a", "b"]), np.array(["b", "b", "a"])).tolist() == [
        [False, False, True], [True, True, False]]
    assert relevance_matrix(np.array([1.0]), np.array([1, 2])).tolist() == [[True, False]]


# ------------------------------------------------------------------------------ limiting behaviour


def test_perfect_codes_give_map_one():
    rng = np.random.default_rng(0)
    class_codes = np.array([[1, 1, 1, 1, 1, 1], [-1, -1, -1, 1, 1, 1], [1, -1, 1, -1, 1, -1]], np.int8)
    ql, dbl = rng.integers(0, 3, 30), np.repeat(np.arange(3), 40)
    q, db = class_codes[ql], class_codes[dbl]
    for definition in ("reference", "standard"):
        assert map_at_k(q, db, ql, dbl, k=20, definition=definition) == pytest.approx(1.0)
        assert map_at_k(q, db, ql, dbl, k=None, definition=definition) == pytest.approx(1.0)
    np.testing.assert_allclose(precision_at_k_curve(q, db, ql, dbl, (1, 10, 40)), 1.0)


def test_random_codes_on_balanced_classes_give_chance():
    rng = np.random.default_rng(0)
    n_classes = 4
    q = rng.choice(np.array([-1, 1], np.int8), size=(300, 64))
    db = rng.choice(np.array([-1, 1], np.int8), size=(2000, 64))
    ql, dbl = rng.integers(0, n_classes, 300), np.repeat(np.arange(n_classes), 500)
    assert map_at_k(q, db, ql, dbl, k=None) == pytest.approx(1 / n_classes, abs=0.02)
    assert precision_at_k_curve(q, db, ql, dbl, (100,))[0] == pytest.approx(1 / n_classes, abs=0.02)


def test_pr_curve_properties():
    q, db, ql, dbl = _random_problem(5, n_q=40, n_db=200, n_bits=16)
    pr = precision_recall_curve(q, db, ql, dbl)
    rec = pr.recall
    assert np.all(np.diff(rec) >= -1e-12), "recall must not decrease with the radius"
    assert rec[-1] == pytest.approx(1.0)
    # At radius K everything is retrieved: precision = mean fraction of relevant items in the db.
    rel = relevance_matrix(ql, dbl)
    assert pr.precision[-1] == pytest.approx(rel.mean(axis=1).mean())


# --------------------------------------------------------------------------- evaluate_retrieval / report


def _paired_codes(seed=0, n_q=210, n_db=840, n_bits=128, n_classes=21, noise=0.3):
    rng = np.random.default_rng(seed)
    centres = rng.choice(np.array([-1, 1], np.int8), size=(n_classes, n_bits))
    ql, dbl = rng.integers(0, n_classes, n_q), rng.integers(0, n_classes, n_db)

    def noisy(labels):
        flip = rng.random((labels.shape[0], n_bits)) < noise
        return np.where(flip, -centres[labels], centres[labels]).astype(np.int8)

    return noisy(ql), noisy(ql), noisy(dbl), noisy(dbl), ql, dbl


def test_evaluate_retrieval_directions_and_speed():
    img_q, txt_q, img_db, txt_db, ql, dbl = _paired_codes()
    evaluate_retrieval(img_q, txt_q, img_db, txt_db, ql, dbl)  # warm-up
    start = time.perf_counter()
    report = evaluate_retrieval(img_q, txt_q, img_db, txt_db, ql, dbl, k=20)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"evaluate_retrieval took {elapsed:.2f}s on 210x840x128"
    assert list(report.directions) == ["i2t", "t2i", "i2i", "t2t"]
    assert (report.n_bits, report.n_query, report.n_database, report.k) == (128, 210, 840, 20)
    assert report.directions["i2t"].map_reference == pytest.approx(
        map_at_k(img_q, txt_db, ql, dbl, k=20, definition="reference"))
    assert report.directions["t2i"].map_standard == pytest.approx(
        map_at_k(txt_q, img_db, ql, dbl, k=20, definition="standard"))
    for r in report.directions.values():
        assert r.map_reference > 0.5 and r.p_at_k.shape == (6,) and r.pr.recall.shape == (129,)
    sub = evaluate_retrieval(img_q, txt_q, img_db, txt_db, ql, dbl, directions=("t2i",))
    assert list(sub.directions) == ["t2i"]
    with pytest.raises(ValueError):
        evaluate_retrieval(img_q, txt_q, img_db, txt_db, ql, dbl, directions=("x2y",))


def _table_ok(lines: list[str]) -> None:
    assert len(lines) >= 3
    n_cells = lines[0].count("|")
    assert all(line.startswith("| ") and line.endswith(" |") for line in lines)
    assert all(line.replace("\\|", "").count("|") == n_cells for line in lines)
    assert set(lines[1].replace("|", "").replace(" ", "")) <= set(":-")


def test_write_report(tmp_path):
    img_q, txt_q, img_db, txt_db, ql, dbl = _paired_codes(n_q=30, n_db=90, n_bits=32, n_classes=5)
    report = evaluate_retrieval(img_q, txt_q, img_db, txt_db, ql, dbl, k=10, ks=(1, 5, 10))
    paths = write_report(report, tmp_path / "out", title="unit test")
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"metrics.json", "metrics.md", "pr_curve.png",
                                                              "p_at_k.png"}
    for name in ("pr_curve", "p_at_k"):
        assert paths[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(paths["json"].read_text())
    assert data["title"] == "unit test" and data["n_bits"] == 32
    again = RetrievalReport.from_dict(data)
    for name, r in report.directions.items():
        assert again.directions[name].map_reference == pytest.approx(r.map_reference)
        np.testing.assert_allclose(again.directions[name].pr.precision, r.pr.precision)
    md = paths["markdown"].read_text()
    assert md.startswith("# unit test\n")
    tables = [block.strip().splitlines() for block in md.split("\n\n") if block.startswith("|")]
    assert len(tables) == 2
    for table in tables:
        _table_ok(table)
    assert "mAP@10 (reference)" in tables[0][0] and len(tables[0]) == 2 + 4
    assert f"{report.directions['i2t'].map_reference:.4f}" in tables[0][2]
    # Rewriting over existing files works and leaves no temporaries behind.
    write_report(report, tmp_path / "out", plots=False)
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


def test_markdown_table_formatting():
    text = markdown_table([{"method": "a|b", "map": 0.123456, "bits": 16}, {"method": "c", "map": None}],
                          ["method", ("map", "mAP@20"), "bits"])
    lines = text.strip().splitlines()
    _table_ok(lines)
    assert lines[0] == "| method | mAP@20 | bits |"
    assert lines[1] == "| :--- | ---: | ---: |"
    assert lines[2] == "| a\\|b | 0.1235 | 16 |"
    assert lines[3] == "| c |  |  |"


def test_invalid_arguments():
    with pytest.raises(ValueError):
        map_at_k(HAND_Q, HAND_DB, HAND_QL, HAND_DBL, k=0)
    with pytest.raises(ValueError):
        map_at_k(HAND_Q, HAND_DB, HAND_QL, HAND_DBL, k=3, definition="other")
    with pytest.raises(ValueError):
        map_at_k(HAND_Q, HAND_DB, HAND_QL, HAND_DBL[:3], k=3)
