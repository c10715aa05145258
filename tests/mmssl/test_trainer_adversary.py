"""The trainer's second optimizer (an objective's adversary, :mod:`mmssl.adversary`): each optimizer moves only its
own parameters, two steps equal a hand-computed update, non-finite steps skip both, accumulation, exact resume,
and the gradient routing under DDP (two gloo processes)."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from mmssl.adversary import AdversaryTraining
from mmssl.checkpoint import checkpoint_dirs
from mmssl.metrics import read_metrics
from mmssl.objectives.base import Adversary
from mmssl.optim import find_adversary, param_groups
from mmssl.trainer import Trainer
from mmssl.types import Batch, ObjectiveOutput
from tests.mmssl.loop_fixtures import regression_collate, regression_data, stop_at, train_cfg
from tests.mmssl.objectives.loss_checks import run_in_two_processes

ADV_LR, ADV_BETAS = 0.1, (0.5, 0.9)


class Adversarial(nn.Module):
    """A linear "generator" ``lin`` regressing y, and a critic of its predictions, trained by its own optimizer.

    Main loss: ``mse(pred, y) + main_critic * mean(critic(pred))`` (it goes through the critic). Adversary loss:
    ``adv_weight * mse(critic(pred), y)``, on the detached prediction unless ``detach=False``. ``poison`` /
    ``poison_adversary``: forward calls whose main / adversary loss is NaN.
    """

    def __init__(
        self,
        seed: int = 0,
        main_critic: float = 0.5,
        adv_weight: float = 1.0,
        main_weight: float = 1.0,
        detach: bool = True,
        poison: set[int] | None = None,
        poison_adversary: set[int] | None = None,
    ) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.lin = nn.Linear(4, 1)
        self.critic = nn.Linear(1, 1)
        self.main_critic, self.adv_weight, self.main_weight, self.detach = main_critic, adv_weight, main_weight, detach
        self.poison, self.poison_adversary = poison or set(), poison_adversary or set()
        self.calls = 0

    def adversary(self) -> Adversary:
        return Adversary(self.critic, lr=ADV_LR, betas=ADV_BETAS)

    def losses(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pred = self.lin(x)  # [B, 1]
        main = self.main_weight * F.mse_loss(pred.squeeze(-1), y) + self.main_critic * self.critic(pred).mean()
        seen = pred.detach() if self.detach else pred
        return main, self.adv_weight * F.mse_loss(self.critic(seen).squeeze(-1), y)

    def forward(self, batch: Batch) -> ObjectiveOutput:
        self.calls += 1
        main, adv = self.losses(batch.units[:, 0], batch.extras["y"])
        if self.calls in self.poison:
            main = main * float("nan")
        if self.calls in self.poison_adversary:
            adv = adv * float("nan")
        return ObjectiveOutput(loss=main, terms={"mse": main.detach()}, adversary_loss=adv)


def trainer(model: nn.Module, run_dir: Path, n: int = 64, **cfg) -> Trainer:
    return Trainer(model, regression_data(n), regression_collate, train_cfg(**cfg), run_dir)


def snapshots(model: Adversarial, into: dict[int, tuple[torch.Tensor, torch.Tensor]]):
    """A step hook that keeps copies of both modules' weights after every optimizer step."""

    def hook(t: Trainer, step: int) -> None:
        into[step] = (model.lin.weight.detach().clone(), model.critic.weight.detach().clone())

    return hook


def test_the_adversary_has_an_optimizer_of_its_own(tmp_path: Path) -> None:
    model = Adversarial()
    t = trainer(model, tmp_path)
    main = {id(p) for g in t.optimizer.param_groups for p in g["params"]}
    adv = {id(p) for g in t.adversary.optimizer.param_groups for p in g["params"]}
    assert main == {id(p) for p in model.lin.parameters()} and adv == {id(p) for p in model.critic.parameters()}
    assert t.adversary.optimizer.param_groups[0]["betas"] == ADV_BETAS
    assert t.adversary.lr == ADV_LR


def test_the_main_loss_never_moves_the_adversary(tmp_path: Path) -> None:
    """The main loss goes through the critic, but its adversary loss is 0: the critic stays as it was."""
    model = Adversarial(adv_weight=0.0)
    critic, lin = model.critic.weight.detach().clone(), model.lin.weight.detach().clone()
    trainer(model, tmp_path, max_steps=4).fit()
    assert torch.equal(model.critic.weight, critic) and not torch.equal(model.lin.weight, lin)


