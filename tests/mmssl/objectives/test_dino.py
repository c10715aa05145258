"""DINO: the loss against lightly's DINOLoss and the paper's algorithm, the head against lightly's, the centre, the
schedules (teacher temperature, frozen last layer, weight decay), learning, exact resume, and two processes."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from lightly.loss import DINOLoss
from lightly.models.modules import DINOProjectionHead
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from domains.image.resnet import SmallResNet
from mmssl.config import ConfigError, from_dict
from mmssl.encoder import Encoder
from mmssl.metrics import read_metrics
from mmssl.objectives import objective_spec
from mmssl.objectives.base import SSLModel
from mmssl.objectives.dino import (
    DINO,
    DINOConfig,
    TeacherCentre,
    cosine_value,
    dino_loss,
    teacher_temperature,
)
from mmssl.objectives.heads import DINOHead
from mmssl.objectives.views import encode_crops
from mmssl.optim import param_groups, set_weight_decay, weight_decay_schedule
from mmssl.pretrain import pretrain
from mmssl.types import Batch, EncoderOutput
from tests.conftest import TINY_IMAGE
from tests.fitting import first_last, fit
from tests.mmssl.objectives.loss_checks import (
    WORLD,
    assert_float32_under_bf16_autocast,
    assert_same_loss_and_grads,
    assert_steps_match,
    run_in_two_processes,
)
from tests.mmssl.objectives.resume_checks import assert_resumes_exactly
from tests.mmssl.objectives.view_fixtures import check_output, smooth_images, views_batch, vit

K = 16
SMALL = {"projector_hidden_dim": 48, "bottleneck_dim": 16, "projector_dim": 32}  # published: 2048, 256, 65536


def logits(seed: int, views: int, b: int = 6, k: int = K) -> Tensor:
    """``[views, b, k]`` float64 scores that require a gradient."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(views, b, k, generator=g, dtype=torch.float64).requires_grad_()


def reference_dino_loss(teacher: list[Tensor], student: list[Tensor], center: Tensor, tt: float, ts: float) -> Tensor:
    """The official ``DINOLoss.forward`` (Caron et al. 2021, main_dino.py), written out."""
    t = [F.softmax((x - center) / tt, dim=-1).detach() for x in teacher]
    total, terms = 0.0, 0
    for iq, q in enumerate(t):
        for v, s in enumerate(student):
            if v == iq:
                continue
            total = total + torch.sum(-q * F.log_softmax(s / ts, dim=-1), dim=-1).mean()
            terms += 1
    return total / terms


# ---------------------------------------------------------------- the loss


@pytest.mark.parametrize("views", [2, 5])
def test_dino_loss_matches_lightly(views: int) -> None:
    teacher, student = logits(0, 2), logits(1, views)
    center = 0.3 * torch.randn(K, dtype=torch.float64)
    ref_fn = DINOLoss(output_dim=K, teacher_temp=0.04, student_temp=0.1, center_momentum=0.9).double()
    ref_fn.center = center.view(1, 1, K).clone()
    ref = ref_fn(list(teacher.detach()), list(student), teacher_temp=0.04)
    assert_same_loss_and_grads(dino_loss(teacher, student, center, 0.04, 0.1), ref, student)
    # lightly moves its centre in forward; ours after the step, to the same value
    centre = TeacherCentre(K, 0.9).double()
    centre.center.copy_(center)
    centre.accumulate(teacher)
    centre.update()
    torch.testing.assert_close(centre.center, ref_fn.center.view(K), rtol=1e-6, atol=1e-6)


def test_dino_loss_is_the_papers_algorithm() -> None:
    teacher, student = logits(2, 2), logits(3, 4)
    center = torch.randn(K, dtype=torch.float64)
    ref = reference_dino_loss(list(teacher), list(student), center, 0.07, 0.1)
    assert_same_loss_and_grads(dino_loss(teacher, student, center, 0.07, 0.1), ref, student)


