"""Joint-embedding objectives: wiring against the functional losses, multi-crop, EMA teachers, queue, learning."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from domains.image.encoders import ImageEncoderConfig, build_image_encoder
from domains.image.units import image_batch
from mmssl.config import ConfigError, from_dict
from mmssl.encoder import Encoder
from mmssl.objectives.base import Objective, SSLModel
from mmssl.objectives.components import HEAD_SHAPES, cosine_momentum
from mmssl.objectives.functional import (
    barlow_twins_loss,
    byol_loss,
    info_nce,
    moco_v3_loss,
    nt_xent,
    simsiam_loss,
    vicreg_loss,
)
from mmssl.objectives.joint_embedding import (
    BarlowTwinsConfig,
    BYOLConfig,
    MoCoV2Config,
    MoCoV3Config,
    SimCLRConfig,
    SimSiamConfig,
    VICRegConfig,
)
from mmssl.registry import OBJECTIVES
from mmssl.types import Batch, EncoderOutput
from tests.fitting import fit, first_last

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
TEACHERS = ["moco_v2", "moco_v3", "byol"]
TWO_VIEWS_ONLY = ["moco_v2", "moco_v3", "simsiam", "barlow_twins", "vicreg"]


def _vit(seed: int = 0) -> Encoder:
    torch.manual_seed(seed)
    cfg = ImageEncoderConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, patch_size=PATCH)
    return build_image_encoder(cfg, (SIZE, SIZE), channels=1)


def _objective(name: str, encoder: Encoder) -> Objective:
    torch.manual_seed(1)
    return OBJECTIVES.get(name).cls(CONFIGS[name], encoder)


def _augment(images: Tensor, g: torch.Generator) -> Tensor:
    """A simple batched view: each image rolled by its own random shift, plus Gaussian noise."""
    shifts = torch.randint(-2, 3, (images.shape[0], 2), generator=g)
    rolled = torch.stack([img.roll(tuple(s.tolist()), dims=(1, 2)) for img, s in zip(images, shifts)])
    return rolled + 0.1 * torch.randn(rolled.shape, generator=g)


def _batch(images: Tensor, num_views: int = 2, seed: int = 0) -> Batch:
    """Two global views, then local views: 8x8 crops (4 units) of further augmentations."""
    g = torch.Generator().manual_seed(seed)
    views = [image_batch(_augment(images, g), PATCH) for _ in range(2)]
    views += [image_batch(_augment(images, g)[..., 4:12, 4:12], PATCH) for _ in range(num_views - 2)]
    return image_batch(images, PATCH, views=tuple(views))


def _images(seed: int = 0) -> Tensor:
    """Smooth random images (4x4 noise upsampled), which a 2-pixel shift leaves recognisable."""
    noise = torch.rand(B, 1, 4, 4, generator=torch.Generator().manual_seed(seed))
    return F.interpolate(noise, size=(SIZE, SIZE), mode="bilinear")


def _new_images_every_step(step: int) -> Batch:
    return _batch(_images(seed=step), seed=step)


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


def _target(objective: Objective, view: Batch) -> Tensor:
    """The teacher's projection computed from its own encoder and projector."""
    branch = objective.teacher.ema.module
    with torch.no_grad():
        return branch.projector(branch.encoder.encode(view).pooled())


def _reference(name: str, objective: Objective, encoder: Encoder, views: tuple[Batch, ...],
               queue: Tensor) -> Tensor:
    """The method's loss from the functional losses, on the objective's own heads."""
    cfg = objective.config
    z1, z2 = (objective.projector(encoder.encode(v).pooled()) for v in views)
    if name == "simclr":
        return nt_xent(z1, z2, cfg.temperature)
    if name == "barlow_twins":
        return barlow_twins_loss(z1, z2, cfg.lambda_offdiag)
    if name == "vicreg":
        return vicreg_loss(z1, z2, cfg.sim_weight, cfg.var_weight, cfg.cov_weight, cfg.eps)[0]
    if name == "moco_v2":
        k1, k2 = (_target(objective, v) for v in views)
        return (info_nce(z1, k2, queue, cfg.temperature) + info_nce(z2, k1, queue, cfg.temperature)) / 2
    p1, p2 = objective.predictor(z1), objective.predictor(z2)
    if name == "simsiam":
        return (simsiam_loss(p1, z2) + simsiam_loss(p2, z1)) / 2
    k1, k2 = (_target(objective, v) for v in views)
    if name == "byol":
        return byol_loss(p1, k2) + byol_loss(p2, k1)
    return moco_v3_loss(p1, k2, cfg.temperature) + moco_v3_loss(p2, k1, cfg.temperature)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_loss_equals_the_functional_loss_of_the_heads(name: str) -> None:
    enc = _vit()
    objective = _objective(name, enc)
    batch = _batch(_images())
    queue = objective.queue.queue.clone() if name == "moco_v2" else None
    out = objective(enc, batch)
    expected = _reference(name, objective, enc, batch.extras["views"], queue)
    torch.testing.assert_close(out.loss, expected)
    assert out.loss.requires_grad and all(not v.requires_grad for v in out.logs.values())
    assert 0.0 < float(out.logs["embedding_std"]) <= 1.0
    if name == "vicreg":
        assert set(out.terms) == {"invariance", "variance", "covariance"}
        cfg = objective.config
        weighted = cfg.sim_weight * out.terms["invariance"] + cfg.var_weight * out.terms["variance"]
        torch.testing.assert_close(out.loss, weighted + cfg.cov_weight * out.terms["covariance"])