def test_the_adversary_loss_never_moves_the_generator_even_undetached(tmp_path: Path) -> None:
    """A main loss of 0 and an adversary loss through the (not detached) generator: only the critic moves."""
    model = Adversarial(main_weight=0.0, main_critic=0.0, detach=False)
    critic, lin = model.critic.weight.detach().clone(), model.lin.weight.detach().clone()
    trainer(model, tmp_path, max_steps=4).fit()
    assert torch.equal(model.lin.weight, lin) and not torch.equal(model.critic.weight, critic)


def test_two_steps_equal_a_hand_computed_update(tmp_path: Path) -> None:
    """Each optimizer's gradient of its own loss, clipped on its own, AdamW at the cosine schedule's lr."""
    data = regression_data(8)
    model = Adversarial()
    trainer(model, tmp_path, n=8, max_steps=2, max_grad_norm=0.05).fit()  # one batch: all 8 rows

    ref = Adversarial()
    x, y = torch.stack([r["x"] for r in data]), torch.stack([r["y"] for r in data])
    main_opt = torch.optim.AdamW(ref.lin.parameters(), lr=0.05, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.0)
    adv_opt = torch.optim.AdamW(ref.critic.parameters(), lr=ADV_LR, betas=ADV_BETAS, eps=1e-8, weight_decay=0.0)
    for factor in (1.0, 0.5 * (1 + math.cos(math.pi / 2))):  # cosine with no warmup over 2 steps
        main, adv = ref.losses(x, y)
        main_grads = torch.autograd.grad(main, list(ref.lin.parameters()))
        adv_grads = torch.autograd.grad(adv, list(ref.critic.parameters()))
        for opt, grads, lr in ((main_opt, main_grads, 0.05), (adv_opt, adv_grads, ADV_LR)):
            params = opt.param_groups[0]["params"]
            for p, g in zip(params, grads):
                p.grad = g
            torch.nn.utils.clip_grad_norm_(params, 0.05)  # clipped apart: the norms are not pooled
            opt.param_groups[0]["lr"] = lr * factor
            opt.step()
    for ours, theirs in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_nonfinite_main_or_adversary_loss_skips_both_steps(tmp_path: Path) -> None:
    model = Adversarial(poison={3}, poison_adversary={5})
    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    t = trainer(model, tmp_path, max_steps=6)
    t.hooks.append(snapshots(model, seen))
    t.fit()
    for skipped in (3, 5):
        assert all(torch.equal(a, b) for a, b in zip(seen[skipped - 1], seen[skipped])), f"step {skipped} moved"
    assert not any(torch.equal(a, b) for a, b in zip(seen[3], seen[4]))  # a finite step moves both
    assert t.state.nonfinite_total == 2
    records = list(read_metrics(tmp_path))
    assert math.isnan(float(records[4]["grad_norm_adversary"])) and math.isfinite(records[3]["grad_norm_adversary"])


