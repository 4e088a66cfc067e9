"""Datasets (Karpathy caption JSON + images), image decoding, the protocol split, synthetic data."""

from tfduch.data.images import load_image, load_image_bytes, to_rgb_uint8
from tfduch.data.karpathy import (
    IMAGE_DIR_NAMES,
    CaptionDataset,
    Sample,
    class_from_filename,
    load_dataset,
    load_karpathy,
)
from tfduch.data.split import ProtocolSplit, load_or_make_split, make_split, split_sizes
from tfduch.data.synthetic import make_synthetic_dataset

__all__ = [
    "IMAGE_DIR_NAMES",
    "CaptionDataset",
    "ProtocolSplit",
    "Sample",
    "class_from_filename",
    "load_dataset",
    "load_image",
    "load_image_bytes",
    "load_karpathy",
    "load_or_make_split",
    "make_split",
    "make_synthetic_dataset",
    "split_sizes",
    "to_rgb_uint8",
]