def test_dino_loss_sends_no_gradient_to_the_teacher() -> None:
    teacher, student = logits(0, 2), logits(1, 3)
    grad_t, grad_s = torch.autograd.grad(
        dino_loss(teacher, student, torch.zeros(K), 0.04, 0.1), (teacher, student), allow_unused=True
    )
    assert grad_t is None and grad_s.abs().sum() > 0


def test_dino_loss_runs_in_float32_under_bf16_autocast() -> None:
    assert_float32_under_bf16_autocast(
        lambda z1, z2: dino_loss(z1.view(2, 8, 32), z2.view(2, 8, 32), torch.zeros(32), 0.04, 0.1)
    )


@pytest.mark.parametrize(
    ("teacher", "student", "center", "message"),
    [
        ((2, 4, K), (2, 5, K), (K,), "do not fit"),
        ((2, 4, K), (2, 4, K), (K + 1,), "center must be"),
        ((2, 4, K), (1, 4, K), (K,), "V >= 2"),
        ((4, K), (2, 4, K), (K,), "do not fit"),
    ],
)
def test_dino_loss_names_bad_shapes(teacher: tuple, student: tuple, center: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dino_loss(torch.zeros(teacher), torch.zeros(student), torch.zeros(center), 0.04, 0.1)


def test_centre_is_an_ema_of_the_mean_teacher_score_and_waits_for_the_step() -> None:
    centre = TeacherCentre(4, 0.9)
    first, second = torch.randn(2, 3, 4), torch.randn(2, 5, 4)
    centre.accumulate(first)
    centre.accumulate(second)  # two micro-batches of one step: one update with their common mean
    assert torch.equal(centre.center, torch.zeros(4))
    centre.update()
    mean = torch.cat([first.reshape(-1, 4), second.reshape(-1, 4)]).mean(0)
    torch.testing.assert_close(centre.center, 0.1 * mean)
    centre.update()  # nothing pending: unchanged
    torch.testing.assert_close(centre.center, 0.1 * mean)


# ---------------------------------------------------------------- the head


def test_head_matches_lightly_dino_projection_head() -> None:
    torch.manual_seed(0)
    ref = DINOProjectionHead(12, 24, 8, 20, batch_norm=False).eval()
    ours = DINOHead(12, 24, 8, 20)
    ours.mlp.load_state_dict(ref.layers.state_dict())
    with torch.no_grad():
        ours.last_layer.direction.copy_(ref.last_layer.weight_v)
        ours.last_layer.norm.copy_(ref.last_layer.weight_g)
    x = torch.randn(5, 12)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-6)
    assert not ours.last_layer.norm.requires_grad  # norm_last_layer: prototypes of norm 1
    torch.testing.assert_close(ours.last_layer.weight.norm(dim=1), torch.ones(20))
    assert ours(torch.randn(2, 3, 12)).shape == (2, 3, 20)  # unit tokens too (iBOT)
    assert DINOHead(12, 24, 8, 20, norm_last_layer=False).last_layer.norm.requires_grad


def test_frozen_last_layer_gets_no_gradient_but_passes_one_on() -> None:
    head = DINOHead(6, 8, 4, 10)
    x = torch.randn(3, 6, requires_grad=True)
    head(x, freeze_last_layer=True).sum().backward()
    assert head.last_layer.direction.grad is None and x.grad is not None
    assert all(p.grad is not None for p in head.mlp.parameters())


# ---------------------------------------------------------------- the objective


def make_dino(encoder=None, **settings) -> tuple[SSLModel, DINO]:
    torch.manual_seed(1)
    enc = encoder if encoder is not None else vit()
    objective = DINO(DINOConfig(**{**SMALL, **settings}), enc)
    return SSLModel(enc, objective), objective