def test_gradient_accumulation_matches_the_large_batch(tmp_path: Path) -> None:
    big, small = Adversarial(), Adversarial()
    trainer(big, tmp_path / "a", max_steps=3, batch_size=8).fit()
    trainer(small, tmp_path / "b", max_steps=3, batch_size=4, grad_accum_steps=2).fit()
    for a, b in zip(big.parameters(), small.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_metrics_log_the_adversary(tmp_path: Path) -> None:
    trainer(Adversarial(), tmp_path, max_steps=3).fit()
    record = list(read_metrics(tmp_path))[-1]
    for key in ("loss_adversary", "lr_adversary", "grad_norm_adversary", "loss", "grad_norm"):
        assert math.isfinite(record[key]), key


def test_bf16_trains_both(tmp_path: Path) -> None:
    model = Adversarial()
    critic = model.critic.weight.detach().clone()
    trainer(model, tmp_path, max_steps=3, mixed_precision="bf16").fit()
    assert not torch.equal(model.critic.weight, critic)
    assert math.isfinite(list(read_metrics(tmp_path))[-1]["loss_adversary"])


def test_interrupted_run_resumes_both_optimizers_exactly(tmp_path: Path) -> None:
    def run(run_dir: Path, seed: int, hooks=(), resume: bool = False) -> Adversarial:
        model = Adversarial(seed=seed)
        t = trainer(model, run_dir, max_steps=10, checkpoint_every=4, warmup_steps=2)
        t.hooks.extend(hooks)
        t.fit(resume=resume)
        return model

    straight = run(tmp_path / "straight", 0)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "resumed", 0, hooks=[stop_at(6)])
    ckpt = checkpoint_dirs(tmp_path / "resumed")[-1]
    assert ckpt.name == "step-0000004" and (ckpt / "optimizer_1.bin").is_file() and (ckpt / "scheduler_1.bin").is_file()
    resumed = run(tmp_path / "resumed", 7, resume=True)  # other initial weights: all comes from the checkpoint

    def lines(run_dir: Path) -> list[tuple]:
        return [(r["step"], r["loss"], r["loss_adversary"], r["lr_adversary"]) for r in read_metrics(run_dir)]

    assert lines(tmp_path / "resumed") == pytest.approx(lines(tmp_path / "straight"), rel=1e-6, abs=1e-7)
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_declaring_and_returning_must_agree(tmp_path: Path) -> None:
    class Undeclared(Adversarial):
        adversary = None  # type: ignore[assignment]

    class Silent(Adversarial):
        def forward(self, batch: Batch) -> ObjectiveOutput:
            return ObjectiveOutput(loss=super().forward(batch).loss)

    with pytest.raises(ValueError, match="declares no adversary"):
        trainer(Undeclared(), tmp_path / "a", max_steps=1).fit()
    with pytest.raises(ValueError, match="adversary_loss is None"):
        trainer(Silent(), tmp_path / "b", max_steps=1).fit()


def test_find_adversary_and_the_main_groups() -> None:
    model = Adversarial()
    assert find_adversary(model).module is model.critic
    main = {id(p) for g in param_groups(model, 0.1, exclude=model.critic) for p in g["params"]}
    assert main == {id(p) for p in model.lin.parameters()}
    assert find_adversary(nn.Linear(2, 2)) is None
    with pytest.raises(ValueError, match="more than one module declares an adversary"):
        find_adversary(nn.Sequential(Adversarial(), Adversarial()))

    class Outside(Adversarial):
        def adversary(self) -> Adversary:
            return Adversary(nn.Linear(1, 1), lr=0.1)

    with pytest.raises(ValueError, match="must be a submodule"):
        find_adversary(Outside())
    with pytest.raises(ValueError, match="lr > 0"):
        Adversary(nn.Linear(1, 1), lr=0.0)


def _ddp_routing(rank: int) -> None:
    """Two processes of 4 rows each, DDP-wrapped, two steps of gradients: the main gradient of ``lin`` and the
    adversary gradient of ``critic`` equal one process's on all 8 rows (the main loss's gradient on the critic is
    replaced), and DDP's reducer accepts the step (a second step would fail after a missed reduction)."""
    data = regression_data(8)
    x, y = torch.stack([r["x"] for r in data]), torch.stack([r["y"] for r in data])
    rows = slice(4 * rank, 4 * rank + 4)
    ref, model = Adversarial(), Adversarial()
    ddp = DistributedDataParallel(model, find_unused_parameters=True)

    def reduce(t: torch.Tensor, reduction: str) -> torch.Tensor:
        dist.all_reduce(t)
        return t / dist.get_world_size()

    acc = SimpleNamespace(distributed_type="MULTI_CPU", gradient_accumulation_steps=1, scaler=None, num_processes=2)
    acc.reduce = reduce
    routing = AdversaryTraining(model.adversary(), None, None, acc)  # type: ignore[arg-type]
    for _ in range(2):
        model.zero_grad(set_to_none=True)
        out = ddp(regression_collate(data[rows]))
        routing.accumulate(out).backward()
        routing.install()
        ref.zero_grad(set_to_none=True)
        ref_main, ref_adv = ref.losses(x, y)
        ref_main.backward(inputs=list(ref.lin.parameters()))
        ref_adv.backward(inputs=list(ref.critic.parameters()))
        for ours, theirs in zip(model.parameters(), ref.parameters()):
            torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.timeout(120)
def test_ddp_routes_and_averages_the_adversary_gradient(tmp_path: Path) -> None:
    """Each of the two processes asserts in :func:`_ddp_routing` that its gradients equal one process's on the global
    batch; ``run_in_two_processes`` raises when either worker fails."""
    run_in_two_processes(_ddp_routing, tmp_path)
