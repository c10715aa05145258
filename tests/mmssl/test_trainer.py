"""The shared Accelerate loop: exact resume, non-finite skips, accumulation, checkpoints, metrics."""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import mmssl.trainer as trainer_module
from mmssl.checkpoint import checkpoint_dirs
from mmssl.metrics import read_metrics
from mmssl.pretrain import pretrain
from mmssl.probes import KNNMonitor
from mmssl.recipe import MonitorConfig
from mmssl.trainer import NonFiniteLossError, Trainer, use_cpu
from tests.conftest import TINY
from tests.mmssl.loop_fixtures import (
    Regression,
    logged_steps,
    losses,
    regression_collate,
    regression_data,
    regression_trainer,
    tensorboard_scalars,
    train_cfg,
)


def test_metrics_lines_have_the_contract_keys(tmp_path: Path) -> None:
    Trainer(Regression(), regression_data(), regression_collate, train_cfg(), tmp_path).fit()
    records = list(read_metrics(tmp_path))
    assert [r["step"] for r in records] == list(range(1, 11))
    for key in ("step", "loss", "lr", "grad_norm", "samples_per_s", "tokens_per_s", "loss_mse", "epoch"):
        assert key in records[0]
    assert records[-1]["loss"] < records[0]["loss"]
    assert (tmp_path / "tensorboard").is_dir()


def test_nonfinite_loss_skips_the_step_and_counts(tmp_path: Path) -> None:
    model = Regression(poison={3, 4})
    trainer = Trainer(model, regression_data(), regression_collate, train_cfg(max_steps=6), tmp_path)
    before = {}

    def snapshot(t: Trainer, step: int) -> None:
        before[step] = model.lin.weight.detach().clone()

    trainer.hooks.append(snapshot)
    trainer.fit()
    assert trainer.state.nonfinite_total == 2 and trainer.state.nonfinite_streak == 0
    assert torch.equal(before[2], before[4])  # steps 3 and 4 did not move the weights
    assert not torch.equal(before[4], before[5])
    assert list(read_metrics(tmp_path))[-1]["nonfinite_skipped"] == 2


def test_consecutive_nonfinite_losses_abort(tmp_path: Path) -> None:
    trainer = Trainer(
        Regression(poison=set(range(1, 100))),
        regression_data(),
        regression_collate,
        train_cfg(max_consecutive_nonfinite=3),
        tmp_path,
    )
    with pytest.raises(NonFiniteLossError, match="3 non-finite losses in a row.*max_consecutive_nonfinite=3"):
        trainer.fit()


def test_gradient_accumulation_matches_the_large_batch(tmp_path: Path) -> None:
    big = Regression()
    Trainer(big, regression_data(), regression_collate, train_cfg(max_steps=3, batch_size=8), tmp_path / "a").fit()
    small = Regression()
    Trainer(
        small,
        regression_data(),
        regression_collate,
        train_cfg(max_steps=3, batch_size=4, grad_accum_steps=2),
        tmp_path / "b",
    ).fit()
    torch.testing.assert_close(big.lin.weight, small.lin.weight, rtol=1e-5, atol=1e-6)


def test_keeps_the_last_k_checkpoints(tmp_path: Path) -> None:
    regression_trainer(tmp_path, max_steps=9, checkpoint_every=2, keep_checkpoints=2).fit()
    assert [d.name for d in checkpoint_dirs(tmp_path)] == ["step-0000008", "step-0000009"]


def test_too_little_data_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fewer than one batch"):
        Trainer(Regression(), regression_data(4), regression_collate, train_cfg(batch_size=8), tmp_path)


