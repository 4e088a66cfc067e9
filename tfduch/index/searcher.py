"""An index together with the model that encodes queries: search by text, image, raw code or indexed item.

Construction checks that index and model belong together (code length and model id), so a search never
silently compares codes of two different models.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tfduch.index.core import Hit
from tfduch.index.encoders import ImageInput, QueryEncoder
from tfduch.index.errors import SearchError
from tfduch.index.store import ArchiveIndex

__all__ = ["Searcher"]


class Searcher:
    """Top-k search over an :class:`ArchiveIndex`; ``encoder`` is needed only for text and image queries."""

    def __init__(self, index: ArchiveIndex, encoder: QueryEncoder | None = None) -> None:
        if encoder is not None:
            index.check_compatible(encoder.metadata)
        self.index = index
        self.encoder = encoder

    def _encoder(self, what: str) -> QueryEncoder:
        if self.encoder is None:
            raise SearchError(f"searching by {what} needs the model that built the index (a run or an export)")
        return self.encoder

    def by_text(self, texts: Sequence[str], k: int, target: str = "image") -> list[list[Hit]]:
        """Nearest items of ``target`` for each caption (text→image by default, text→text with "text")."""
        if isinstance(texts, str):
            texts = [texts]
        empty = [i for i, t in enumerate(texts) if not str(t).strip()]
        if empty:
            raise SearchError(f"query {empty[0] + 1} is empty: type a few words describing the scene")
        self.index.collection(target).check_k(k)  # fail before the (slow) encoder runs
        return self.by_code(self._encoder("text").encode_texts(list(texts)), k, target)

    def by_image(self, images: Sequence[ImageInput], k: int, target: str = "image") -> list[list[Hit]]:
        """Nearest items of ``target`` for each image (bytes or path); ``target="text"``: image→text."""
        if isinstance(images, (bytes, str)):
            images = [images]
        self.index.collection(target).check_k(k)
        return self.by_code(self._encoder("image").encode_images(list(images)), k, target)

    def by_code(self, codes: np.ndarray, k: int, target: str = "image") -> list[list[Hit]]:
        """Nearest items of ``target`` for raw codes (±1 ``[Q, K]``, 0/1 bits, or packed ``uint8``)."""
        return self.index.search(codes, k, target)

    def by_item(self, collection: str, item_id: int, k: int, target: str) -> list[Hit]:
        """Nearest items of ``target`` to an item already in the index (e.g. the captions of an image)."""
        return self.index.search(self.index.collection(collection).code(item_id)[None], k, target)[0]
