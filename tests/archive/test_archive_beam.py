"""``tfduch encode-archive``: Beam codes = single-process codes, dead letters, resume, manifest checks.

One test runs the real thing (a tiny run folder's RunEncoder, two DirectRunner worker processes); the
others use a cheap pixel-statistics encoder on the in-memory runner, because what they check (shard
bookkeeping) does not depend on the model and each worker process would otherwise rebuild EfficientNet.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import PixelEncoder

pytest.importorskip("apache_beam")

from tfduch.archive import shards as fmt  # noqa: E402
from tfduch.archive.beam import EncoderSpec, encode_archive, pipeline_options  # noqa: E402
from tfduch.cli import main  # noqa: E402

BAD = {"zero.png": b"", "notes.png": b"this is not an image\n"}


def pixel_encoder() -> PixelEncoder:
    return PixelEncoder("pixels-v1")


def other_encoder() -> PixelEncoder:
    return PixelEncoder("pixels-v2")


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic Karpathy dataset (3 classes x 5 PNGs) plus bad files: empty, text, truncated."""
    from tfduch.data.synthetic import make_synthetic_dataset

    root = make_synthetic_dataset(tmp_path_factory.mktemp("archive") / "data", n_classes=3, per_class=5,
                                  image_size=48, image_format="png")
    images = root / "images"
    for name, data in BAD.items():
        (images / name).write_bytes(data)
    good = sorted(images.glob("*_*.png"))[0].read_bytes()
    (images / "truncated.png").write_bytes(good[: len(good) // 2])
    return root


def run(archive: Path, out: Path, factory=pixel_encoder, **kwargs):
    return encode_archive([str(archive / "images" / "*.png")], str(out), EncoderSpec(factory=factory),
                          captions=str(archive / "captions.json"),
                          options=pipeline_options(direct_mode="in_memory"), progress_interval=60,
                          log=lambda _: None, **{"shard_size": 4, "batch_size": 3, **kwargs})


def collect(out: Path) -> tuple[np.ndarray, list[str], list[dict]]:
    shards = list(fmt.iter_shards(out))
    return (np.concatenate([s.packed for s in shards]), [p for s in shards for p in s.paths],
            [p for s in shards for p in s.payloads])


def dead_paths(out: Path) -> dict[str, str]:
    count = fmt.read_manifest(out)["num_shards"]
    return {Path(r["path"]).name: r["reason"] for i in range(count) for r in fmt.read_dead_letters(out, i, count)}


def test_two_workers_give_the_single_process_codes_and_dead_letter_bad_files(archive: Path, tmp_path: Path) -> None:
    """The real pipeline: RunEncoder in 2 DirectRunner processes = RunEncoder.encode_images in this one."""
    from conftest import make_run

    from tfduch.index.encoders import RunEncoder

    run_dir = make_run(tmp_path / "run")
    out = tmp_path / "shards"
    result = encode_archive([str(archive / "images" / "*.png")], str(out), EncoderSpec(run=str(run_dir)),
                            captions=str(archive / "captions.json"), shards=3, batch_size=4,
                            options=pipeline_options(num_workers=2), log=lambda _: None)
    assert (result.items, result.dead, sorted(result.written)) == (15, 3, [0, 1, 2])
    packed, paths, payloads = collect(out)
    good = sorted(str(p) for p in (archive / "images").glob("*_*.png"))
    assert paths == good  # sorted input order, bad files left out
    expected = np.packbits(RunEncoder(run_dir).encode_images(good) > 0, axis=1)
    assert np.array_equal(packed, expected)
    assert set(dead_paths(out)) == {"zero.png", "notes.png", "truncated.png"}
    assert "empty (0 bytes)" in dead_paths(out)["zero.png"]
    manifest = fmt.read_manifest(out)
    assert (manifest["status"], manifest["items"], manifest["dead_letters"], manifest["bits"]) == \
        ("complete", 15, 3, 32)
    # payloads: class and captions from the Karpathy JSON, ids = positions in the sorted input list
    first = payloads[0]
    assert first["path"] == good[0] and first["class"] == Path(good[0]).name.split("_")[0] and first["captions"]
    assert [p["id"] for p in payloads] == [sorted(str(p) for p in (archive / "images").glob("*.png")).index(g)
                                           for g in good]


def test_rerun_recomputes_only_missing_or_corrupt_shards(archive: Path, tmp_path: Path) -> None:
    out = tmp_path / "shards"
    first = run(archive, out)
    assert first.num_shards == 5 and sorted(first.written) == list(range(5)) and first.dead == 3
    before = collect(out)
    files = {i: out / fmt.shard_name(i, 5) for i in range(5)}
    mtimes = {i: p.stat().st_mtime_ns for i, p in files.items()}
    files[1].unlink()
    files[3].write_bytes(files[3].read_bytes()[:100])  # a torn file (cannot come from our writer, but disks fail)
    again = run(archive, out)
    assert sorted(again.written) == [1, 3] and sorted(again.skipped) == [0, 2, 4]
    assert {i: files[i].stat().st_mtime_ns for i in (0, 2, 4)} == {i: mtimes[i] for i in (0, 2, 4)}
    after = collect(out)
    assert np.array_equal(before[0], after[0]) and before[1:] == after[1:]
    assert run(archive, out).written == []  # complete: nothing to do
    with pytest.raises(fmt.ShardError, match="missing"):
        (out / fmt.shard_name(2, 5)).unlink()
        list(fmt.iter_shards(out))


def test_another_model_file_list_or_sharding_is_refused(archive: Path, tmp_path: Path) -> None:
    out = tmp_path / "shards"
    run(archive, out)
    manifest = (out / fmt.MANIFEST_NAME).read_bytes()
    with pytest.raises(fmt.ShardError, match="another model"):
        run(archive, out, factory=other_encoder)
    with pytest.raises(fmt.ShardError, match="another shard count"):
        run(archive, out, shards=2)
    with pytest.raises(fmt.ShardError, match="another input file list"):
        encode_archive([str(archive / "images" / "*_*.png")], str(out), EncoderSpec(factory=pixel_encoder),
                       options=pipeline_options(direct_mode="in_memory"), log=lambda _: None, shard_size=4)
    assert (out / fmt.MANIFEST_NAME).read_bytes() == manifest


def test_cli_errors_are_one_line(archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    args = ["encode-archive", "--export", str(tmp_path / "no-model"), "--out", str(tmp_path / "o")]
    assert main([*args, "--input", str(tmp_path / "nothing" / "*.png")]) == 2
    assert "no files match" in capsys.readouterr().err
    assert main([*args, "--input", "x", "--shards", "0"]) == 2
    assert "--shards must be >= 1" in capsys.readouterr().err
    assert main([*args, "--input", "x", "--pipeline-option", "novalue"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    import tfduch.archive

    monkeypatch.setitem(sys.modules, "apache_beam", None)
    monkeypatch.delitem(sys.modules, "tfduch.archive.beam")
    monkeypatch.delattr(tfduch.archive, "beam")
    assert main([*args, "--input", "x"]) == 2
    assert 'pip install "tfduch[beam]"' in capsys.readouterr().err


def test_importing_tfduch_does_not_import_beam() -> None:
    code = ("import sys, tfduch, tfduch.cli, tfduch.archive.shards; tfduch.cli.build_parser(); "
            "print(json.dumps('apache_beam' in sys.modules))")
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) is False
