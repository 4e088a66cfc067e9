"""Evaluation of binary codes: Hamming ranking, mAP@K (DUCH reference + standard), P@K, PR curves, reports.

Pure numpy (matplotlib only for the plots in :func:`write_report`), so evaluation never needs
TensorFlow and gives the same numbers on any machine. Rankings break ties by database index.
"""

from tfduch.eval.metrics import (
    DIRECTIONS,
    DirectionResult,
    PRCurve,
    RetrievalReport,
    direction_metrics,
    evaluate_retrieval,
    map_at_k,
    precision_at_k_curve,
    precision_recall_curve,
    relevance_matrix,
)
from tfduch.eval.ranking import (
    as_pm1_codes,
    hamming_distances,
    hamming_distances_packed,
    hamming_rank,
    pack_codes,
    unpack_codes,
)
from tfduch.eval.report import markdown_table, write_report

__all__ = [
    "DIRECTIONS",
    "DirectionResult",
    "PRCurve",
    "RetrievalReport",
    "as_pm1_codes",
    "direction_metrics",
    "evaluate_retrieval",
    "hamming_distances",
    "hamming_distances_packed",
    "hamming_rank",
    "map_at_k",
    "markdown_table",
    "pack_codes",
    "precision_at_k_curve",
    "precision_recall_curve",
    "relevance_matrix",
    "unpack_codes",
    "write_report",
]
