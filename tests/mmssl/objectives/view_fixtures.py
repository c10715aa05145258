"""Tiny encoders, augmented-view batches and shared checks for the joint-embedding objective tests,
their EMA teachers (MoCo v2/v3, BYOL) included.

Images are smooth 16x16 random images (4x4 noise upsampled), which a 2-pixel shift leaves
recognisable; views are rolled, noisy copies (global) and 8x8 crops of them (local, multi-crop).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from domains.image.encoders import ImageEncoderConfig, build_image_encoder
from domains.image.units import image_batch
from mmssl.config import ConfigError, from_dict
from mmssl.encoder import Encoder
from mmssl.objectives import objective_spec
from mmssl.objectives.barlow_twins import BarlowTwinsConfig
from mmssl.objectives.base import Objective, SSLModel
from mmssl.objectives.byol import BYOLConfig
from mmssl.objectives.heads import HEAD_SHAPES
from mmssl.objectives.moco_v2 import MoCoV2Config
from mmssl.objectives.moco_v3 import MoCoV3Config
from mmssl.objectives.simclr import SimCLRConfig
from mmssl.objectives.simsiam import SimSiamConfig
from mmssl.objectives.vicreg import VICRegConfig
from mmssl.teacher import cosine_momentum
from mmssl.types import Batch, EncoderOutput, ObjectiveOutput
from tests.fitting import first_last, fit

B, SIZE, PATCH = 8, 16, 4
HEADS = {"projector_hidden_dim": 64, "projector_dim": 32}
CONFIGS = {  # small heads; every other setting is the paper default
    "simclr": SimCLRConfig(**HEADS),
    "moco_v2": MoCoV2Config(queue_size=20, **HEADS),
    "moco_v3": MoCoV3Config(predictor_hidden_dim=48, **HEADS),
    "byol": BYOLConfig(predictor_hidden_dim=48, **HEADS),
    "simsiam": SimSiamConfig(predictor_hidden_dim=16, **HEADS),
    "barlow_twins": BarlowTwinsConfig(**HEADS),
    "vicreg": VICRegConfig(**HEADS),
}
TWO_VIEWS_ONLY = ["moco_v2", "moco_v3", "simsiam", "barlow_twins", "vicreg"]


def vit(seed: int = 0) -> Encoder:
    torch.manual_seed(seed)
    cfg = ImageEncoderConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, patch_size=PATCH)
    return build_image_encoder(cfg, (SIZE, SIZE), channels=1)


def make_objective(name: str, encoder: Encoder) -> Objective:
    torch.manual_seed(1)
    return objective_spec(name).cls(CONFIGS[name], encoder)


def _augment(images: Tensor, g: torch.Generator) -> Tensor:
    """A simple batched view: each image rolled by its own random shift, plus Gaussian noise."""
    shifts = torch.randint(-2, 3, (images.shape[0], 2), generator=g)
    rolled = torch.stack([img.roll(tuple(s.tolist()), dims=(1, 2)) for img, s in zip(images, shifts)])
    return rolled + 0.1 * torch.randn(rolled.shape, generator=g)


def views_batch(images: Tensor, num_views: int = 2, seed: int = 0) -> Batch:
    """Two global views, then local views: 8x8 crops (4 units) of further augmentations."""
    g = torch.Generator().manual_seed(seed)
    views = [image_batch(_augment(images, g), PATCH) for _ in range(2)]
    views += [image_batch(_augment(images, g)[..., 4:12, 4:12], PATCH) for _ in range(num_views - 2)]
    return image_batch(images, PATCH).replace(views=tuple(views))


def smooth_images(seed: int = 0) -> Tensor:
    """Smooth random images (4x4 noise upsampled), which a 2-pixel shift leaves recognisable."""
    noise = torch.rand(B, 1, 4, 4, generator=torch.Generator().manual_seed(seed))
    return F.interpolate(noise, size=(SIZE, SIZE), mode="bilinear")


def new_images_every_step(step: int) -> Batch:
    return views_batch(smooth_images(seed=step), seed=step)


class MLPEncoder(Encoder):
    """A tiny encoder for fast learning tests: an MLP on the flattened units of a 2-view batch."""

    hidden_size = 32

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(SIZE * SIZE, 64), nn.ReLU(), nn.Linear(64, self.hidden_size))

    def encode(self, batch: Batch, mask: Tensor | None = None, all_layers: bool = False) -> EncoderOutput:
        summary = self.net(batch.units.flatten(1))
        return EncoderOutput(hidden=summary.unsqueeze(1), padding_mask=batch.padding_mask[:, :1], summary=summary)

    def export(self, out_dir: Path) -> None:
        raise NotImplementedError


def teacher_target(objective: Objective, view: Batch) -> Tensor:
    """The teacher's projection computed from its own encoder and projector."""
    branch = objective.teacher.module
    with torch.no_grad():
        return branch.projector(branch.encoder.encode(view).pooled())


def projections(objective: Objective, encoder: Encoder, views: tuple[Batch, ...]) -> list[Tensor]:
    """``[B, P]`` projections of each view by the student's encoder and the objective's projector."""
    return [objective.projector(encoder.encode(v).pooled()) for v in views]


def check_output(out: ObjectiveOutput) -> None:
    """What every joint-embedding output satisfies: a differentiable loss, detached logs, a sane embedding spread."""
    assert out.loss.requires_grad and all(not v.requires_grad for v in out.logs.values())
    assert 0.0 < float(out.logs["embedding_std"]) <= 1.0


