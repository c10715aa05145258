"""iBOT: the patch loss against lightly's IBOTPatchLoss and the paper's iBOTLoss, masks, shared or separate heads,
the objective's loss by hand, learning, exact resume, and two processes against one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightly.loss import IBOTPatchLoss
from torch import Tensor
from transformers import AutoImageProcessor, AutoModel

import mmssl.objectives.ibot as ibot_module
from domains.image.units import image_batch
from mmssl.config import ConfigError, from_dict
from mmssl.objectives.base import SSLModel
from mmssl.objectives.dino import TeacherCentre, dino_loss
from mmssl.objectives.ibot import IBOT, IBOTConfig, TokenBranch, ibot_masks, ibot_patch_loss
from mmssl.pretrain import pretrain
from mmssl.registry import DOMAINS
from mmssl.types import Batch
from tests.conftest import TINY_IMAGE
from tests.fitting import first_last, fit
from tests.mmssl.objectives.loss_checks import assert_float32_under_bf16_autocast, run_in_two_processes
from tests.mmssl.objectives.resume_checks import assert_resumes_exactly
from tests.mmssl.objectives.test_dino import check_one_vs_two_processes
from tests.mmssl.objectives.view_fixtures import smooth_images, views_batch, vit

K, T = 12, 6
SMALL = {"projector_hidden_dim": 48, "bottleneck_dim": 16, "projector_dim": 32}  # published: 2048, 256, 8192


def scores(seed: int, *shape: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_()


def fixed_mask(n: int, t: int, seed: int = 0) -> Tensor:
    """``[n, t]``: the first image unmasked, the others with 1 to t - 1 masked patches."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(n, t, generator=g) < 0.4
    mask[0] = False
    mask[1:, 0] = True
    return mask


# ---------------------------------------------------------------- the patch loss


def test_patch_loss_matches_lightly() -> None:
    teacher, student, mask = scores(0, 4, T, K), scores(1, 4, T, K), fixed_mask(4, T)
    center = 0.2 * torch.randn(K, dtype=torch.float64)
    ref_fn = IBOTPatchLoss(output_dim=K, teacher_temp=0.04, student_temp=0.1).double()
    ref_fn.center.center = center.view(1, K).clone()
    ref = ref_fn(teacher[mask].detach(), student[mask], mask.view(4, 2, 3), teacher_temp=0.04)
    ours = ibot_patch_loss(teacher[mask], student[mask], mask, center, 0.04, 0.1)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-8)
    for a, b in zip(torch.autograd.grad(ours, student), torch.autograd.grad(ref, student)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)


def reference_ibot_loss(
    s_cls: list[Tensor],
    s_patch: list[Tensor],
    t_cls: list[Tensor],
    t_patch: list[Tensor],
    masks: list[Tensor],
    centers: tuple[Tensor, Tensor],
    temps: tuple[float, float],
) -> Tensor:
    """The official ``iBOTLoss.forward`` (Zhou et al. 2022, main_ibot.py) for lambda1 = lambda2 = 1, written out."""
    (c_cls, c_patch), (tt, tp) = centers, temps
    q_cls = [F.softmax((t - c_cls) / tt, dim=-1) for t in t_cls]
    q_patch = [F.softmax((t - c_patch) / tp, dim=-1) for t in t_patch]
    loss1, n1, loss2, n2 = 0.0, 0, 0.0, 0
    for q in range(len(q_cls)):
        for v in range(len(s_cls)):
            if v == q:
                per_patch = torch.sum(-q_patch[q] * F.log_softmax(s_patch[v] / 0.1, dim=-1), dim=-1)
                m = masks[v].double()
                loss2 = loss2 + (torch.sum(per_patch * m, dim=-1) / m.sum(dim=-1).clamp(min=1.0)).mean()
                n2 += 1
            else:
                loss1 = loss1 + torch.sum(-q_cls[q] * F.log_softmax(s_cls[v] / 0.1, dim=-1), dim=-1).mean()
                n1 += 1
    return loss1 / n1 + loss2 / n2