def test_loss_is_dino_loss_of_the_head_scores_and_the_teacher_of_the_global_views() -> None:
    model, objective = make_dino(freeze_last_layer_steps=0)
    batch = views_batch(smooth_images(), num_views=4)  # 2 global 16x16 views, 2 local 8x8 ones
    out = model(batch)
    check_output(out)
    student = torch.stack([objective.head(model.encoder.encode(v).pooled()) for v in batch.views])
    with torch.no_grad():
        branch = objective.teacher.module
        teacher = torch.stack([branch.projector(branch.encoder.encode(v).pooled()) for v in batch.views[:2]])
    torch.testing.assert_close(out.loss, dino_loss(teacher, student, torch.zeros(32), 0.04, 0.1))
    assert float(out.logs["teacher_temp"]) == pytest.approx(0.04)


def test_crops_of_one_size_are_encoded_together_as_each_alone() -> None:
    enc = vit().eval()
    views = views_batch(smooth_images(), num_views=5).views
    together = encode_crops(enc, views)
    for view, out in zip(views, together):
        alone = enc.encode(view)
        torch.testing.assert_close(out.hidden, alone.hidden, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out.pooled(), alone.pooled(), rtol=1e-5, atol=1e-5)


def test_centre_moves_after_the_step_by_the_global_mean_of_the_teacher_scores() -> None:
    model, objective = make_dino()
    batch = views_batch(smooth_images(), num_views=3)
    model.eval()(batch)  # an evaluation: nothing accumulated
    model.train()(batch)
    assert torch.equal(objective.centre.center, torch.zeros(32))  # not inside forward
    with torch.no_grad():
        teacher = objective.teacher_logits(batch.views[:2])
    model.after_optimizer_step(1, 10)
    torch.testing.assert_close(objective.centre.center, 0.1 * teacher.reshape(-1, 32).mean(0))


def test_teacher_temperature_warms_up_linearly_then_stays() -> None:
    assert [teacher_temperature(p, 4, 0.04, 0.08) for p in (0, 2, 4, 9)] == pytest.approx([0.04, 0.06, 0.08, 0.08])
    assert teacher_temperature(0, 0, 0.04, 0.07) == 0.07
    model, objective = make_dino(teacher_temp=0.08, teacher_temp_warmup_steps=4)
    batch = views_batch(smooth_images())
    for step in (2, 5):
        model.after_optimizer_step(step, 10)
        expected = teacher_temperature(step, 4, 0.04, 0.08)
        assert float(model(batch).logs["teacher_temp"]) == pytest.approx(expected)


def test_last_layer_is_frozen_for_the_first_steps_only() -> None:
    model, objective = make_dino(freeze_last_layer_steps=2)
    optimizer = torch.optim.AdamW(param_groups(model, 0.04), lr=1e-2)
    last = objective.head.last_layer.direction
    for step in (1, 2, 3):
        before = last.detach().clone()
        optimizer.zero_grad(set_to_none=True)
        model(views_batch(smooth_images(), seed=step)).loss.backward()
        assert (last.grad is None) == (step <= 2)
        assert any(p.grad is not None for p in objective.head.mlp.parameters())
        optimizer.step()  # AdamW skips a parameter without a gradient: no update, no decay
        assert torch.equal(last.detach(), before) == (step <= 2)
        model.after_optimizer_step(step, 10)


def test_weight_decay_follows_a_cosine_from_train_weight_decay_to_its_end() -> None:
    model, objective = make_dino(weight_decay_end=0.4)
    assert weight_decay_schedule(model) is objective
    values = [objective.scheduled_weight_decay(0.04, p, 10) for p in (0, 5, 10)]
    assert values == pytest.approx([0.04, 0.22, 0.4])
    assert cosine_value(3, 10, 0.04, 0.4) == pytest.approx(0.4 - 0.36 * (1 + math.cos(0.3 * math.pi)) / 2)
    optimizer = torch.optim.AdamW(param_groups(model, 0.04))
    set_weight_decay(optimizer, 0.3)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.3, 0.0]  # biases and norms keep none
    _, constant = make_dino(weight_decay_end=None)
    assert constant.scheduled_weight_decay(0.05, 7, 10) == 0.05


