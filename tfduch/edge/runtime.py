"""Decode, preprocess and encode images with a TFLite model of an export, without TensorFlow.

Preprocessing is read from the export (the ``image_<variant>.json`` sidecar written next to each TFLite
file, else the version's ``assets.extra/tfduch_metadata.json``) and applied exactly as the SavedModel's
``encode_image`` does: decode to RGB → antialiased bilinear resize to ``source_size`` (skipped when the
image already has that size) → optional centre crop → resize to ``image_size`` → clip to 0..255 →
float32 ``[1, S, S, 3]``. Images are decoded with Pillow, as the feature cache does; for PNG, WebP, BMP
and GIF that equals ``tf.io.decode_image``, while JPEG decoders may differ by a grey level.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tfduch.codes import pack_codes
from tfduch.edge.resize import resize_antialias
from tfduch.errors import DataError, TfduchError

__all__ = ["EdgeModelInfo", "EdgeEncoder", "load_image", "preprocess", "pack_codes", "EDGE_FORMAT"]

EDGE_FORMAT = "tfduch-edge"
_EXPORT_METADATA = Path("assets.extra") / "tfduch_metadata.json"
# clean-view preset -> centre crop in pixels, for exports written before the sidecar existed
_VIEW_CROPS: dict[str, int | None] = {"none": None, "center_crop": 200}


@dataclass(frozen=True)
class EdgeModelInfo:
    """What the runtime needs to know about a TFLite file: preprocessing numbers, code length, model id."""

    source_size: int
    image_size: int
    center_crop: int | float | None
    code_length: int
    model_id: str | None
    variant: str | None

    @classmethod
    def from_json(cls, data: dict[str, Any], variant: str | None = None) -> EdgeModelInfo:
        """From a sidecar (``format: tfduch-edge``) or a full export metadata dict."""
        try:
            if data.get("format") == EDGE_FORMAT:
                prep = data["preprocessing"]
                return cls(int(prep["source_size"]), int(prep["image_size"]), prep.get("center_crop"),
                           int(data["code_length"]), data.get("model_id"), data.get("variant"))
            prep = data["preprocessing"]
            view = prep.get("clean_view", "none")
            if view not in _VIEW_CROPS:
                raise TfduchError(f"clean view {view!r} is random or unknown: an edge runtime cannot reproduce it")
            return cls(int(prep["source_size"]), int(prep["image_size"]), _VIEW_CROPS[view],
                       int(data["code_length"]), data.get("model_id"), variant)
        except (KeyError, TypeError, ValueError) as exc:
            raise TfduchError(f"export metadata lacks the preprocessing an edge runtime needs ({exc!r})") from exc

    @classmethod
    def for_model(cls, model: str | Path, metadata: str | Path | None = None) -> EdgeModelInfo:
        """Read ``metadata`` if given, else ``<model>.json`` beside the file, else the export version's metadata."""
        model = Path(model)
        variant = model.stem.removeprefix("image_")
        candidates = [Path(metadata)] if metadata is not None else [
            model.with_suffix(".json"), model.parent.parent.parent / _EXPORT_METADATA]
        for path in candidates:
            if path.is_file():
                try:
                    data = json.loads(path.read_text(encoding="utf-8"))
                except (OSError, ValueError) as exc:
                    raise TfduchError(f"cannot read the edge metadata {path}: {exc}") from exc
                return cls.from_json(data, variant)
        raise TfduchError(f"no metadata for {model}: expected {candidates[0]} (written by `tfduch export` next to "
                          "each TFLite file) or pass --metadata")


def load_image(source: str | Path | bytes) -> np.ndarray:
    """An image file or encoded bytes → uint8 ``[H, W, 3]`` RGB (first frame; alpha dropped, grey expanded)."""
    from PIL import Image, UnidentifiedImageError

    name = "<bytes>" if isinstance(source, bytes) else str(source)
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            image.seek(0)
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError as exc:
        raise DataError(f"image not found: {name}") from exc
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"cannot decode image {name}: {exc}") from exc


def _center_crop(image: np.ndarray, crop: int | float | None) -> np.ndarray:
    if crop is None:
        return image
    h, w = image.shape[:2]
    if isinstance(crop, float):
        ch, cw = max(1, round(h * crop)), max(1, round(w * crop))
    else:
        ch, cw = min(h, int(crop)), min(w, int(crop))
    top, left = (h - ch) // 2, (w - cw) // 2
    return image[top : top + ch, left : left + cw]


def preprocess(image: np.ndarray, info: EdgeModelInfo) -> np.ndarray:
    """uint8 ``[H, W, 3]`` → float32 ``[S, S, 3]`` in 0..255, the TFLite model's input (the export's clean view)."""
    s = info.source_size
    x = resize_antialias(image, s, s) if image.shape[:2] != (s, s) else image.astype(np.float32)
    x = resize_antialias(_center_crop(x, info.center_crop), info.image_size, info.image_size)
    return np.clip(x, 0.0, 255.0).astype(np.float32)


def _interpreter_class() -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError as exc:
            raise TfduchError("the edge runtime needs LiteRT: pip install 'tfduch[edge]' (ai-edge-litert)") from exc
    return Interpreter


class EdgeEncoder:
    """A TFLite image model of an export: image files / bytes → int8 ±1 codes or packed uint8 codes."""

    def __init__(self, model: str | Path, metadata: str | Path | None = None, num_threads: int | None = None) -> None:
        model = Path(model)
        if not model.is_file():
            raise TfduchError(f"TFLite model not found: {model}")
        self.info = EdgeModelInfo.for_model(model, metadata)
        self.interpreter = _interpreter_class()(model_path=str(model), num_threads=num_threads)
        self.interpreter.allocate_tensors()
        self._input = self.interpreter.get_input_details()[0]
        self._output = self.interpreter.get_output_details()[0]
        s = self.info.image_size
        if list(self._input["shape"]) != [1, s, s, 3] or int(self._output["shape"][-1]) != self.info.code_length:
            raise TfduchError(f"{model} takes {list(self._input['shape'])} and gives {list(self._output['shape'])}, "
                              f"but its metadata says [1, {s}, {s}, 3] -> {self.info.code_length} bits: "
                              "the metadata belongs to another model")

    def codes_from_preprocessed(self, images: np.ndarray) -> np.ndarray:
        """float32 ``[N, S, S, 3]`` (already preprocessed) → int8 ``[N, K]``."""
        out = np.zeros((len(images), self.info.code_length), np.int8)
        for i, image in enumerate(np.asarray(images, np.float32)):
            self.interpreter.set_tensor(self._input["index"], image[None])
            self.interpreter.invoke()
            out[i] = self.interpreter.get_tensor(self._output["index"])[0]
        return out

    def codes(self, sources: Iterable[str | Path | bytes]) -> np.ndarray:
        """Image files or encoded bytes → int8 ±1 codes ``[N, K]``."""
        images = [preprocess(load_image(source), self.info) for source in sources]
        s = self.info.image_size
        return self.codes_from_preprocessed(np.stack(images) if images else np.zeros((0, s, s, 3), np.float32))

    def encode_files(self, sources: Sequence[str | Path | bytes]) -> np.ndarray:
        """Image files or encoded bytes → packed codes uint8 ``[N, K/8]`` (``np.packbits`` order)."""
        return pack_codes(self.codes(sources))
