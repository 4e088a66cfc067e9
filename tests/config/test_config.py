"""Config loading: YAML files, command-line overrides and the errors users see."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import REPO

from tfduch.config import Config, load_config
from tfduch.errors import ConfigError


def test_shipped_default_config_equals_builtin_defaults() -> None:
    assert load_config(REPO / "configs" / "duch.yaml").to_dict() == Config().to_dict()


def test_reference_config_switches_the_three_reference_behaviours() -> None:
    cfg = load_config(REPO / "configs" / "duch_reference.yaml")
    assert (cfg.loss.text_aug, cfg.loss.adversarial_branch, cfg.loss.bit_balance) == ("same", "text", "per_code")


@pytest.mark.parametrize("name", ["duch_paper", "duch_reference", "chnr", "chnr_duch", "cach"])
def test_configs_measured_with_the_paper_schedule_keep_it(name: str) -> None:
    """The DUCH default dropped the adversarial term and the lr decay (docs/duch.md); the paper's objective and the
    methods whose published tables were measured with that schedule pin it, so they still train as measured."""
    cfg = load_config(REPO / "configs" / f"{name}.yaml")
    assert (cfg.loss.alpha, cfg.train.lr, cfg.train.lr_decay_every, cfg.train.lr_decay_factor) == (0.01, 1e-4, 50, 0.8)
    defaults = Config()
    assert (defaults.loss.alpha, defaults.train.lr, defaults.train.lr_decay_every) == (0.0, 2e-4, 0)


def test_overrides_are_typed() -> None:
    cfg = load_config(None, ["model.bits=32", "loss.temperature=0.5", "train.tensorboard=false",
                             "loss.contrastive_weights=1,0.5,0.5", "data.root=/x"])
    assert cfg.model.bits == 32 and cfg.loss.temperature == 0.5 and cfg.train.tensorboard is False
    assert cfg.loss.contrastive_weights == (1.0, 0.5, 0.5) and cfg.data.root == "/x"


def test_saved_config_round_trips(tmp_path: Path) -> None:
    cfg = load_config(None, ["model.bits=128", "train.epochs=7"])
    cfg.save(tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml").to_dict() == cfg.to_dict()


@pytest.mark.parametrize("override, message", [
    ("model.bitz=3", "unknown config field 'model.bitz'"),
    ("modle.bits=3", "unknown config section 'modle'"),
    ("model.bits=abc", "cannot use 'abc'"),
    ("model.bits=12", "multiple of 8"),
    ("loss.bit_balance=sideways", "per_bit|per_code"),
    ("train.batch_size=1", "negatives"),
    ("bits", "section.field=value"),
])
def test_bad_overrides_name_the_problem(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "bad.yaml").write_text("model: {bits: [}")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_missing_data_root_explains_how_to_set_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TFDUCH_DATA", raising=False)
    with pytest.raises(ConfigError, match="--data"):
        Config().data_root()


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path) -> None:
    """A config in configs/ with a typo'd key or a bad value fails here, not in a user's 100-epoch run."""
    cfg = load_config(path)
    assert cfg.model.bits > 0


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_base_files_apply_first_and_the_file_wins(tmp_path: Path) -> None:
    """``base:`` (a name or a list, relative to the file) is applied before the file's own keys; sections merge."""
    (tmp_path / "sub").mkdir()
    _write(tmp_path / "sub" / "schedule.yaml", "train: {lr: 0.0001, lr_decay_every: 50}\nloss: {alpha: 0.01}\n")
    _write(tmp_path / "sub" / "long.yaml", "train: {epochs: 150, lr: 0.0003}\n")
    child = _write(tmp_path / "sub" / "child.yaml",
                   "base: [schedule.yaml, long.yaml]\ntrain: {lr_decay_every: 25}\nmodel: {bits: 32}\n")
    cfg = load_config(child)
    assert (cfg.train.lr, cfg.train.epochs) == (0.0003, 150)  # the later base wins over the earlier
    assert (cfg.train.lr_decay_every, cfg.loss.alpha, cfg.model.bits) == (25, 0.01, 32)  # the file wins, rest merges
    assert cfg.train.batch_size == Config().train.batch_size  # untouched fields keep the built-in defaults
    grandchild = _write(tmp_path / "grandchild.yaml", "base: sub/child.yaml\nmodel: {bits: 128}\n")
    assert (load_config(grandchild).model.bits, load_config(grandchild).train.lr_decay_every) == (128, 25)
    assert load_config(child, ["train.lr=0.5"]).train.lr == 0.5  # --set still comes last


@pytest.mark.parametrize("files, message", [
    ({"a.yaml": "base: missing.yaml\n"}, r"missing.yaml \(the base of .*a.yaml\)"),
    ({"a.yaml": "base: b.yaml\n", "b.yaml": "base: a.yaml\n"}, "name each other as base: .*a.yaml -> .*b.yaml -> "),
    ({"a.yaml": "base: a.yaml\n"}, "name each other as base"),
    ({"a.yaml": "base: {x: 1}\n"}, "'base' must be a file name or a list"),
    ({"a.yaml": "base: b.yaml\n", "b.yaml": "model: {bitz: 3}\n"}, r"b.yaml: unknown config field 'model.bitz'"),
])
def test_bad_base_names_the_file(tmp_path: Path, files: dict[str, str], message: str) -> None:
    for name, text in files.items():
        _write(tmp_path / name, text)
    with pytest.raises(ConfigError, match=message):
        load_config(tmp_path / "a.yaml")


def test_shipped_configs_share_the_paper_schedule_through_base() -> None:
    """The paper schedule is written once (configs/duch_paper.yaml); the configs measured with it name it."""
    import yaml

    for name in ("duch_reference", "chnr", "cach"):
        raw = yaml.safe_load((REPO / "configs" / f"{name}.yaml").read_text())
        assert raw["base"] == "duch_paper.yaml" and "lr" not in raw.get("train", {}), name
    assert yaml.safe_load((REPO / "configs" / "chnr_duch.yaml").read_text())["base"] == "chnr.yaml"