def test_cls_and_patch_losses_are_the_papers_ibot_loss() -> None:
    b = 3
    s_cls, t_cls = scores(0, 4, b, K), scores(1, 2, b, K)  # 2 global + 2 local views
    s_patch, t_patch = scores(2, 2 * b, T, K), scores(3, 2 * b, T, K)
    mask = fixed_mask(2 * b, T)
    c_cls, c_patch = torch.randn(K, dtype=torch.float64), torch.randn(K, dtype=torch.float64)
    ours = dino_loss(t_cls, s_cls, c_cls, 0.04, 0.1) + ibot_patch_loss(
        t_patch[mask], s_patch[mask], mask, c_patch, 0.05, 0.1
    )
    ref = reference_ibot_loss(
        list(s_cls),
        list(s_patch.chunk(2)),
        list(t_cls),
        list(t_patch.chunk(2)),
        list(mask.chunk(2)),
        (c_cls, c_patch),
        (0.04, 0.05),
    )
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-8)
    grads = torch.autograd.grad(ours, (s_cls, s_patch)), torch.autograd.grad(ref, (s_cls, s_patch))
    for a, r in zip(*grads):
        torch.testing.assert_close(a, r, rtol=1e-6, atol=1e-8)


def test_patch_centre_is_the_mean_over_every_teacher_patch() -> None:
    teacher = torch.randn(4, T, K)
    centre = TeacherCentre(K, 0.9)
    centre.accumulate(teacher.mean(1))  # what the objective accumulates: each image's mean patch score
    centre.update()
    torch.testing.assert_close(centre.center, 0.1 * teacher.sum(1).sum(0) / (4 * T))  # iBOT's update_center


def test_patch_loss_runs_in_float32_under_bf16_autocast_and_names_bad_shapes() -> None:
    mask = torch.ones(2, 8, dtype=torch.bool)
    assert_float32_under_bf16_autocast(lambda a, b: ibot_patch_loss(a, b, mask, torch.zeros(32), 0.04, 0.1))
    with pytest.raises(ValueError, match="M = 16 masked patches"):
        ibot_patch_loss(torch.zeros(15, 32), torch.zeros(15, 32), mask, torch.zeros(32), 0.04, 0.1)
    with pytest.raises(ValueError, match="center must be"):
        ibot_patch_loss(torch.zeros(16, 32), torch.zeros(16, 32), mask, torch.zeros(31), 0.04, 0.1)


def test_masks_are_blocks_on_a_share_of_the_images() -> None:
    view = views_batch(smooth_images()).views[0]  # 8 images of 4x4 patches
    torch.manual_seed(0)
    assert not ibot_masks(view, 0.0, (0.1, 0.5), 2).any()
    masks = ibot_masks(view, 1.0, (0.25, 0.5), 2)
    counts = masks.sum(1)
    assert masks.shape == (8, 16) and bool((counts >= 4).all()) and bool((counts <= 8).all())
    torch.manual_seed(1)
    half = ibot_masks(view, 0.5, (0.25, 0.5), 2)
    assert 0 < int(half.any(1).sum()) < 8
    with pytest.raises(ValueError, match="2-D grid"):
        ibot_masks(view.replace(grid=None), 0.5, (0.1, 0.5), 4)


# ---------------------------------------------------------------- the objective


def make_ibot(encoder=None, **settings) -> tuple[SSLModel, IBOT]:
    torch.manual_seed(1)
    enc = encoder if encoder is not None else vit()
    objective = IBOT(IBOTConfig(**{**SMALL, **settings}), enc)
    return SSLModel(enc, objective), objective


def with_masks(monkeypatch: pytest.MonkeyPatch, masks: list[Tensor]) -> None:
    """Make the objective draw ``masks`` (one per global view, in turn) instead of random ones."""
    drawn = iter(masks * 100)
    monkeypatch.setattr(ibot_module, "ibot_masks", lambda view, *args: next(drawn)[: view.batch_size])