def test_interrupted_run_resumes_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Losses of an interrupted+resumed run equal those of an uninterrupted one, step for step."""
    # sentence pairs exercise the per-step random transform, dropout the per-step seeding
    overrides = [
        *TINY,
        "train.max_steps=10",
        "train.checkpoint_every=4",
        "data.sentence_pairs=true",
        "objective.sentence_order_weight=1.0",
    ]
    pretrain("bert", overrides, tmp_path / "straight")  # each run trains its own tokenizer: they must agree

    original = Trainer._run_hooks

    def interrupt(self: Trainer) -> dict:
        if self.state.step == 6:
            raise KeyboardInterrupt  # after the step-4 checkpoint, before the step-8 one
        return original(self)

    monkeypatch.setattr(Trainer, "_run_hooks", interrupt)
    with pytest.raises(KeyboardInterrupt):
        pretrain("bert", overrides, tmp_path / "resumed")
    monkeypatch.setattr(Trainer, "_run_hooks", original)
    assert max(losses(tmp_path / "resumed")) == 5  # logged through step 5, checkpoint at 4
    with pytest.raises(FileExistsError, match="--resume"):
        pretrain("bert", overrides, tmp_path / "resumed")
    pretrain("bert", overrides, tmp_path / "resumed", resume=True)

    straight, resumed = losses(tmp_path / "straight"), losses(tmp_path / "resumed")
    assert list(resumed) == list(range(1, 11))  # lines after the checkpoint were replaced, not duplicated
    assert [step for step, _ in tensorboard_scalars(tmp_path / "resumed")] == list(range(1, 11))  # and in TensorBoard
    assert resumed == pytest.approx(straight, rel=1e-6, abs=1e-7)
    assert json.loads((tmp_path / "resumed" / "export" / "mmssl.json").read_text())["step"] == 10


def test_resume_refuses_a_changed_recipe(tmp_path: Path) -> None:
    overrides = [*TINY, "train.max_steps=2"]
    pretrain("bert", overrides, tmp_path)
    from mmssl.config import ConfigError

    with pytest.raises(ConfigError, match="'train.lr' differs"):
        pretrain("bert", [*overrides, "train.lr=0.1"], tmp_path, resume=True)
    pretrain("bert", [*TINY, "train.max_steps=3"], tmp_path, resume=True)  # a longer run is fine
    assert max(losses(tmp_path)) == 3


def test_bf16_mixed_precision_trains(tmp_path: Path) -> None:
    run = pretrain("bert", [*TINY, "train.max_steps=8", "train.mixed_precision=bf16", "train.lr=3e-3"], tmp_path)
    logged = losses(run)
    assert len(logged) == 8 and all(map(math.isfinite, logged.values()))
    assert logged[8] < logged[1]


# ---------------------------------------------------------------------------- one-line notices
@pytest.mark.skipif(not use_cpu(), reason="fp16 mixed precision runs on a GPU")
def test_fp16_on_cpu_says_it_trains_in_fp32(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    regression_trainer(tmp_path, max_steps=2, mixed_precision="fp16").fit()
    out = capsys.readouterr().out
    assert "train.mixed_precision=fp16 has no effect on cpu: training in fp32" in out
    assert len(losses(tmp_path)) == 2


@pytest.mark.parametrize("norm", [0.0, -1.0])
def test_disabled_clipping_is_said_once(tmp_path: Path, capsys: pytest.CaptureFixture, norm: float) -> None:
    regression_trainer(tmp_path, max_steps=2, max_grad_norm=norm).fit()
    out = capsys.readouterr().out
    assert out.count(f"train.max_grad_norm={norm}: gradient clipping is off") == 1


def test_clipping_on_says_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    regression_trainer(tmp_path, max_steps=2, max_grad_norm=1.0).fit()
    assert "clipping" not in capsys.readouterr().out


@pytest.mark.parametrize(
    ("precision", "advice"),
    [("bf16", "train in fp32 (train.mixed_precision=no)"), ("no", "check the data for NaN or infinite values")],
)
def test_nonfinite_advice_fits_the_runs_precision(tmp_path: Path, precision: str, advice: str) -> None:
    trainer = regression_trainer(
        tmp_path, model=Regression(poison=set(range(1, 100))), mixed_precision=precision, max_consecutive_nonfinite=2
    )
    with pytest.raises(NonFiniteLossError) as error:
        trainer.fit()
    assert advice in str(error.value)
    assert "bf16" not in str(error.value).replace("train.mixed_precision=no", "")  # never suggests what it runs in


# ---------------------------------------------------------------------------- the kNN monitor
def test_log_lines_during_training_go_above_the_progress_bar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A monitor's log line is written through tqdm (which clears and redraws the bar), not into the bar."""
    written: list[str] = []
    monkeypatch.setattr(
        trainer_module.tqdm, "write", classmethod(lambda cls, s, file=None, end="\n", nolock=False: written.append(s))
    )
    console = logging.StreamHandler(sys.stderr)  # what `logging.basicConfig` in mmssl.cli.main installs
    logging.root.addHandler(console)
    monitor_log = logging.getLogger("mmssl.probes")
    monitor_log.setLevel(logging.INFO)
    trainer = regression_trainer(tmp_path, max_steps=2)
    trainer.hooks.append(lambda t, step: monitor_log.info("step %d: kNN accuracy 0.5000", step))
    try:
        trainer.fit()
    finally:
        logging.root.removeHandler(console)
        monitor_log.setLevel(logging.NOTSET)
    assert [line for line in written if "kNN accuracy" in line] == [
        "step 1: kNN accuracy 0.5000",
        "step 2: kNN accuracy 0.5000",
    ]


def _monitor(every: int) -> KNNMonitor:
    def encoder_of(model: object) -> None:
        raise AssertionError("probed")

    return KNNMonitor(
        MonitorConfig(task="t", every=every), [0] * 4, [0] * 4, collate=list, num_classes=2, encoder_of=encoder_of
    )


def test_the_monitor_probes_the_last_step_only_when_an_interval_fits() -> None:
    trainer = SimpleNamespace(
        cfg=SimpleNamespace(max_steps=3), accelerator=SimpleNamespace(unwrap_model=lambda m: m), model=None
    )
    assert _monitor(every=10)(trainer, 3) == {}  # a 3-step run never reaches monitor.every=10: no final probe
    with pytest.raises(AssertionError, match="probed"):
        _monitor(every=2)(trainer, 3)  # one interval fits: the last step is probed too
    assert _monitor(every=2)(trainer, 1) == {}


def test_a_run_shorter_than_the_monitor_interval_skips_the_probe(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = pretrain("bert", [*TINY, "train.max_steps=2", "monitor.task=rotten-tomatoes", "monitor.every=10"], tmp_path)
    out = capsys.readouterr().out
    assert "monitor: skipped: train.max_steps=2 is below monitor.every=10" in out
    assert not [r for r in read_metrics(run) if "knn_accuracy" in r]
    assert logged_steps(run) == [1, 2]
