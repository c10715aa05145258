"""MSN: the loss against lightly's MSNLoss and the official code written out (sharpening, Sinkhorn, me-max), the
random patch dropping, the objective's loss by hand, the schedules, learning, exact resume, the export, and the
settings refused when the recipe loads. Two processes against one: ``test_msn_distributed.py``."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightly.loss import MSNLoss
from lightly.models.modules.heads import MSNProjectionHead
from torch import Tensor
from transformers import AutoImageProcessor, AutoModel

import mmssl.objectives.msn as msn_module
from domains.image.units import image_batch
from mmssl.config import ConfigError, from_dict
from mmssl.encoder import CapabilityError
from mmssl.metrics import read_metrics
from mmssl.objectives import objective_spec
from mmssl.objectives.base import SSLModel
from mmssl.objectives.dino import cosine_value
from mmssl.objectives.msn import (
    MSN,
    MSNConfig,
    drop_patches,
    me_max_penalty,
    msn_loss,
    msn_projector,
    msn_targets,
)
from mmssl.optim import param_groups
from mmssl.pretrain import pretrain
from mmssl.recipe import load_recipe
from mmssl.registry import DOMAINS
from mmssl.teacher import RunLinearSchedule
from mmssl.types import Batch
from tests.conftest import TINY_IMAGE
from tests.fitting import first_last, fit
from tests.mmssl.objectives.loss_checks import assert_float32_under_bf16_autocast, assert_same_loss_and_grads
from tests.mmssl.objectives.resume_checks import assert_resumes_exactly
from tests.mmssl.objectives.view_fixtures import check_output, smooth_images, views_batch, vit

B, P, K = 8, 6, 5
SMALL = {"projector_hidden_dim": 48, "projector_dim": 16, "num_prototypes": 16}  # published: 2048, 256, 1024


def embeddings(seed: int, views: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(anchors [views B, P], targets [B, P], prototypes [K, P])`` float64; anchors and prototypes take a
    gradient."""
    g = torch.Generator().manual_seed(seed)
    anchors = torch.randn(views * B, P, generator=g, dtype=torch.float64).requires_grad_()
    targets = torch.randn(B, P, generator=g, dtype=torch.float64)
    prototypes = torch.randn(K, P, generator=g, dtype=torch.float64).requires_grad_()
    return anchors, targets, prototypes


def ours(anchors: Tensor, targets: Tensor, prototypes: Tensor, iterations: int = 3, weight: float = 1.0) -> Tensor:
    q = msn_targets(targets, prototypes, 0.1, 0.25, iterations)
    return msn_loss(anchors.unflatten(0, (-1, B)), q, prototypes, 0.1, weight)[0]


# ---------------------------------------------------------------- the loss


@pytest.mark.parametrize("views", [1, 3])
@pytest.mark.parametrize(("iterations", "weight"), [(3, 1.0), (0, 1.0), (3, 0.0), (0, 0.0)])
def test_loss_matches_lightly(views: int, iterations: int, weight: float) -> None:
    anchors, targets, prototypes = embeddings(views, views)
    ref_fn = MSNLoss(temperature=0.1, sinkhorn_iterations=iterations, regularization_weight=weight)
    ref = ref_fn(anchors, targets, prototypes, target_sharpen_temperature=0.25)
    assert_same_loss_and_grads(ours(anchors, targets, prototypes, iterations, weight), ref, anchors, prototypes)


def official_sinkhorn(q: Tensor, iterations: int = 3) -> Tensor:
    """``distributed_sinkhorn`` of the official MSN code (src/losses.py), one process, written out."""
    q = q.T.clone()
    b, k = q.shape[1], q.shape[0]
    q /= q.sum()
    for _ in range(iterations):
        q /= q.sum(dim=1, keepdim=True)
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= b
    return (q * b).T


def test_loss_is_the_official_msn_loss() -> None:
    """``init_msn_loss`` of the official code (Assran et al. 2022): soft nearest neighbours to one-hot prototype
    labels, ``p^(1/T)`` sharpening, Sinkhorn, ``H(targets, probs)`` and ``log K - H(mean probs)``."""
    anchors, targets, prototypes = embeddings(7, 2)
    labels = torch.eye(K, dtype=torch.float64)

    def snn(query: Tensor) -> Tensor:
        return F.softmax(F.normalize(query) @ F.normalize(prototypes).T / 0.1, dim=1) @ labels

    probs = snn(anchors)
    with torch.no_grad():
        sharp = snn(targets) ** 4.0
        q = official_sinkhorn(sharp / sharp.sum(1, keepdim=True)).repeat(2, 1)
    ce = torch.mean(torch.sum(torch.log(probs ** (-q)), dim=1))
    avg = probs.mean(0)
    me_max = -torch.sum(torch.log(avg ** (-avg))) + math.log(K)
    assert_same_loss_and_grads(ours(anchors, targets, prototypes), ce + me_max, anchors, prototypes)