def test_simclr_multicrop_pairs_every_view_with_both_global_views() -> None:
    enc = _vit()
    objective = _objective("simclr", enc)
    batch = _batch(_images(), num_views=4)
    out = objective(enc, batch)
    z = [objective.projector(enc.encode(v).pooled()) for v in batch.extras["views"]]
    pairs = [(0, 1), (0, 2), (1, 2), (0, 3), (1, 3)]
    expected = torch.stack([nt_xent(z[i], z[j], objective.config.temperature) for i, j in pairs]).mean()
    torch.testing.assert_close(out.loss, expected)


def test_byol_multicrop_regresses_global_targets_from_every_view() -> None:
    enc = _vit()
    objective = _objective("byol", enc)
    batch = _batch(_images(), num_views=3)
    out = objective(enc, batch)
    views = batch.extras["views"]
    p = [objective.predictor(objective.projector(enc.encode(v).pooled())) for v in views]
    k = [_target(objective, v) for v in views[:2]]  # the teacher sees the global views only
    pairs_sum = byol_loss(p[0], k[1]) + byol_loss(p[1], k[0]) + byol_loss(p[2], k[0]) + byol_loss(p[2], k[1])
    torch.testing.assert_close(out.loss, pairs_sum / 2)


@pytest.mark.parametrize("name", TWO_VIEWS_ONLY)
def test_two_view_methods_reject_local_views(name: str) -> None:
    enc = _vit()
    with pytest.raises(ValueError, match=f"{name} uses exactly two views, got 3"):
        _objective(name, enc)(enc, _batch(_images(), num_views=3))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_missing_views_name_the_recipe_setting(name: str) -> None:
    enc = _vit()
    objective = _objective(name, enc)
    images = _images()
    for batch in (image_batch(images, PATCH), image_batch(images, PATCH, views=(image_batch(images, PATCH),))):
        with pytest.raises(ValueError, match=rf"{name} needs 2 augmented views in batch.extras\['views'\].*data.views"):
            objective(enc, batch)


# ---------------------------------------------------------------- teachers


def _teacher_params(objective: Objective) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in objective.teacher.ema.module.named_parameters()}


@pytest.mark.parametrize("name", TEACHERS)
def test_teacher_takes_no_gradient_and_forward_leaves_it_unchanged(name: str) -> None:
    enc = _vit()
    objective = _objective(name, enc)
    before = _teacher_params(objective)
    for seed in range(2):
        objective(enc, _batch(_images(), seed=seed)).loss.backward()
    teacher = list(objective.teacher.parameters())
    assert teacher and all(not p.requires_grad and p.grad is None for p in teacher)
    assert all(p.grad is not None for p in objective.projector.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.parameters())
    after = _teacher_params(objective)  # batch-norm running stats may move; they are copied at each update
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("name", TEACHERS)
@pytest.mark.parametrize("step", [1, 6])
def test_after_optimizer_step_moves_the_teacher_by_the_scheduled_momentum(name: str, step: int) -> None:
    enc = _vit()
    objective = _objective(name, enc)
    objective(enc, _batch(_images()))  # batch-norm statistics in the student
    with torch.no_grad():  # a student that differs from its teacher
        for p in [*enc.parameters(), *objective.projector.parameters()]:
            p.add_(0.1 * torch.randn_like(p))
    teacher = _teacher_params(objective)
    student = {f"encoder.{k}": v.detach().clone() for k, v in enc.named_parameters()}
    student |= {f"projector.{k}": v.detach().clone() for k, v in objective.projector.named_parameters()}
    cfg = objective.config
    if name == "moco_v2":
        momentum = cfg.momentum
    else:  # the first update (step 1) uses the base momentum exactly
        momentum = cosine_momentum(step - 1, 10, cfg.base_momentum, cfg.final_momentum)
        assert (momentum == cfg.base_momentum) == (step == 1)
    objective.after_optimizer_step(enc, step, 10)
    assert set(teacher) == set(student)
    for key, value in _teacher_params(objective).items():
        torch.testing.assert_close(value, momentum * teacher[key] + (1 - momentum) * student[key])
    buffers = dict(objective.teacher.ema.module.projector.named_buffers())
    for key, value in objective.projector.named_buffers():
        assert torch.equal(buffers[key], value)
    assert float(objective(enc, _batch(_images())).logs["momentum"]) == pytest.approx(momentum, rel=1e-7)


