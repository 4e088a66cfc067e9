"""Assemble every feature a run needs from the cache, encoding only what is missing.

Encoders are imported and built lazily: a run whose features are all cached never loads them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tfduch.config import Config
from tfduch.data.karpathy import CaptionDataset
from tfduch.features.cache import FeatureCache
from tfduch.features.encode import encode_captions, encode_images


@dataclass
class FeatureSet:
    """Features of every item of a dataset (rows follow ``dataset.samples``)."""

    image: np.ndarray  # [N, Di] clean view
    image_aug: np.ndarray  # [V, N, Di] augmented views
    captions: np.ndarray  # [N, C, Dt]
    caption_counts: np.ndarray  # [N]
    captions_aug: np.ndarray | None  # [N, C, Dt] offline-augmented captions, or None
    encoder_ids: dict[str, str]


class _Encoders:
    """Builds each frozen encoder at most once, on first use."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self._image = None
        self._text = None

    def image(self):
        if self._image is None:
            from tfduch.encoders.efficientnet_lite import build_image_encoder

            self._image = build_image_encoder(self.cfg.features.image_encoder, cache_dir=self.cfg.cache_root())
        return self._image

    def text(self):
        if self._text is None:
            from tfduch.encoders.minilm import build_text_encoder

            self._text = build_text_encoder()
        return self._text


def _image_view(cache: FeatureCache, encoders: _Encoders, dataset: CaptionDataset, encoder_id: str,
                preset: str, seed: int, cfg: Config, progress: bool) -> np.ndarray:
    from tfduch.augment.image import build_image_augmentation
    from tfduch.encoders.efficientnet_lite import IMAGE_ENCODERS

    size = IMAGE_ENCODERS[cfg.features.image_encoder].image_size
    view = f"{preset}-s{seed}-{size}px"

    def compute() -> tuple[np.ndarray, dict[str, np.ndarray]]:
        aug = build_image_augmentation(preset, size, seed)
        paths = [s.path for s in dataset.samples]
        return encode_images(paths, encoders.image(), aug, cfg.features.batch_size, desc=f"images ({preset})",
                             progress=progress), {}

    return cache.get_or_compute(dataset, "image", encoder_id, view, compute).data


def _caption_view(cache: FeatureCache, encoders: _Encoders, dataset: CaptionDataset, encoder_id: str,
                  augment: str | None, seed: int, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    from tfduch.encoders.minilm import encode_texts

    view = "captions" if augment is None else f"captions-{augment}-s{seed}"

    def compute() -> tuple[np.ndarray, dict[str, np.ndarray]]:
        captions = [list(s.captions) for s in dataset.samples]
        if augment is not None:
            from tfduch.augment.text import build_text_augmenter

            augmenter = build_text_augmenter(augment)
            rng = np.random.default_rng(seed)
            captions = [[augmenter(text, rng) for text in group] for group in captions]
        data, counts = encode_captions(
            captions, lambda texts: encode_texts(encoders.text(), texts, progress=progress))
        return data, {"counts": counts}

    cached = cache.get_or_compute(dataset, "text", encoder_id, view, compute)
    return cached.data, cached.extra["counts"]


def build_features(cfg: Config, dataset: CaptionDataset, progress: bool = True) -> FeatureSet:
    """Every view the config asks for, from the cache or freshly encoded (with progress bars)."""
    from tfduch.encoders.efficientnet_lite import image_encoder_id
    from tfduch.encoders.minilm import text_encoder_id

    f = cfg.features
    cache = FeatureCache(cfg.cache_root())
    encoders = _Encoders(cfg)
    img_id, txt_id = image_encoder_id(f.image_encoder), text_encoder_id()
    image = _image_view(cache, encoders, dataset, img_id, f.image_view, 0, cfg, progress)
    image_aug = np.stack([
        _image_view(cache, encoders, dataset, img_id, f.image_aug_view, f.aug_seed + v, cfg, progress)
        for v in range(f.image_aug_views)
    ])
    captions, counts = _caption_view(cache, encoders, dataset, txt_id, None, 0, progress)
    captions_aug = None
    if f.text_aug_view != "other_caption":
        captions_aug, _ = _caption_view(cache, encoders, dataset, txt_id, f.text_aug_view, f.aug_seed, progress)
    return FeatureSet(image, image_aug, captions, counts, captions_aug, {"image": img_id, "text": txt_id})