def test_targets_are_sharpened_then_equipartitioned() -> None:
    _, targets, prototypes = embeddings(1, 1)
    cos = F.normalize(targets) @ F.normalize(prototypes).T
    sharp = msn_targets(targets, prototypes, 0.1, 0.25, 0)
    torch.testing.assert_close(sharp, F.softmax(cos / 0.025, dim=1))  # softmax(cos / tau)^(1/T), renormalised
    q = msn_targets(targets, prototypes, 0.1, 0.25, 3)
    torch.testing.assert_close(q.sum(1), torch.ones(B, dtype=torch.float64))
    torch.testing.assert_close(q, official_sinkhorn(sharp))
    many = msn_targets(targets, prototypes, 0.5, 1.0, 300)  # converged: every prototype holds B / K samples
    torch.testing.assert_close(many.sum(0), torch.full((K,), B / K, dtype=torch.float64), rtol=1e-4, atol=1e-4)
    assert not msn_targets(targets, prototypes.requires_grad_()).requires_grad


def test_me_max_is_zero_for_uniform_use_and_log_k_for_one_prototype() -> None:
    uniform = torch.eye(4).repeat(2, 1)  # 8 anchors, each prototype twice
    assert float(me_max_penalty(uniform)) == pytest.approx(0.0, abs=1e-6)
    one = F.one_hot(torch.zeros(8, dtype=torch.long), 4).float()  # with an exact zero: xlogy(0, 0) = 0
    assert float(me_max_penalty(one)) == pytest.approx(math.log(4))


def test_loss_runs_in_float32_under_bf16_autocast() -> None:
    prototypes = torch.randn(8, 32, generator=torch.Generator().manual_seed(0))
    assert_float32_under_bf16_autocast(lambda a, t: msn_loss(a.unsqueeze(0), msn_targets(t, prototypes), prototypes)[0])


@pytest.mark.parametrize(
    ("anchors", "targets", "prototypes", "message"),
    [
        ((B, P), (B, K), (K, P), "do not fit"),
        ((2, B, P), (B, K), (K, P + 1), "do not fit"),
        ((2, B, P), (B, K + 1), (K, P), r"targets must be \[B, K\]"),
    ],
)
def test_loss_names_bad_shapes(anchors: tuple, targets: tuple, prototypes: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        msn_loss(torch.zeros(anchors), torch.zeros(targets), torch.zeros(prototypes))
    with pytest.raises(ValueError, match="temperature"):
        msn_loss(torch.zeros(2, B, P), torch.zeros(B, K), torch.zeros(K, P), temperature=0.0)


# ---------------------------------------------------------------- masking and the head


def test_drop_patches_keeps_a_random_subset_of_each_image() -> None:
    view = views_batch(smooth_images()).views[0]  # 8 images of 4x4 patches
    torch.manual_seed(0)
    kept = drop_patches(view, 0.15)
    assert kept.shape == (8, 13)  # floor(16 x 0.85), as the official patch_drop
    assert all(row.unique().numel() == 13 and bool((row.diff() > 0).all()) for row in kept)
    assert len({tuple(row.tolist()) for row in kept}) > 1  # per image, not one subset for the batch
    assert drop_patches(view, 0.0).tolist() == [list(range(16))] * 8
    with pytest.raises(ValueError, match=r"objective.mask_ratio=0.95 drops all 16 units"):
        drop_patches(view, 0.95)
    padded = view.replace(padding_mask=view.padding_mask.clone().index_fill_(1, torch.tensor([15]), True))
    with pytest.raises(ValueError, match="padded"):
        drop_patches(padded, 0.15)


def test_projector_is_lightlys_msn_projection_head() -> None:
    torch.manual_seed(0)
    ref = MSNProjectionHead(12, 24, 8).eval()
    head = msn_projector(12, 24, 8, batch_norm=True).eval()
    head.load_state_dict(dict(zip(head.state_dict(), ref.state_dict().values())))  # same layers, same order
    x = torch.randn(5, 12)
    torch.testing.assert_close(head(x), ref(x))
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in msn_projector(12, 24, 8, batch_norm=False))


# ---------------------------------------------------------------- the objective