def test_loss_by_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    model, objective = make_ibot(freeze_last_layer_steps=0, cls_weight=0.5, patch_weight=2.0)
    batch = views_batch(smooth_images(), num_views=3)
    masks = [fixed_mask(8, 16, seed) for seed in (0, 1)]
    with_masks(monkeypatch, masks)
    out = model(batch)
    enc, head = model.encoder, objective.head
    student_cls, student_patch = [], []
    for view, mask in zip(batch.views[:2], masks):
        encoded = enc.encode(view, mask)  # masked patches replaced by the mask token
        student_cls.append(head.dino(encoded.pooled()))
        student_patch.append(head.patch_last_layer(head.dino.bottleneck(encoded.hidden))[mask])
    student_cls.append(head.dino(enc.encode(batch.views[2]).pooled()))  # the local view: unmasked
    with torch.no_grad():
        t_enc, t_head = objective.teacher.module.encoder, objective.teacher.module.head
        teacher = [t_enc.encode(v) for v in batch.views[:2]]  # the teacher: unmasked
        t_cls = torch.stack([t_head.dino(t.pooled()) for t in teacher])
        t_patch = torch.cat([t_head.dino(t.hidden)[m] for t, m in zip(teacher, masks)])
    cls = dino_loss(t_cls, torch.stack(student_cls), torch.zeros(32), 0.04, 0.1)
    patch = ibot_patch_loss(t_patch, torch.cat(student_patch), torch.cat(masks), torch.zeros(32), 0.04, 0.1)
    torch.testing.assert_close(out.terms["cls"], cls, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.terms["patch"], patch, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.loss, 0.5 * cls + 2.0 * patch, rtol=1e-5, atol=1e-5)


def test_shared_or_separate_patch_head() -> None:
    _, shared = make_ibot()
    assert shared.head.patch_layer is None and shared.head.patch_last_layer is shared.head.dino.last_layer
    _, separate = make_ibot(shared_head=False, patch_projector_dim=24)
    assert separate.head.patch_last_layer.direction.shape == (24, 16)
    assert separate.patch_centre.center.shape == (24,) and separate.centre.center.shape == (32,)
    patches = torch.randn(2, 5, 32)
    select = torch.rand(2, 5) < 0.5
    cls, selected, mean = separate.head(torch.randn(2, 32), patches, select, mean=True)
    full = separate.head.patch_last_layer(separate.head.dino.bottleneck(patches))  # [2, 5, 24]
    assert cls.shape == (2, 32)
    torch.testing.assert_close(selected, full[select], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mean, full.mean(1), rtol=1e-5, atol=1e-6)  # the centre's mean, from the bottleneck
    _, only_selected, no_mean = separate.head(torch.randn(2, 32), patches, select)  # the student: MLP at select only
    assert no_mean is None
    torch.testing.assert_close(only_selected, full[select], rtol=1e-5, atol=1e-6)


def test_frozen_last_layers_get_no_gradient() -> None:
    model, objective = make_ibot(shared_head=False, freeze_last_layer_steps=1)
    model(views_batch(smooth_images())).loss.backward()
    frozen = [objective.head.dino.last_layer.direction, objective.head.patch_layer.direction]
    assert all(p.grad is None for p in frozen)
    assert any(p.grad is not None for p in model.encoder.parameters())
    model.after_optimizer_step(1, 10)
    model.zero_grad()
    model(views_batch(smooth_images())).loss.backward()
    assert all(p.grad is not None for p in frozen)


def test_a_resnet_is_refused_with_the_setting_to_change() -> None:
    from domains.image.encoders import ImageEncoderConfig, build_image_encoder

    enc = build_image_encoder(ImageEncoderConfig(arch="resnet", resnet_width=4), (16, 16), channels=1)
    model, _ = make_ibot(enc, mask_probability=1.0)
    with pytest.raises(ValueError, match="encoder.arch=vit"):
        model(views_batch(smooth_images()))


def test_loss_decreases_with_a_vit_and_local_crops() -> None:
    """With batch norm in the head (see ``test_dino.test_loss_decreases``: a tiny ViT's outputs are near-identical
    at first), the [CLS] and patch terms fall together under the EMA teacher and the centres."""
    model, _ = make_ibot(head_batch_norm=True, freeze_last_layer_steps=5, base_momentum=0.99)
    batches = lambda step: views_batch(smooth_images(seed=step), num_views=4, seed=step)  # noqa: E731
    first, last = first_last(fit(model, batches, 30, lr=1e-3, optimizer=torch.optim.Adam, seed=lambda s: s))
    assert last < 0.95 * first, (first, last)


