"""``--data`` values → datasets: a folder as is, or a registered benchmark name under the data home.

The one place ``--data NAME`` is resolved. It sits above both the folder loader (:mod:`tfduch.data.karpathy`)
and the downloader (:mod:`tfduch.data.fetch`), which verifies a fetched folder by loading it, so neither of
those needs the other's module.
"""

from __future__ import annotations

import os
from pathlib import Path

from tfduch.data.fetch import fetch_dataset
from tfduch.data.karpathy import CaptionDataset, load_dataset
from tfduch.data.registry import REGISTRY, data_home, get_spec, installed_path, is_registered
from tfduch.errors import DataError

__all__ = ["open_dataset", "resolve_data"]


def resolve_data(value: str | os.PathLike[str], fetch: bool = True, progress: bool = True) -> Path:
    """``--data`` value → dataset folder: an existing path as is, a registered name under the data home
    (fetched when absent and ``fetch``); anything else is an error naming both readings."""
    path = Path(value).expanduser()
    if path.exists():
        return path
    text = str(value)
    if is_registered(text) and os.sep not in text:
        found = installed_path(text)
        if found is not None:
            return found
        if not fetch:
            raise DataError(f"dataset {text!r} is not installed under {data_home()}: run `tfduch datasets fetch "
                            f"{get_spec(text).name}`")
        return fetch_dataset(text, progress=progress)
    raise DataError(f"dataset folder not found: {path} (and {text!r} is not a registered dataset name: "
                    f"{', '.join(sorted(REGISTRY))})")


def open_dataset(value: str | os.PathLike[str], name: str | None = None, fetch: bool = True) -> CaptionDataset:
    """Load the dataset a ``--data`` value names (a folder, a JSON file or a registered name, fetched when absent)."""
    return load_dataset(resolve_data(value, fetch=fetch), name=name)
