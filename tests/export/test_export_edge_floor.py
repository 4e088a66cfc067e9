"""The edge export config (export/edge.yaml): parsed and checked, and its floors ENFORCED: a TFLite variant
whose measured bit agreement with the float SavedModel is below its floor is refused, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import cli_export

from tfduch.export.edge_config import EDGE_CONFIG, load_edge_config
from tfduch.export.layout import TMP_PREFIX, ExportError

REPO = Path(__file__).resolve().parents[2]


def _write(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def test_shipped_edge_config_parses_with_a_floor_per_variant():
    options = load_edge_config(REPO / EDGE_CONFIG)
    assert options["variants"] == ("float32", "float16", "dynamic", "int8")
    assert set(options["min_bit_agreement"]) == set(options["variants"])
    assert all(0.9 < f <= 1.0 for f in options["min_bit_agreement"].values())
    assert options["on_below_floor"] == "error"


@pytest.mark.parametrize(("config", "message"), [
    ({"variants": {"int8": {"min_bit_agreement": 0.98}}, "calibraton": {}}, r"unknown key\(s\) \['calibraton'\]"),
    ({"variants": {"int8": {}}}, "has no min_bit_agreement"),
    ({"variants": {"int8": {"min_bit_agreement": 0.9, "floor": 1}}}, "takes only min_bit_agreement"),
    ({"variants": []}, "'variants' must map"),
    ({"variants": {"int8": {"min_bit_agreement": 0.9}}, "check": {"images": "ten"}}, "check.images"),
    ({"variants": {"int8": {"min_bit_agreement": 0.9}}, "check": {"count": 3}},
     r"unknown key\(s\) \[.count.\] in check"),
])
def test_bad_edge_configs_name_the_problem(tmp_path, config, message):
    with pytest.raises(ExportError, match=message):
        load_edge_config(_write(tmp_path / "edge.yaml", config))


def test_bad_floors_and_variants_are_refused_by_the_options(tmp_path):
    from tfduch.export.edge_config import edge_options

    with pytest.raises(ExportError, match=r"fraction in \[0, 1\]"):
        edge_options(_write(tmp_path / "a.yaml", {"variants": {"int8": {"min_bit_agreement": 99}}}))
    with pytest.raises(ExportError, match="unknown TFLite variants"):
        edge_options(_write(tmp_path / "b.yaml", {"variants": {"int4": {"min_bit_agreement": 0.9}}}))
    with pytest.raises(ExportError, match="on_below_floor"):
        edge_options(_write(tmp_path / "c.yaml", {"variants": {"int8": {"min_bit_agreement": 0.9}},
                                                  "on_below_floor": "warn"}))
    with pytest.raises(ExportError, match="cannot read the edge config"):
        load_edge_config(tmp_path / "missing.yaml")


def _export(run: Path, base: Path, config: Path, encoders) -> tuple[int, str, str]:
    return cli_export(run, base, encoders, "--name", "edge", "--edge-config", str(config), "--quiet")


def test_a_variant_below_its_floor_is_refused_and_nothing_is_written(tmp_path, tiny_run, tiny_encoders, edge_export):
    from tfduch.export import read_metadata

    measured = read_metadata(edge_export[1])["tflite"]["int8"]["bit_agreement_vs_savedmodel"]
    # The same images as the fixture's export (same counts and seed), so int8 measures `measured` again:
    # full int8 on this small random encoder flips a few % of the bits, which a floor of 100 % refuses.
    assert measured < 1.0
    config = {"variants": {"float32": {"min_bit_agreement": 0.99}, "int8": {"min_bit_agreement": 1.0}},
              "calibration": {"images": 8}, "bias_correction": {"images": 0}, "check": {"images": 8}, "seed": 0}
    base = tmp_path / "exports"
    code, out, err = _export(tiny_run, base, _write(tmp_path / "edge.yaml", config), tiny_encoders)
    assert code == 2, out + err
    assert "'int8'" in err and f"{100 * measured:.3f} %" in err and "below its floor of 100.000 %" in err
    model_dir = base / "edge"
    assert not model_dir.exists() or not [p for p in model_dir.iterdir()]  # no version, no temp folder left

    # on_below_floor: skip writes the version without the refused variant, and says so in the metadata.
    code, out, err = _export(tiny_run, base, _write(tmp_path / "skip.yaml", {**config, "on_below_floor": "skip"}),
                             tiny_encoders)
    assert code == 0, err
    version = model_dir / "1"
    meta = read_metadata(version)
    assert set(meta["tflite"]) == {"float32"} and set(meta["tflite_refused"]) == {"int8"}
    assert meta["tflite_refused"]["int8"]["bit_agreement_vs_savedmodel"] == measured
    assert meta["tflite"]["float32"]["min_bit_agreement"] == 0.99
    assert sorted(p.name for p in (version / "assets.extra" / "tflite").iterdir()) == [
        "image_float32.json", "image_float32.tflite"]
    assert "REFUSED" in out and not [p for p in model_dir.iterdir() if p.name.startswith(TMP_PREFIX)]