def make_msn(encoder=None, **settings) -> tuple[SSLModel, MSN]:
    torch.manual_seed(1)
    enc = encoder if encoder is not None else vit()
    objective = MSN(MSNConfig(**{**SMALL, **settings}), enc)
    return SSLModel(enc, objective), objective


def fixed_drops(monkeypatch: pytest.MonkeyPatch) -> list[Tensor]:
    """Make the objective keep the first ``K`` units of every view (``K`` as the ratio says); returns the indices
    it used, in call order."""
    used: list[Tensor] = []

    def first_units(view: Batch, ratio: float) -> Tensor:
        b, t = view.padding_mask.shape
        used.append(torch.arange(int(t * (1 - ratio))).expand(b, -1))
        return used[-1]

    monkeypatch.setattr(msn_module, "drop_patches", first_units)
    return used


def test_loss_by_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    """Anchors: the second global view and the focal views, patches dropped, through one batch norm; target: the
    first view, whole, through the teacher."""
    model, objective = make_msn(mask_ratio=0.3)
    batch = views_batch(smooth_images(), num_views=4)  # 2 global 16x16 views, 2 local 8x8 ones
    used = fixed_drops(monkeypatch)
    out = model(batch)
    check_output(out)
    assert [u.shape for u in used] == [(8, 11), (8, 2), (8, 2)]  # 16 and 4 patches, 30% dropped (floored)
    enc = model.encoder
    cls = [enc.encode_visible(v, u).pooled() for v, u in zip(batch.views[1:], used)]
    anchors = objective.projector(torch.cat(cls)).unflatten(0, (3, -1))
    with torch.no_grad():
        branch = objective.teacher.module
        target = branch.projector(branch.encoder.encode(batch.views[0]).pooled())
    q = msn_targets(target, objective.prototypes, 0.1, 0.25, 3)
    loss, cross, me_max = msn_loss(anchors, q, objective.prototypes, 0.1, 1.0)
    torch.testing.assert_close(out.loss, loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.terms["msn"], cross, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.terms["me_max"], me_max, rtol=1e-5, atol=1e-5)
    assert 0 < float(out.logs["prototypes_used"]) <= 1 and 1 / 16 <= float(out.logs["target_max"]) <= 1


def test_teacher_takes_no_gradient_and_follows_msns_linear_schedule() -> None:
    schedule = RunLinearSchedule(0.996, 1.0, 1.25)  # over 1.25 x the run: 0.9992 at its end
    assert [schedule(p, 100) for p in (0, 50, 100, 200)] == pytest.approx([0.996, 0.9976, 0.9992, 1.0])
    model, objective = make_msn(base_momentum=0.9, final_momentum=1.0)
    model(views_batch(smooth_images(), num_views=3)).loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in objective.teacher.parameters())
    assert objective.prototypes.grad is not None and objective.prototypes.grad.abs().sum() > 0
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(0.1)
    teacher = copy.deepcopy(objective.teacher.module.state_dict())
    model.after_optimizer_step(3, 8)  # schedule position 2 of 8 x 1.25 = 10 steps
    momentum = 0.9 + 0.1 * 2 / 10
    assert float(objective.teacher.momentum) == pytest.approx(momentum)
    for name, p in model.encoder.named_parameters():
        expected = momentum * teacher[f"encoder.{name}"] + (1 - momentum) * p.detach()
        torch.testing.assert_close(objective.teacher.module.state_dict()[f"encoder.{name}"], expected)


def test_weight_decay_follows_a_cosine_over_the_stretched_run() -> None:
    _, official = make_msn()  # the official T_max: 1.25 x the run, so the last step's decay is short of 0.4
    assert official.scheduled_weight_decay(0.04, 3, 8) == cosine_value(3, 10, 0.04, 0.4)
    assert official.scheduled_weight_decay(0.04, 8, 8) == pytest.approx(0.4 - 0.36 * (1 + math.cos(0.8 * math.pi)) / 2)
    _, objective = make_msn(schedule_stretch=1.0)
    assert [objective.scheduled_weight_decay(0.04, p, 10) for p in (0, 5, 10)] == pytest.approx([0.04, 0.22, 0.4])
    _, constant = make_msn(weight_decay_end=None)
    assert constant.scheduled_weight_decay(0.05, 7, 10) == 0.05


def test_prototypes_are_not_weight_decayed() -> None:
    """The official code keeps the prototypes out of AdamW's decay; every other matrix is decayed."""
    model, objective = make_msn()
    decay, no_decay = param_groups(model, 0.04)
    assert any(p is objective.prototypes for p in no_decay["params"])
    assert not any(p is objective.prototypes for p in decay["params"])
    assert all(p.ndim >= 2 for p in decay["params"]) and len(decay["params"]) > 10


