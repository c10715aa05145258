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
from torch.utils.data import IterableDataset

import mmssl.trainer as trainer_module
from mmssl.checkpoint import checkpoint_dirs, load_trainer_state
from mmssl.cli import main
from mmssl.metrics import read_metrics
from mmssl.pretrain import pretrain
from mmssl.probes import KNNMonitor
from mmssl.recipe import MonitorConfig
from mmssl.trainer import BestWeights, NonFiniteLossError, Trainer, TrainState, use_cpu
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


# ---------------------------------------------------------------------------- epochs, epoch hooks, best weights
@pytest.mark.parametrize(
    ("rows", "batch", "accum", "drop_last", "per_epoch"),
    [(64, 8, 1, True, 8), (60, 8, 1, True, 7), (60, 8, 1, False, 8), (60, 8, 3, False, 3)],
)
def test_epochs_set_the_optimizer_steps_and_the_schedule(
    tmp_path: Path, rows: int, batch: int, accum: int, drop_last: bool, per_epoch: int
) -> None:
    """train.epochs x steps per epoch optimizer steps; the warmup fraction and the cosine end follow them.
    Accelerate steps at the end of the data mid-accumulation: 8 batches at 3 per step are 3 steps."""
    model, epochs = Regression(), []
    cfg = train_cfg(max_steps=None, epochs=3, batch_size=batch, grad_accum_steps=accum, warmup_steps=0.25)
    trainer = Trainer(model, regression_data(rows), regression_collate, cfg, tmp_path, drop_last=drop_last)
    trainer.epoch_hooks.append(lambda t, epoch: epochs.append(epoch))
    total = 3 * per_epoch
    assert trainer.steps_per_epoch == per_epoch
    assert (trainer.cfg.max_steps, trainer.cfg.warmup_steps) == (total, round(0.25 * total))
    trainer.fit()
    assert logged_steps(tmp_path) == list(range(1, total + 1)) and epochs == [1.0, 2.0, 3.0]
    assert model.calls == 3 * (rows // batch if drop_last else math.ceil(rows / batch))  # every batch, once an epoch
    lr = {r["step"]: r["lr"] for r in read_metrics(tmp_path)}
    assert lr[trainer.cfg.warmup_steps] == pytest.approx(cfg.lr) == max(lr.values())  # peak at the warmup's end
    assert lr[total] == pytest.approx(0.0, abs=1e-12)  # the cosine reaches 0 at the last step


def test_max_steps_wins_over_epochs_and_the_run_says_how_long_it_is(tmp_path: Path, capsys) -> None:
    assert regression_trainer(tmp_path / "a", max_steps=4, epochs=3).cfg.max_steps == 4
    assert "train.max_steps=4 wins over train.epochs=3: 0.50 epochs of 8 steps" in capsys.readouterr().out
    regression_trainer(tmp_path / "b", max_steps=None, epochs=2, warmup_steps=0.1)
    assert "train.epochs=2: 16 optimizer steps (8 per epoch), 2 of warmup" in capsys.readouterr().out


def test_epochs_need_data_of_known_length(tmp_path: Path) -> None:
    class Stream(IterableDataset):
        def __iter__(self):
            return iter(regression_data())

    with pytest.raises(ValueError, match=r"train.epochs=2 needs data of known length .*set train.max_steps"):
        Trainer(Regression(), Stream(), regression_collate, train_cfg(max_steps=None, epochs=2), tmp_path)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"max_steps": None}, "set train.max_steps or train.epochs"),
        ({"epochs": 0}, "train.epochs must be >= 1"),
        ({"warmup_steps": 1.5}, "train.warmup_steps must be a whole number of steps, or a fraction below 1"),
    ],
)
def test_bad_run_lengths_name_the_key(settings: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        train_cfg(**settings)


def test_pretraining_refuses_epochs(tmp_path: Path, capsys) -> None:
    sets = [arg for o in TINY for arg in ("--set", o)]
    assert main(["pretrain", "bert", *sets, "--set", "train.epochs=2", "--output-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "train.epochs=2: epochs are for mmssl finetune; a pretraining run lasts train.max_steps" in err
    assert not (tmp_path / "run").exists()


def test_epoch_hooks_run_at_each_epochs_end_and_at_the_last_step(tmp_path: Path, capsys) -> None:
    seen, modes = [], []

    def evaluate(t: Trainer, epoch: float) -> dict[str, float]:
        t.model.eval()  # as an evaluation does; the trainer switches back
        seen.append((t.state.step, epoch))
        return {"score": float(len(seen))}

    trainer = regression_trainer(tmp_path, max_steps=20, epochs=3)  # 8 steps an epoch: 20 ends half-way through
    trainer.epoch_hooks.append(evaluate)
    trainer.hooks.append(lambda t, step: modes.append(t.model.training))
    trainer.fit()
    assert seen == [(8, 1.0), (16, 2.0), (20, 2.5)] and all(modes)
    lines = {r["step"]: r for r in read_metrics(tmp_path)}
    assert [lines[step]["score"] for step in (8, 16, 20)] == [1.0, 2.0, 3.0]
    assert "score" not in lines[9]
    assert [lines[step]["epoch"] for step in (7, 8, 9, 20)] == [0, 1, 1, 2]  # whole epochs done at that step
    assert "epoch 2.5 (step 20): score 3.0000" in capsys.readouterr().out


def _snapshots(model: torch.nn.Module, into: dict) -> trainer_module.EpochHook:
    def snapshot(t: Trainer, epoch: float) -> None:
        into[epoch] = {k: v.clone() for k, v in model.state_dict().items()}

    return snapshot


def test_best_weights_keep_the_better_epoch_when_a_later_one_diverges(tmp_path: Path) -> None:
    """From epoch 3 on the learning rate is 20,000 times higher: the weights kept are epoch 2's."""
    model, snapshots = Regression(), {}
    held_out = regression_collate(regression_data(80)[64:])  # rows the run does not train on

    @torch.no_grad()
    def negative_mse(m: torch.nn.Module) -> float:
        return -float(m(held_out).loss)

    def diverge(t: Trainer, step: int) -> None:
        if step == 16:
            t.scheduler.scheduler.base_lrs = [1e3 for _ in t.scheduler.scheduler.base_lrs]

    best = BestWeights(lambda m: {"val_score": negative_mse(m)}, rank=lambda metrics: (metrics["val_score"],))
    trainer = regression_trainer(tmp_path, model=model, max_steps=None, epochs=3)
    trainer.hooks.append(diverge)
    trainer.epoch_hooks += [_snapshots(model, snapshots), best]
    trainer.fit()
    scores = [r["val_score"] for r in read_metrics(tmp_path) if "val_score" in r]
    assert len(scores) == 3 and scores[0] < scores[1] and scores[2] < scores[1]
    assert (best.epoch, best.step, best.metrics) == (2.0, 16, {"val_score": scores[1]})
    best.restore(model)
    for name, value in model.state_dict().items():
        assert torch.equal(value, snapshots[2.0][name])
    assert negative_mse(model) == pytest.approx(scores[1])


def test_best_weights_keep_the_earlier_epoch_on_a_tie_and_survive_a_checkpoint(tmp_path: Path) -> None:
    model, snapshots, scores = Regression(), {}, iter([0.5, 0.75, 0.75])
    best = BestWeights(lambda m: {"val_accuracy": next(scores)}, rank=lambda metrics: (metrics["val_accuracy"],))
    trainer = regression_trainer(tmp_path, model=model, max_steps=None, epochs=3)
    trainer.epoch_hooks += [_snapshots(model, snapshots), best]
    trainer.register_state("best", best)
    trainer.fit()
    assert (best.epoch, best.step, best.metrics) == (2.0, 16, {"val_accuracy": 0.75})
    assert all(torch.equal(best.weights[k], snapshots[2.0][k]) for k in snapshots[2.0])
    # a resumed run loads what the last checkpoint saved of it
    again = BestWeights(lambda m: {}, rank=lambda metrics: ())
    load_trainer_state(checkpoint_dirs(tmp_path)[-1], {"loop": TrainState(), "best": again})
    assert (again.epoch, again.step, again.metrics) == (2.0, 16, {"val_accuracy": 0.75})
    assert again.weights.keys() == best.weights.keys()
    assert all(torch.equal(again.weights[k], best.weights[k]) for k in best.weights)
