"""DUCH's custom train_step, callbacks and checkpoint/resume on small synthetic features."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import tensorflow as tf
from conftest import clustered_features, tiny_duch_config

from tfduch.config import Config
from tfduch.eval import map_at_k
from tfduch.training.callbacks import StepDecay
from tfduch.training.data import make_dataset
from tfduch.training.trainer import build_model, train


def small_config(tmp_path, epochs: int = 3, **loss) -> Config:
    cfg = tiny_duch_config(tmp_path, epochs=epochs, tensorboard=False)
    for k, v in loss.items():
        setattr(cfg.loss, k, v)
    return cfg


def test_dataset_batches_are_aligned_and_views_differ() -> None:
    feats, _ = clustered_features(n=50, captions=3)
    batch = next(iter(make_dataset(feats, batch_size=16, seed=0)))
    idx = batch["index"].numpy()
    np.testing.assert_allclose(batch["image"].numpy(), feats.image[idx])
    np.testing.assert_allclose(batch["text"].numpy(), feats.text[idx])
    # the second text view is another caption of the same image, never the protocol caption itself
    other = batch["text_aug"].numpy()
    for row, i in zip(other, idx, strict=True):
        matches = [np.allclose(row, feats.captions[i, c]) for c in range(3)]
        assert any(matches) and not matches[feats.caption_choice[i]]


def test_train_step_updates_everything(tmp_path) -> None:
    feats, _ = clustered_features(n=128)
    cfg = small_config(tmp_path, alpha=0.01)  # the paper's adversarial term: the discriminator trains too
    cfg.train.checkpoint = False
    model = build_model(cfg, feats)
    disc_before = [v.numpy().copy() for v in model.discriminator.trainable_variables]
    head_before = model.image_head.trainable_variables[0].numpy().copy()
    targets_before = model.code_targets.targets.numpy().copy()
    model, summary = train(cfg, feats, tmp_path, model=model)
    assert all(np.isfinite(v).all() for v in summary["history"].values())
    assert set(summary["history"]) >= {"loss", "ntxent", "adversarial", "quantization", "bit_balance",
                                       "discriminator"}
    assert any(not np.allclose(a, b.numpy()) for a, b in zip(disc_before, model.discriminator.trainable_variables,
                                                               strict=True))
    assert not np.allclose(head_before, model.image_head.trainable_variables[0].numpy())
    targets = model.code_targets.targets.numpy()
    assert set(np.unique(targets)) <= {-1.0, 1.0} and not np.array_equal(targets, targets_before)


def test_training_learns_cross_modal_codes(tmp_path) -> None:
    feats, labels = clustered_features(n=240, classes=6, noise=1.0)
    cfg = small_config(tmp_path, epochs=15)
    cfg.train.checkpoint = False
    model = build_model(cfg, feats)
    img0, txt0 = model.encode(feats.image, "image"), model.encode(feats.text, "text")
    before = map_at_k(img0, txt0, labels, labels, 20)
    model, _ = train(cfg, feats, tmp_path, model=model)
    img, txt = model.encode(feats.image, "image"), model.encode(feats.text, "text")
    i2t, t2i = map_at_k(img, txt, labels, labels, 20), map_at_k(txt, img, labels, labels, 20)
    assert img.dtype == np.int8 and set(np.unique(img)) <= {-1, 1}
    assert i2t > max(0.8, before + 0.2) and t2i > 0.8, (before, i2t, t2i)


@pytest.mark.parametrize("switch", [{"text_aug": "same"}, {"adversarial_branch": "text"},
                                    {"bit_balance": "per_code"}])
def test_reference_switches_train(tmp_path, switch) -> None:
    feats, _ = clustered_features(n=64)
    cfg = small_config(tmp_path, epochs=1, **switch)
    cfg.train.checkpoint = False
    _, summary = train(cfg, feats, tmp_path)
    assert np.isfinite(summary["history"]["loss"]).all()


def test_text_aug_same_ignores_the_second_caption(tmp_path) -> None:
    feats, _ = clustered_features(n=64)
    cfg = small_config(tmp_path, epochs=1, text_aug="same")
    model = build_model(cfg, feats)
    batch = next(iter(make_dataset(feats, 64)))
    codes_same = {k: model.text_head(batch["text"], training=False) for k in ("text", "text_aug")}
    codes_same.update({k: model.image_head(batch[k], training=False) for k in ("image", "image_aug")})
    # with text_aug="same" the intra-text term compares a caption with itself
    losses = model.hashing_losses(codes_same, batch["index"])
    assert np.isfinite(float(losses["loss"]))


def test_step_decay_matches_reference_schedule() -> None:
    sched = StepDecay(1e-4, every=50, factor=0.8)
    assert sched.lr_at(0) == pytest.approx(1e-4)
    assert sched.lr_at(1) == pytest.approx(8e-5) and sched.lr_at(50) == pytest.approx(8e-5)
    assert sched.lr_at(51) == pytest.approx(6.4e-5) and sched.lr_at(99) == pytest.approx(6.4e-5)


def test_checkpoints_every_n_epochs_and_after_the_last(tmp_path) -> None:
    feats, _ = clustered_features(n=64)
    cfg = small_config(tmp_path, epochs=5)
    cfg.train.checkpoint_every = 2
    train(cfg, feats, tmp_path)
    saved = sorted(int(p.name.split("-")[1].split(".")[0]) for p in (tmp_path / "checkpoints").glob("ckpt-*.index"))
    assert saved == [4, 5]  # epoch 2 was pruned (max_to_keep=2), epochs 1 and 3 never written


def test_interrupted_training_resumes(tmp_path) -> None:
    feats, _ = clustered_features(n=96)
    cfg = small_config(tmp_path, epochs=2)
    model, _ = train(cfg, feats, tmp_path)
    saved = [v.numpy().copy() for v in model.weights]
    # keep a copy of epoch 2's checkpoint: the manager prunes it once epochs 3 and 4 are saved
    shutil.copytree(tmp_path / "checkpoints", tmp_path / "epoch2")
    cfg.train.epochs = 4
    fresh = build_model(cfg, feats)
    resumed, summary = train(cfg, feats, tmp_path, model=fresh)
    assert summary["initial_epoch"] == 2
    assert len(summary["history"]["loss"]) == 2  # only epochs 3 and 4 ran
    # the optimizer state came back too: Adam's iteration counter continues
    assert int(resumed.optimizer.iterations.numpy()) == 4 * 2
    # restoring (before training further) reproduced the saved weights
    check = build_model(cfg, feats)
    from tfduch.training.callbacks import ResumableCheckpoint

    ckpt = ResumableCheckpoint(tmp_path / "epoch2", check)
    ckpt.checkpoint.restore(str(tmp_path / "epoch2" / "ckpt-2"))
    for a, b in zip(saved, check.weights, strict=True):
        np.testing.assert_allclose(a, b.numpy())
    assert tf.reduce_all(tf.abs(check.code_targets.targets) == 1.0)


def _checkpointed_values(model) -> list[np.ndarray]:
    return [np.array(v) for v in [*model.weights, *model.optimizer.variables, *model.discriminator_optimizer.variables]]


def test_background_checkpoints_hold_the_state_of_their_epoch(tmp_path) -> None:
    """Each background-written checkpoint restores exactly the state at the end of its epoch."""
    import keras

    from tfduch.training.callbacks import ResumableCheckpoint

    feats, _ = clustered_features(n=96)
    cfg = small_config(tmp_path, epochs=3)
    cfg.train.checkpoint = False  # this test drives its own checkpoint callback
    model = build_model(cfg, feats)
    ckpt = ResumableCheckpoint(tmp_path / "ckpts", model, max_to_keep=3, shadow=build_model(cfg, feats))
    assert ckpt.background
    at_epoch_end: dict[int, list[np.ndarray]] = {}

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            at_epoch_end[epoch + 1] = _checkpointed_values(model)

    model.fit(make_dataset(feats, cfg.train.batch_size), epochs=3, callbacks=[ckpt, Record()], verbose=0)
    for epoch, expected in at_epoch_end.items():
        fresh = build_model(cfg, feats)
        check = ResumableCheckpoint(tmp_path / "restore", fresh)
        check.checkpoint.restore(str(tmp_path / "ckpts" / f"ckpt-{epoch}")).expect_partial()
        assert int(check.epoch.numpy()) == epoch
        for a, b in zip(expected, _checkpointed_values(fresh), strict=True):
            np.testing.assert_array_equal(a, b)


def test_background_checkpointing_leaves_training_unchanged(tmp_path) -> None:
    feats, _ = clustered_features(n=96)
    final = {}
    for background in (True, False):
        cfg = small_config(tmp_path / str(background), epochs=3)
        cfg.train.checkpoint_every, cfg.train.checkpoint_background = 1, background
        model, _ = train(cfg, feats, tmp_path / str(background))
        final[background] = _checkpointed_values(model)
        saved = sorted(p.name for p in (tmp_path / str(background) / "checkpoints").glob("ckpt-*.index"))
        assert saved == ["ckpt-2.index", "ckpt-3.index"]
    # Alone, the two runs agree bit for bit; inside the full suite, on a loaded 2-core machine, one weight once
    # differed by one float32 ulp (9e-10 on 0.006: TensorFlow's CPU kernels may reduce in another order). What
    # this guards against - checkpointing that adds a step, moves the RNG or loses an update - changes the
    # weights by orders of magnitude more than the tolerance.
    for a, b in zip(final[True], final[False], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)


def test_background_checkpoint_failure_is_raised_in_training(tmp_path, monkeypatch) -> None:
    from tfduch.training.callbacks import ResumableCheckpoint

    feats, _ = clustered_features(n=64)
    cfg = small_config(tmp_path, epochs=1)
    model = build_model(cfg, feats)
    ckpt = ResumableCheckpoint(tmp_path / "ckpts", model, shadow=build_model(cfg, feats))

    def disk_full(**kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(ckpt.manager, "save", disk_full)
    ckpt.save(1)
    with pytest.raises(RuntimeError, match="writing checkpoint 1 .* failed: No space left"):
        ckpt.wait()


def test_shadow_of_another_shape_is_refused(tmp_path) -> None:
    from tfduch.training.callbacks import ResumableCheckpoint

    feats, _ = clustered_features(n=64)
    cfg = small_config(tmp_path)
    other = small_config(tmp_path)
    other.model.bits = cfg.model.bits * 2
    with pytest.raises(ValueError, match="shadow model is not built like the model"):
        ResumableCheckpoint(tmp_path / "ckpts", build_model(cfg, feats), shadow=build_model(other, feats))


def test_interrupted_fit_still_finishes_the_background_checkpoint(tmp_path, monkeypatch) -> None:
    """Ctrl-C during epoch 3 leaves epoch 2's (slow) checkpoint complete, and re-running resumes from it."""
    import time

    import keras

    feats, _ = clustered_features(n=64)
    cfg = small_config(tmp_path, epochs=4)
    cfg.train.checkpoint_background, cfg.train.checkpoint_every = True, 1
    save = tf.train.CheckpointManager.save

    def slow_disk(self, *args, **kwargs):
        time.sleep(0.5)  # the write is still running when the interrupt arrives
        return save(self, *args, **kwargs)

    monkeypatch.setattr(tf.train.CheckpointManager, "save", slow_disk)

    class Interrupt(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if self.model.optimizer.iterations.numpy() == 2:  # 64 items, batch 64: first step of epoch 3
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, feats, tmp_path, extra_callbacks=[Interrupt()])
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("ckpt-2")
    _, summary = train(cfg, feats, tmp_path)
    assert summary["initial_epoch"] == 2 and len(summary["history"]["loss"]) == 2


