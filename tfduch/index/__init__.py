"""Archive search: persistent Hamming indexes of image and caption codes, searched by text, image or code.

``load_index`` / ``ArchiveIndex`` (:mod:`tfduch.index.store`) hold the collections on disk;
``HammingIndex`` (:mod:`tfduch.index.core`) is one searchable collection; the backends
(:mod:`tfduch.index.backends`) trade exactness, speed and memory; ``Searcher``
(:mod:`tfduch.index.searcher`) ties an index to a ``QueryEncoder`` (:mod:`tfduch.index.encoders`).
``ShardedIndex`` (:mod:`tfduch.index.sharded`) searches a set of index shards as one index, and
``open_index`` opens either kind; :mod:`tfduch.index.from_shards` builds both from ``encode-archive`` output.
"""

from tfduch.index.backends import BACKENDS, Backend, exact_topk, make_backend
from tfduch.index.core import HammingIndex, Hit, as_packed
from tfduch.index.errors import IncompatibleIndexError, IndexFileError, SearchError
from tfduch.index.sharded import ShardedIndex, open_index
from tfduch.index.store import COLLECTIONS, ArchiveIndex, load_index

__all__ = [
    "BACKENDS",
    "COLLECTIONS",
    "ArchiveIndex",
    "Backend",
    "HammingIndex",
    "Hit",
    "IncompatibleIndexError",
    "IndexFileError",
    "SearchError",
    "ShardedIndex",
    "as_packed",
    "exact_topk",
    "load_index",
    "make_backend",
    "open_index",
]