def test_trainer_applies_the_weight_decay_schedule_and_the_export_loads(tmp_path: Path, tiny_images: Path) -> None:
    overrides = [*TINY_IMAGE, f"data.path={tiny_images}", "encoder.num_layers=1", "train.max_steps=3"]
    overrides += ["train.weight_decay=0.04", "objective.weight_decay_end=0.4", "data.local_crops=2"]
    run = pretrain("dino", overrides, tmp_path / "run")
    decays = [r["weight_decay"] for r in read_metrics(run) if "weight_decay" in r]
    # logged after each step: the decay that step used, at schedule positions 0, 1, 2 of 3
    assert decays == pytest.approx([cosine_value(p, 3, 0.04, 0.4) for p in range(3)])
    # the export is the recipe's ResNet, loaded with huggingface_hub's mixin (torch + huggingface_hub only)
    resnet = SmallResNet.from_pretrained(str(run / "export"))
    assert resnet(torch.rand(2, 1, 12, 12)).mean((2, 3)).shape == (2, resnet.out_dim)  # a local crop's size too


class VectorEncoder(Encoder):
    """An MLP on ``[B, 1, 16]`` vector units: the toy of :func:`vector_batch`."""

    hidden_size = 32

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 32))

    def encode(self, batch: Batch, mask: Tensor | None = None, all_layers: bool = False) -> EncoderOutput:
        summary = self.net(batch.units.flatten(1))
        return EncoderOutput(hidden=summary.unsqueeze(1), padding_mask=batch.padding_mask[:, :1], summary=summary)

    def export(self, out_dir: Path) -> None:
        raise NotImplementedError


POINTS = torch.randn(64, 16, generator=torch.Generator().manual_seed(0))


def vector_batch(step: int) -> Batch:
    """Two views of 64 fixed random vectors: noisy copies, new noise every step."""
    g = torch.Generator().manual_seed(step)
    units = [POINTS] + [POINTS + 0.3 * torch.randn(POINTS.shape, generator=g) for _ in range(2)]
    batches = [Batch(units=u.unsqueeze(1), padding_mask=torch.zeros(64, 1, dtype=torch.bool)) for u in units]
    return batches[0].replace(views=tuple(batches[1:]))


def test_loss_decreases() -> None:
    """The whole method learns (EMA teacher, centre, sharpening): the loss falls from its start and the teacher uses
    many prototypes. A tiny encoder's outputs are near-identical at first, and without batch norm in the head they
    collapse onto one prototype before centring makes every target uniform (the failure the paper's sec. 5.3
    describes), so the head here has it (``head_batch_norm``, DINO's ``use_bn_in_head``)."""
    torch.manual_seed(0)
    model, _ = make_dino(VectorEncoder(), head_batch_norm=True, freeze_last_layer_steps=5, base_momentum=0.99)
    first, last = first_last(fit(model, vector_batch, 60, lr=2e-3, optimizer=torch.optim.Adam))
    assert last < 0.8 * first, (first, last)
    logs = model(vector_batch(61)).logs
    assert float(logs["teacher_batch_entropy"]) > 2.0 * float(logs["teacher_entropy"])  # sharp, not one prototype


def test_loss_decreases_with_a_vit_and_local_crops() -> None:
    model, _ = make_dino(head_batch_norm=True, freeze_last_layer_steps=5, base_momentum=0.99)
    batches = lambda step: views_batch(smooth_images(seed=step), num_views=4, seed=step)  # noqa: E731
    first, last = first_last(fit(model, batches, 30, lr=1e-3, optimizer=torch.optim.Adam))
    assert last < 0.95 * first, (first, last)


