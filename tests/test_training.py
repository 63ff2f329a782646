"""Checkpoints: atomic writes, and which checkpoint a resume reads."""

import os

import numpy as np
import pytest

from tfzoo import GPT
from tfzoo.training import StepCheckpoint, latest_checkpoint, restore_latest


def small_model():
    model = GPT.from_preset("gpt_test")
    model.compile()
    return model


def fit_steps(model, steps, callbacks=()):
    tokens = np.random.randint(0, 512, (steps * 2, 17))
    model.fit(tokens[:, :-1], tokens[:, 1:], batch_size=2, epochs=1, verbose=0, callbacks=list(callbacks))


def test_checkpoints_are_named_by_step_and_only_the_newest_are_kept(tmp_path):
    model = small_model()
    fit_steps(model, 7, [StepCheckpoint(str(tmp_path), steps_per_epoch=2, every=3, keep=3)])
    # Epoch ends at 2, 4, 6 and every 3 steps: 2, 3, 4, 6; the oldest is dropped.
    assert sorted(os.listdir(tmp_path)) == ["step_0000003.keras", "step_0000004.keras", "step_0000006.keras"]
    assert latest_checkpoint(str(tmp_path)) == (str(tmp_path / "step_0000006.keras"), 6)


@pytest.mark.parametrize("arguments, message", [
    (dict(steps_per_epoch=0), "steps_per_epoch=0"),
    (dict(steps_per_epoch=2, keep=0), "keep=0"),  # [:-0] would have kept every file
    (dict(steps_per_epoch=2, every=0), "every=0"),
])
def test_checkpoint_settings_are_checked_up_front(tmp_path, arguments, message):
    with pytest.raises(ValueError, match=message):
        StepCheckpoint(str(tmp_path), **arguments)


def test_a_half_written_checkpoint_is_never_visible_nor_read(tmp_path, monkeypatch):
    model = small_model()
    fit_steps(model, 2, [StepCheckpoint(str(tmp_path), steps_per_epoch=2)])
    good_weights = [w.numpy().copy() for w in model.weights]

    # A crash between writing and renaming: the new file exists only under its temporary name.
    def crash(source, destination):
        raise KeyboardInterrupt("killed mid-checkpoint")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        fit_steps(model, 2, [StepCheckpoint(str(tmp_path), steps_per_epoch=2)])
    monkeypatch.undo()
    names = sorted(os.listdir(tmp_path))
    assert names[0].startswith(".writing_") and names[1:] == ["step_0000002.keras"]
    # And a torn file left by anything else under a temporary name is ignored too.
    (tmp_path / ".writing_999.keras").write_bytes(b"PK\x03\x04 torn")

    fresh = small_model()
    fresh.build()
    assert restore_latest(fresh, str(tmp_path)) == 2
    for restored, expected in zip(fresh.weights, good_weights):
        np.testing.assert_array_equal(restored.numpy(), expected)
    assert int(fresh.optimizer.iterations.numpy()) == 2


def test_restore_without_checkpoints_starts_from_zero(tmp_path):
    model = small_model()
    model.build()
    assert restore_latest(model, str(tmp_path / "nothing")) == 0
    assert latest_checkpoint(str(tmp_path)) == (None, 0)


@pytest.mark.parametrize("name, value", [("checkpoint_every", 0), ("steps_per_epoch", 0), ("epochs", True)])
def test_training_config_is_checked_before_any_work(tmp_path, name, value):
    from tfzoo.training import GPTTrainingConfig, train_gpt

    with pytest.raises(ValueError, match=f"{name}={value}"):
        train_gpt(GPTTrainingConfig(run_dir=str(tmp_path / "run"), **{name: value}))
    assert not os.path.exists(tmp_path / "run")