@pytest.mark.parametrize("name", TEACHERS)
def test_teacher_and_queue_are_saved_and_resume_exactly(name: str) -> None:
    model = SSLModel(_vit(), _objective(name, _vit()))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for step in range(1, 3):
        loss = model(_batch(_images(), seed=step)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.after_optimizer_step(step, 10)
    state = copy.deepcopy(model.state_dict())
    assert any(k.startswith("objective.teacher.ema.module.encoder.") for k in state)
    assert "objective.teacher.momentum" in state
    if name == "moco_v2":
        assert {"objective.queue.queue", "objective.queue.ptr"} <= set(state)
        assert int(state["objective.queue.ptr"]) == (2 * 2 * B) % 20  # two steps of 2B keys in a queue of 20

    resumed = SSLModel(_vit(seed=5), _objective(name, _vit(seed=5)))
    resumed.load_state_dict(state)
    batch = _batch(_images(), seed=9)
    assert torch.equal(model(batch).loss, resumed(batch).loss)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), resumed.state_dict().values()))


def test_moco_v2_enqueues_both_views_keys_after_the_loss_in_training_only() -> None:
    enc = _vit()
    objective = _objective("moco_v2", enc)
    batch = _batch(_images())
    v1, v2 = batch.extras["views"]
    objective(enc, batch)
    keys = F.normalize(torch.cat([_target(objective, v1), _target(objective, v2)]), dim=1)
    torch.testing.assert_close(objective.queue.queue[: 2 * B], keys)
    assert int(objective.queue.ptr) == 2 * B
    queue = objective.queue.queue.clone()
    objective.eval()
    objective(enc, batch)
    assert torch.equal(objective.queue.queue, queue) and int(objective.queue.ptr) == 2 * B


# ---------------------------------------------------------------- learning


@pytest.mark.parametrize("name", list(CONFIGS))
def test_loss_decreases(name: str) -> None:
    torch.manual_seed(0)
    enc = MLPEncoder()
    model = SSLModel(enc, _objective(name, enc))
    # MoCo v2's constant 0.99 teacher needs more steps for its keys to move; new images every step,
    # so that its queue holds other images. Step 1 is left out: MoCo's queue starts as random vectors.
    steps, window = (150, 10) if name == "moco_v2" else (40, 5)
    losses = fit(model, _new_images_every_step, steps, lr=2e-3, optimizer=torch.optim.Adam)
    first, last = first_last(losses, window, skip=1)
    assert last < first - 0.05 * max(abs(first), 1.0), (first, last)


@pytest.mark.parametrize("name", ["simclr", "byol", "barlow_twins"])  # one method per family
def test_loss_decreases_with_a_vit(name: str) -> None:
    enc = _vit()
    model = SSLModel(enc, _objective(name, enc))
    first, last = first_last(fit(model, _new_images_every_step, 25, lr=1e-3, optimizer=torch.optim.Adam))
    assert last < 0.9 * first, (first, last)


# ---------------------------------------------------------------- registry and config


@pytest.mark.parametrize("name", list(CONFIGS))
def test_each_name_builds_from_its_config_defaults(name: str) -> None:
    spec = OBJECTIVES.get(name)
    config = from_dict(spec.config_cls, {"name": name}, "objective")
    assert config == spec.config_cls() and config.name == name
    with torch.device("meta"):  # the papers' heads (8192-wide for Barlow Twins and VICReg) without the memory
        enc = _vit()
        objective = spec.cls(config, enc)
    shape = HEAD_SHAPES[f"{name}_projector"]
    assert objective.projector[0].in_features == enc.hidden_size
    assert objective.projector[-1 - shape.last_batch_norm].out_features == shape.out_dim
    with pytest.raises(ValueError, match="data.views"):
        objective(enc, image_batch(_images(), PATCH))


@pytest.mark.parametrize(("name", "key", "value"), [
    ("simclr", "temperature", 0.0), ("moco_v2", "momentum", 1.5), ("moco_v2", "queue_size", 0),
    ("byol", "base_momentum", -0.1), ("barlow_twins", "lambda_offdiag", -1.0), ("vicreg", "var_weight", -1.0),
    ("simsiam", "predictor_hidden_dim", 0),
])
def test_invalid_config_values_name_the_key(name: str, key: str, value: float) -> None:
    with pytest.raises(ConfigError, match=f"objective.{key}"):
        from_dict(OBJECTIVES.get(name).config_cls, {"name": name, key: value}, "objective")
    with pytest.raises(ConfigError, match="unknown key 'objective.temprature'"):
        from_dict(OBJECTIVES.get(name).config_cls, {"name": name, "temprature": 0.1}, "objective")
