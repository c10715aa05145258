"""The shared Accelerate loop: exact resume, non-finite skips, accumulation, checkpoints, metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from mmssl.metrics import read_metrics
from mmssl.pretrain import pretrain
from mmssl.recipe import TrainConfig
from mmssl.trainer import NonFiniteLossError, Trainer, checkpoint_dirs
from mmssl.types import Batch, ObjectiveOutput
from tests.conftest import TINY


class Regression(nn.Module):
    """y = w.x on 4 features; ``poison`` lists forward calls whose loss is NaN."""

    def __init__(self, poison: set[int] | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(4, 1)
        self.poison = poison or set()
        self.calls = 0

    def forward(self, batch: Batch) -> ObjectiveOutput:
        self.calls += 1
        pred = self.lin(batch.units[:, 0]).squeeze(-1)
        loss = nn.functional.mse_loss(pred, batch.extras["y"])
        if self.calls in self.poison:
            loss = loss * float("nan")
        return ObjectiveOutput(loss=loss, terms={"mse": loss})


def _data(n: int = 64) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0])
    return [{"x": x[i], "y": y[i]} for i in range(n)]


def _collate(rows: list[dict]) -> Batch:
    x = torch.stack([r["x"] for r in rows]).unsqueeze(1)  # [B, 1, 4]: one unit per sample
    return Batch(units=x, padding_mask=torch.zeros(len(rows), 1, dtype=torch.bool), extras={"y": torch.stack([r["y"] for r in rows])})


def _cfg(**kw) -> TrainConfig:
    base = dict(max_steps=10, batch_size=8, lr=0.05, warmup_steps=0, log_every=1, checkpoint_every=100, weight_decay=0.0)
    return TrainConfig(**{**base, **kw})


def test_metrics_lines_have_the_contract_keys(tmp_path: Path) -> None:
    Trainer(Regression(), _data(), _collate, _cfg(), tmp_path).fit()
    records = list(read_metrics(tmp_path))
    assert [r["step"] for r in records] == list(range(1, 11))
    for key in ("step", "loss", "lr", "grad_norm", "samples_per_s", "tokens_per_s", "loss_mse", "epoch"):
        assert key in records[0]
    assert records[-1]["loss"] < records[0]["loss"]
    assert (tmp_path / "tensorboard").is_dir()


def test_nonfinite_loss_skips_the_step_and_counts(tmp_path: Path) -> None:
    model = Regression(poison={3, 4})
    trainer = Trainer(model, _data(), _collate, _cfg(max_steps=6), tmp_path)
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
    trainer = Trainer(Regression(poison=set(range(1, 100))), _data(), _collate, _cfg(max_consecutive_nonfinite=3), tmp_path)
    with pytest.raises(NonFiniteLossError, match="3 non-finite losses in a row.*max_consecutive_nonfinite=3"):
        trainer.fit()


def test_gradient_accumulation_matches_the_large_batch(tmp_path: Path) -> None:
    big = Regression()
    Trainer(big, _data(), _collate, _cfg(max_steps=3, batch_size=8), tmp_path / "a").fit()
    small = Regression()
    Trainer(small, _data(), _collate, _cfg(max_steps=3, batch_size=4, grad_accum_steps=2), tmp_path / "b").fit()
    torch.testing.assert_close(big.lin.weight, small.lin.weight, rtol=1e-5, atol=1e-6)


def test_keeps_the_last_k_checkpoints(tmp_path: Path) -> None:
    Trainer(Regression(), _data(), _collate, _cfg(max_steps=9, checkpoint_every=2, keep_checkpoints=2), tmp_path).fit()
    assert [d.name for d in checkpoint_dirs(tmp_path)] == ["step-0000008", "step-0000009"]


def test_too_little_data_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fewer than one batch"):
        Trainer(Regression(), _data(4), _collate, _cfg(batch_size=8), tmp_path)


def _losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if "event" not in r}


def test_interrupted_run_resumes_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Losses of an interrupted+resumed run equal those of an uninterrupted one, step for step."""
    # sentence pairs exercise the per-step random transform, dropout the per-step seeding
    overrides = [*TINY, "train.max_steps=10", "train.checkpoint_every=4", "data.sentence_pairs=true",
                 "objective.sentence_order_weight=1.0"]
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
    assert max(_losses(tmp_path / "resumed")) == 5  # logged through step 5, checkpoint at 4
    with pytest.raises(FileExistsError, match="--resume"):
        pretrain("bert", overrides, tmp_path / "resumed")
    pretrain("bert", overrides, tmp_path / "resumed", resume=True)

    straight, resumed = _losses(tmp_path / "straight"), _losses(tmp_path / "resumed")
    assert list(resumed) == list(range(1, 11))  # lines after the checkpoint were replaced, not duplicated
    assert resumed == pytest.approx(straight, rel=1e-6, abs=1e-7)
    assert json.loads((tmp_path / "resumed" / "export" / "mmssl.json").read_text())["step"] == 10


def test_resume_refuses_a_changed_recipe(tmp_path: Path) -> None:
    overrides = [*TINY, "train.max_steps=2"]
    pretrain("bert", overrides, tmp_path)
    from mmssl.config import ConfigError

    with pytest.raises(ConfigError, match="'train.lr' differs"):
        pretrain("bert", [*overrides, "train.lr=0.1"], tmp_path, resume=True)
    pretrain("bert", [*TINY, "train.max_steps=3"], tmp_path, resume=True)  # a longer run is fine
    assert max(_losses(tmp_path)) == 3


def test_bf16_mixed_precision_trains(tmp_path: Path) -> None:
    run = pretrain("bert", [*TINY, "train.max_steps=8", "train.mixed_precision=bf16", "train.lr=3e-3"], tmp_path)
    losses = _losses(run)
    assert len(losses) == 8 and all(map(math.isfinite, losses.values()))
    assert losses[8] < losses[1]