def test_student_distils_a_fixed_teacher() -> None:
    """The paper's head (no batch norm), teacher and centres held fixed: the student learns the sharpened targets,
    [CLS] and masked patches alike."""
    settings = {
        "freeze_last_layer_steps": 0,
        "base_momentum": 1.0,
        "center_momentum": 1.0,
        "patch_center_momentum": 1.0,
    }
    model, _ = make_ibot(**settings)
    batches = lambda step: views_batch(smooth_images(seed=step), num_views=4, seed=step)  # noqa: E731
    first, last = first_last(fit(model, batches, 25, lr=1e-3, optimizer=torch.optim.Adam, seed=lambda s: s))
    assert last < 0.8 * first, (first, last)


def test_teacher_centres_and_step_are_saved_and_resume_exactly() -> None:
    settings = {"freeze_last_layer_steps": 2, "teacher_temp_warmup_steps": 4, "shared_head": False}
    assert_resumes_exactly(
        lambda seed: make_ibot(vit(seed=seed), **settings)[0],
        {"objective.centre.center", "objective.patch_centre.center", "objective.step"},
        "objective.teacher.ema.module.head.patch_layer",
    )


def test_builds_from_its_config_defaults() -> None:
    config = from_dict(IBOTConfig, {"name": "ibot", "mask_ratio": [0.1, 0.5]}, "objective")
    assert config == IBOTConfig() and (config.projector_dim, config.shared_head, config.mask_probability) == (
        8192,
        True,
        0.5,
    )
    with torch.device("meta"):
        objective = IBOT(config, vit())
    assert isinstance(objective.teacher.module, TokenBranch)
    assert objective.head.dino.last_layer.direction.shape == (8192, 256)


@pytest.mark.parametrize(
    ("key", "value"),
    [("mask_ratio", [0.5, 0.2]), ("mask_probability", 1.5), ("patch_weight", -1.0), ("teacher_patch_temp", 0.0)],
)
def test_invalid_config_values_name_the_key(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"objective.{key}"):
        from_dict(IBOTConfig, {"name": "ibot", key: value}, "objective")


def test_recipe_runs_and_its_export_loads_with_transformers_auto_classes(tmp_path: Path, tiny_images: Path) -> None:
    overrides = [*TINY_IMAGE, f"data.path={tiny_images}", "encoder.num_layers=1", "train.max_steps=2"]
    run = pretrain("ibot", [*overrides, "data.local_crops=1"], tmp_path / "run")
    export = run / "export"
    model, processor = AutoModel.from_pretrained(export).eval(), AutoImageProcessor.from_pretrained(export)
    images = np.load(tiny_images)[:2, :, :, None]  # 28x28 grey, channels last
    pixels = processor(list(images), return_tensors="pt", input_data_format="channels_last")["pixel_values"]
    with torch.no_grad():
        cls = model(pixel_values=pixels).last_hidden_state[:, 0]
        ours = DOMAINS.get("image").load_encoder(export).eval()
        torch.testing.assert_close(cls, ours.encode(image_batch(pixels, 4)).pooled(), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- two processes == one process on the global batch


def _ibot_two_processes(rank: int) -> None:
    batches = [views_batch(smooth_images(seed=s), num_views=3, seed=s) for s in range(3)]
    masks = {}  # the global batch's masks, cut to each process's rows
    for step in range(3):
        masks[step] = [fixed_mask(8, 16, 10 * step + v) for v in range(2)]
    calls = {"n": 0}

    def drawn(view: Batch, *args: object) -> Tensor:
        # 2 draws per forward; the one-process reference runs all its steps first, then the two-process run
        n = calls["n"]
        calls["n"] += 1
        step, v = (n // 2) % 3, n % 2
        full = masks[step][v]
        if view.batch_size == full.shape[0]:
            return full
        half = full.shape[0] // 2
        return full[rank * half : (rank + 1) * half]

    ibot_module.ibot_masks = drawn  # a forked worker: patched in this process only

    def make() -> SSLModel:
        return make_ibot(freeze_last_layer_steps=0, shared_head=False)[0]

    check_one_vs_two_processes(make, batches, rank)


@pytest.mark.timeout(180)
def test_two_processes_match_one_process_on_the_global_batch(tmp_path: Path) -> None:
    run_in_two_processes(_ibot_two_processes, tmp_path)