def test_alpha_zero_skips_the_discriminator_without_changing_the_heads(tmp_path) -> None:
    """With α = 0 the GAN step is not run (it cannot move the heads), and the trained heads are those of a run
    that still trains the discriminator alongside."""
    from tfduch.models.duch import DUCH

    feats, _ = clustered_features(n=128)
    cfg = small_config(tmp_path, alpha=0.0)
    cfg.train.checkpoint = False
    skipping = build_model(cfg, feats)
    assert not skipping.trains_discriminator
    disc_before = [v.numpy().copy() for v in skipping.discriminator.trainable_variables]
    skipping, summary = train(cfg, feats, tmp_path / "skip", model=skipping)
    assert all(np.array_equal(a, b.numpy()) for a, b in zip(disc_before, skipping.discriminator.trainable_variables,
                                                             strict=True))
    assert summary["history"]["adversarial"] == [0.0] * cfg.train.epochs

    class AlwaysGAN(DUCH):
        trains_discriminator = True  # the old behaviour: a discriminator step in every train_step

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("tfduch.methods.duch.DUCH", AlwaysGAN)
        running = build_model(cfg, feats)
    assert isinstance(running, AlwaysGAN)
    running, _ = train(cfg, feats, tmp_path / "run", model=running)
    assert any(not np.array_equal(a, b.numpy()) for a, b in zip(disc_before, running.discriminator.trainable_variables,
                                                                 strict=True))
    for a, b in zip(skipping.image_head.weights + skipping.text_head.weights,
                    running.image_head.weights + running.text_head.weights, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5)
