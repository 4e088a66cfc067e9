"""Errors of the archive index. Each message names the index file, the collection or the bad argument."""

from __future__ import annotations

from tfduch.errors import TfduchError

__all__ = ["IndexFileError", "IncompatibleIndexError", "SearchError"]


class IndexFileError(TfduchError):
    """An index file is missing, truncated, corrupt (checksum mismatch) or not a tfduch index."""


class IncompatibleIndexError(TfduchError):
    """The index holds codes of another code length or another model than the one encoding the queries."""


class SearchError(TfduchError, ValueError):
    """A search or an update cannot be answered as asked: empty collection, bad k, unknown ids, bad codes."""