def check_learns_on_an_mlp(name: str) -> None:
    torch.manual_seed(0)
    enc = MLPEncoder()
    model = SSLModel(enc, make_objective(name, enc))
    # MoCo v2's constant 0.99 teacher needs more steps for its keys to move; new images every step,
    # so that its queue holds other images. Step 1 is left out: MoCo's queue starts as random vectors.
    steps, window = (150, 10) if name == "moco_v2" else (40, 5)
    losses = fit(model, new_images_every_step, steps, lr=2e-3, optimizer=torch.optim.Adam)
    first, last = first_last(losses, window, skip=1)
    assert last < first - 0.05 * max(abs(first), 1.0), (first, last)


def check_learns_with_a_vit(name: str) -> None:
    enc = vit()
    model = SSLModel(enc, make_objective(name, enc))
    first, last = first_last(fit(model, new_images_every_step, 25, lr=1e-3, optimizer=torch.optim.Adam))
    assert last < 0.9 * first, (first, last)


def check_builds_from_its_config_defaults(name: str) -> None:
    spec = objective_spec(name)
    config = from_dict(spec.config_cls, {"name": name}, "objective")
    assert config == spec.config_cls() and config.name == name
    with torch.device("meta"):  # the papers' heads (8192-wide for Barlow Twins and VICReg) without the memory
        enc = vit()
        objective = spec.cls(config, enc)
    shape = HEAD_SHAPES[f"{name}_projector"]
    assert objective.projector[0].in_features == enc.hidden_size
    assert objective.projector[-1 - shape.last_batch_norm].out_features == shape.out_dim
    with pytest.raises(ValueError, match="data.views"):
        objective(enc, image_batch(smooth_images(), PATCH))


def check_invalid_config_value_is_named(name: str, key: str, value: float) -> None:
    with pytest.raises(ConfigError, match=f"objective.{key}"):
        from_dict(objective_spec(name).config_cls, {"name": name, key: value}, "objective")
    with pytest.raises(ConfigError, match="unknown key 'objective.temprature'"):
        from_dict(objective_spec(name).config_cls, {"name": name, "temprature": 0.1}, "objective")


# ---------------------------------------------------------------- the EMA teachers of MoCo v2/v3 and BYOL


def teacher_params(objective: Objective) -> dict[str, Tensor]:
    """A copy of the teacher's parameters (its encoder + projector branch), by name."""
    return {k: v.detach().clone() for k, v in objective.teacher.module.named_parameters()}


def scheduled_cosine_momentum(config: object, step: int, max_steps: int = 10) -> float:
    """The momentum of the update after optimizer step ``step``: the cosine schedule at ``step - 1``."""
    momentum = cosine_momentum(step - 1, max_steps, config.base_momentum, config.final_momentum)
    assert (momentum == config.base_momentum) == (step == 1)  # the first update (step 1) uses the base exactly
    return momentum


def check_teacher_takes_no_gradient_and_forward_leaves_it_unchanged(name: str) -> None:
    enc = vit()
    objective = make_objective(name, enc)
    before = teacher_params(objective)
    for seed in range(2):
        objective(enc, views_batch(smooth_images(), seed=seed)).loss.backward()
    teacher = list(objective.teacher.parameters())
    assert teacher and all(not p.requires_grad and p.grad is None for p in teacher)
    assert all(p.grad is not None for p in objective.projector.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.parameters())
    after = teacher_params(objective)  # batch-norm running stats may move; they are copied at each update
    assert all(torch.equal(before[k], after[k]) for k in before)


def check_after_optimizer_step_moves_the_teacher(
    name: str, step: int, momentum_of: Callable[[object, int], float]
) -> None:
    """After optimizer step ``step`` of 10, teacher = m * teacher + (1 - m) * student, m = ``momentum_of(config, step)``."""
    enc = vit()
    objective = make_objective(name, enc)
    objective(enc, views_batch(smooth_images()))  # batch-norm statistics in the student
    with torch.no_grad():  # a student that differs from its teacher
        for p in [*enc.parameters(), *objective.projector.parameters()]:
            p.add_(0.1 * torch.randn_like(p))
    teacher = teacher_params(objective)
    student = {f"encoder.{k}": v.detach().clone() for k, v in enc.named_parameters()}
    student |= {f"projector.{k}": v.detach().clone() for k, v in objective.projector.named_parameters()}
    momentum = momentum_of(objective.config, step)
    objective.after_optimizer_step(enc, step, 10)
    assert set(teacher) == set(student)
    for key, value in teacher_params(objective).items():
        torch.testing.assert_close(value, momentum * teacher[key] + (1 - momentum) * student[key])
    buffers = dict(objective.teacher.module.projector.named_buffers())
    for key, value in objective.projector.named_buffers():
        assert torch.equal(buffers[key], value)
    assert float(objective(enc, views_batch(smooth_images())).logs["momentum"]) == pytest.approx(momentum, rel=1e-7)


def check_teacher_is_saved_and_resumes_exactly(name: str) -> dict[str, Tensor]:
    """Two optimizer steps, then a model built with other weights loads the state and continues identically.

    Returns:
        The saved ``state_dict`` after the two steps.
    """
    model = SSLModel(vit(), make_objective(name, vit()))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for step in range(1, 3):
        loss = model(views_batch(smooth_images(), seed=step)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.after_optimizer_step(step, 10)
    state = copy.deepcopy(model.state_dict())
    assert any(k.startswith("objective.teacher.ema.module.encoder.") for k in state)
    assert "objective.teacher.momentum" in state

    resumed = SSLModel(vit(seed=5), make_objective(name, vit(seed=5)))
    resumed.load_state_dict(state)
    batch = views_batch(smooth_images(), seed=9)
    assert torch.equal(model(batch).loss, resumed(batch).loss)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), resumed.state_dict().values()))
    return state