def test_loss_decreases_with_a_vit_and_focal_views() -> None:
    model, _ = make_msn(base_momentum=0.99)
    batches = lambda step: views_batch(smooth_images(seed=step), num_views=4, seed=step)  # noqa: E731
    losses = fit(model, batches, 30, lr=1e-3, optimizer=torch.optim.Adam, seed=lambda s: s)
    first, last = first_last(losses)
    assert last < 0.9 * first, (first, last)


def test_teacher_and_prototypes_are_saved_and_resume_exactly() -> None:
    assert_resumes_exactly(
        lambda seed: make_msn(vit(seed=seed))[0],
        {"objective.prototypes", "objective.teacher.momentum"},
        "objective.teacher.ema.module.projector.",
    )


def test_builds_from_its_config_defaults_and_needs_views_and_a_vit() -> None:
    config = from_dict(MSNConfig, {"name": "msn"}, "objective")
    assert config == objective_spec("msn").config_cls()
    assert (config.num_prototypes, config.mask_ratio, config.sharpen_temperature, config.sinkhorn_iterations) == (
        1024,
        0.15,
        0.25,
        3,
    )
    with torch.device("meta"):  # the paper's head and 1024 prototypes without the memory
        objective = MSN(config, vit())
    assert objective.prototypes.shape == (1024, 256)
    assert [m.out_features for m in objective.projector if isinstance(m, torch.nn.Linear)] == [2048, 2048, 256]
    model, _ = make_msn()
    with pytest.raises(ValueError, match="data.views"):
        model(image_batch(smooth_images(), 4))
    from domains.image.encoders import ImageEncoderConfig, build_image_encoder

    resnet = build_image_encoder(ImageEncoderConfig(arch="resnet", resnet_width=4), (16, 16), channels=1)
    with pytest.raises(CapabilityError, match="cannot encode a subset"):
        make_msn(resnet)[0](views_batch(smooth_images()))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("mask_ratio", 1.0),
        ("mask_ratio", -0.1),
        ("num_prototypes", 0),
        ("temperature", 0.0),
        ("sharpen_temperature", 0.0),
        ("sinkhorn_iterations", -1),
        ("me_max_weight", -1.0),
        ("base_momentum", 1.5),
        ("schedule_stretch", 0.0),
        ("weight_decay_end", -0.1),
    ],
)
def test_invalid_config_values_name_the_key(key: str, value: float) -> None:
    with pytest.raises(ConfigError, match=f"objective.{key}"):
        from_dict(MSNConfig, {"name": "msn", key: value}, "objective")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["encoder.arch=resnet"], r"objective.name=msn needs Encoder.encode_visible.*use encoder.arch=vit"),
        (["objective.mask_ratio=1.0"], r"objective.mask_ratio must be in \[0, 1\)"),
        (["objective.num_prototypes=0"], "objective.num_prototypes must be > 0"),
        (["objective.mask_ratio=0.9"], r"objective.mask_ratio=0.9 drops all 9 patches of the local crops"),
    ],
)
def test_the_recipe_refuses_settings_that_cannot_run(overrides: list[str], message: str) -> None:
    load_recipe("msn")
    with pytest.raises(ConfigError, match=message):
        load_recipe("msn", overrides)


def test_recipe_runs_with_its_weight_decay_schedule_and_its_export_loads_with_transformers_auto_classes(
    tmp_path: Path, tiny_images: Path
) -> None:
    overrides = [*TINY_IMAGE, f"data.path={tiny_images}", "encoder.num_layers=1", "train.max_steps=4"]
    overrides += ["data.local_crops=2", "objective.num_prototypes=8", "train.weight_decay=0.04"]
    run = pretrain("msn", overrides, tmp_path / "run")
    decays = [r["weight_decay"] for r in read_metrics(run) if "weight_decay" in r]
    assert decays == pytest.approx([cosine_value(p, 5, 0.04, 0.4) for p in range(4)])  # over int(1.25 x 4) steps
    export = run / "export"
    model, processor = AutoModel.from_pretrained(export).eval(), AutoImageProcessor.from_pretrained(export)
    images = np.load(tiny_images)[:2, :, :, None]  # 28x28 grey, channels last
    pixels = processor(list(images), return_tensors="pt", input_data_format="channels_last")["pixel_values"]
    with torch.no_grad():
        cls = model(pixel_values=pixels).last_hidden_state[:, 0]
        ours_ = DOMAINS.get("image").load_encoder(export).eval()
        torch.testing.assert_close(cls, ours_.encode(image_batch(pixels, 4)).pooled(), rtol=1e-5, atol=1e-5)