def test_teacher_centre_and_step_are_saved_and_resume_exactly() -> None:
    settings = {"freeze_last_layer_steps": 2, "teacher_temp_warmup_steps": 4}
    assert_resumes_exactly(
        lambda seed: make_dino(vit(seed=seed), **settings)[0],
        {"objective.centre.center", "objective.step", "objective.teacher.momentum"},
        "objective.teacher.ema.module.projector.last_layer",
    )


def test_builds_from_its_config_defaults_and_needs_views() -> None:
    config = from_dict(DINOConfig, {"name": "dino"}, "objective")
    assert config == DINOConfig() and objective_spec("dino").config_cls is DINOConfig
    assert (config.projector_dim, config.teacher_temp, config.base_momentum, config.weight_decay_end) == (
        65536,
        0.07,
        0.996,
        0.4,
    )
    with torch.device("meta"):  # the paper's 65536 prototypes without the memory
        objective = DINO(config, vit())
    assert objective.head.last_layer.direction.shape == (65536, 256)
    model, _ = make_dino()
    with pytest.raises(ValueError, match="data.views"):
        model(views_batch(smooth_images()).replace(views=None))


@pytest.mark.parametrize(
    ("key", "value"),
    [("teacher_temp", 0.0), ("center_momentum", 1.5), ("freeze_last_layer_steps", -1), ("weight_decay_end", -0.1)],
)
def test_invalid_config_values_name_the_key(key: str, value: float) -> None:
    with pytest.raises(ConfigError, match=f"objective.{key}"):
        from_dict(DINOConfig, {"name": "dino", key: value}, "objective")


# ---------------------------------------------------------------- two processes == one process on the global batch


def rows_of(batch: Batch, rows: slice) -> Batch:
    """This process's share of a batch of views: the same rows of every view."""

    def cut(view: Batch) -> Batch:
        return Batch(units=view.units[rows], padding_mask=view.padding_mask[rows], grid=view.grid)

    return cut(batch).replace(views=tuple(cut(v) for v in batch.views))


def grads_of(model: torch.nn.Module) -> dict[str, Tensor]:
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def two_process_steps(model: SSLModel, batches: list[Batch], rows: slice | None) -> list[tuple[Tensor, dict, dict]]:
    """``(loss, gradients, state)`` after each of the steps on ``batches`` (the local ``rows`` under DDP). No
    optimizer step: the teacher's EMA copies an unchanged student, so each step isolates the centre's update."""
    runner = model if rows is None else DistributedDataParallel(model, find_unused_parameters=True)
    results = []
    for step, batch in enumerate(batches, start=1):
        model.zero_grad(set_to_none=True)
        loss = runner(batch if rows is None else rows_of(batch, rows)).loss
        loss.backward()
        model.after_optimizer_step(step, len(batches))
        state = {k: v.clone() for k, v in model.state_dict().items()}
        results.append((loss.detach(), grads_of(model), state))
    return results


def check_one_vs_two_processes(make: Callable[[], SSLModel], batches: list[Batch], rank: int) -> None:
    """Per step: the mean loss over the processes equals the one-process loss on the global batch, every gradient
    and every piece of state (the centres reduced over the processes) to 1e-5."""
    ref = two_process_steps(make(), batches, None)
    local_b = batches[0].batch_size // WORLD
    ours = two_process_steps(make(), batches, slice(rank * local_b, (rank + 1) * local_b))
    assert_steps_match(ref, ours)


def _dino_two_processes(rank: int) -> None:
    def make() -> SSLModel:
        return make_dino(freeze_last_layer_steps=0)[0]

    batches = [views_batch(smooth_images(seed=s), num_views=4, seed=s) for s in range(3)]  # 8 samples, 2 local crops
    check_one_vs_two_processes(make, batches, rank)


@pytest.mark.timeout(180)
def test_two_processes_match_one_process_on_the_global_batch(tmp_path: Path) -> None:
    run_in_two_processes(_dino_two_processes, tmp_path)
