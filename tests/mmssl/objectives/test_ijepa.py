"""I-JEPA: the multi-block masks (block sizes against lightly's IJEPAMaskCollator, disjointness, min_keep, seeds, the
exact worst case), the predictor against lightly's IJEPAPredictor, the loss by hand (the code's smooth L1 and the
paper's L2), the EMA target encoder, load-time errors, learning, exact resume, two processes against one, and the
recipe's export loaded by transformers alone."""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightly.data.ijepa_collate import IJEPAMaskCollator
from lightly.models.modules.ijepa import IJEPAPredictor as LightlyPredictor
from lightly.models.utils import get_2d_sincos_pos_embed
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from transformers import AutoImageProcessor, AutoModel

from domains.image.encoders import ImageEncoderConfig, build_image_encoder
from domains.image.units import image_batch
from mmssl.config import ConfigError, from_dict
from mmssl.masking import fewest_context_patches, multi_block_mask, multi_block_size, multi_block_sizes
from mmssl.objectives.base import SSLModel
from mmssl.objectives.ijepa import IJEPA, IJEPAConfig, IJEPAPredictor, sincos_2d
from mmssl.pretrain import pretrain
from mmssl.recipe import load_recipe
from mmssl.registry import DOMAINS
from mmssl.types import Batch
from tests.conftest import TINY_IMAGE
from tests.mmssl.objectives.loss_checks import WORLD, run_in_two_processes
from tests.mmssl.objectives.masking_fixtures import (
    check_builds_from_its_config_defaults,
    check_learns_on_one_batch,
    images,
    record,
    vit,
)

PAPER = {"target_scale": (0.15, 0.2), "target_aspect": (0.75, 1.5), "context_scale": (0.85, 1.0)}
SMALL = {"predictor_dim": 16, "predictor_depth": 2, "predictor_heads": 2}


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def lightly_sizes(side: int, patch: int, seed: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """``(target size, context size)`` of lightly's I-JEPA collator for a generator seeded ``seed``."""
    collator = IJEPAMaskCollator(input_size=side * patch, patch_size=patch, min_keep=1)
    g = generator(seed)
    target = collator._sample_block_size(g, PAPER["target_scale"], PAPER["target_aspect"])
    return target, collator._sample_block_size(g, PAPER["context_scale"], (1.0, 1.0))


# ---------------------------------------------------------------- masks


@pytest.mark.parametrize("side", [7, 14])
def test_block_sizes_match_lightlys_collator_but_may_fill_the_grid(side: int) -> None:
    filled = 0
    for seed in range(100):
        target, context = lightly_sizes(side, 4, seed)
        g = generator(seed)  # our masks draw the target size, then the context's, as the official collator
        ours = [
            multi_block_size(
                side, side, PAPER["target_scale"], PAPER["target_aspect"], torch.rand(1, generator=g).item()
            ),
            multi_block_size(side, side, PAPER["context_scale"], (1.0, 1.0), torch.rand(1, generator=g).item()),
        ]
        assert ours[0] == target
        # lightly (the official code) caps a side one below the grid's (facebookresearch/ijepa#40)
        assert ours[1] == context or (context == (side - 1, side - 1) and ours[1] == (side, side))
        filled += ours[1] == (side, side)
    assert filled > 0


def blocks_of(targets: Tensor, width: int) -> list[tuple[int, int]]:
    """The ``(rows, cols)`` of each target block of ``[B, M, N]`` indices, checking each one is a full rectangle."""
    sizes = []
    for block in targets.flatten(0, 1):
        rows, cols = block // width, block % width
        h, w = int(rows.max() - rows.min()) + 1, int(cols.max() - cols.min()) + 1
        assert h * w == block.numel() == len(set(block.tolist()))
        sizes.append((h, w))
    return sizes


@pytest.mark.parametrize("side", [7, 14])
def test_every_image_has_blocks_of_the_size_lightlys_collator_draws(side: int) -> None:
    for seed in range(5):
        _, targets = multi_block_mask(6, side, side, generator=generator(seed))
        assert targets.shape[:2] == (6, 4)
        assert set(blocks_of(targets, side)) == {lightly_sizes(side, 4, seed)[0]}


@pytest.mark.parametrize(
    ("side", "settings"),
    [(7, {}), (14, {}), (4, {"min_keep": 8, "target_scale": (0.25, 0.25), "target_aspect": (1.0, 1.0)})],
)
def test_context_is_disjoint_from_the_targets_and_keeps_min_keep(side: int, settings: dict) -> None:
    settings = {**PAPER, "min_keep": 10, **settings}
    for seed in range(10):
        context, targets = multi_block_mask(16, side, side, generator=generator(seed), **settings)
        assert context.shape[1] >= settings["min_keep"]
        assert bool((context.diff(dim=1) > 0).all())  # ascending, no repeats
        for c, t in zip(context, targets):
            assert not set(c.tolist()) & set(t.flatten().tolist())
        assert int(targets.max()) < side * side and int(context.max()) < side * side


def test_blocks_reach_the_last_row_and_column() -> None:
    _, targets = multi_block_mask(64, 7, 7, generator=generator(0))
    assert bool((targets // 7 == 6).any()) and bool((targets % 7 == 6).any())


def test_masks_are_reproducible_with_a_seed_and_lie_on_the_device() -> None:
    a, b, c = (multi_block_mask(8, 7, 7, generator=generator(s), device="meta") for s in (3, 3, 4))
    assert a[0].device.type == "meta"
    a, b, c = (multi_block_mask(8, 7, 7, generator=generator(s)) for s in (3, 3, 4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not (a[0].shape == c[0].shape and torch.equal(a[0], c[0]) and torch.equal(a[1], c[1]))


def test_the_context_keeps_the_batchs_fewest_patches_chosen_among_each_images_own() -> None:
    """The whole grid is the context and two 1x1 targets are drawn: an image whose targets coincide has one
    context patch more than the others and drops one, chosen uniformly (the official code: its last one)."""
    dropped = []
    for seed in range(10):
        settings = {"target_scale": (0.02, 0.02), "context_scale": (1.0, 1.0), "min_keep": 1}
        context, targets = multi_block_mask(32, 7, 7, num_targets=2, generator=generator(seed), **settings)
        assert context.shape[1] == 47  # some image has two distinct targets
        for c, t in zip(context, targets.flatten(1)):
            if t[0] == t[1]:
                (missing,) = set(range(49)) - set(c.tolist()) - set(t.tolist())
                dropped.append(missing)
    assert len(dropped) > 1 and len(set(dropped)) > 1


@pytest.mark.parametrize(
    ("side", "scale", "aspect"),
    [
        (7, (0.15, 0.2), (0.75, 1.5)),
        (14, (0.15, 0.2), (0.75, 1.5)),
        (7, (0.85, 1.0), (1.0, 1.0)),
        (9, (0.3, 0.6), (0.5, 2.0)),
    ],
)
def test_the_possible_block_sizes_are_exactly_those_a_dense_draw_finds(side: int, scale: tuple, aspect: tuple) -> None:
    dense = {multi_block_size(side, side, scale, aspect, u) for u in np.linspace(0.0, 1.0, 100_001)[:-1]}
    assert set(multi_block_sizes(side, side, scale, aspect)) == dense


def brute_force_fewest(side: int, target: tuple[int, int], context: tuple[int, int]) -> int:
    """min over context places of max over target places of the context patches outside the target block."""

    def block(top: int, left: int, size: tuple[int, int]) -> Tensor:
        mask = torch.zeros(side, side, dtype=torch.bool)
        mask[top : top + size[0], left : left + size[1]] = True
        return mask

    def places(size: tuple[int, int]) -> list[tuple[int, int]]:
        return list(itertools.product(range(side - size[0] + 1), range(side - size[1] + 1)))

    return min(
        max(int((block(*c, context) & ~block(*t, target)).sum()) for t in places(target)) for c in places(context)
    )


@pytest.mark.parametrize(
    ("target", "context"), [((2, 3), (6, 6)), ((4, 2), (7, 7)), ((5, 5), (6, 6)), ((6, 6), (6, 6)), ((3, 1), (4, 5))]
)
def test_fewest_context_patches_equals_a_brute_force_search(target: tuple, context: tuple) -> None:
    assert fewest_context_patches(7, 7, target, context) == brute_force_fewest(7, target, context)


# ---------------------------------------------------------------- load-time and data errors


def test_a_mask_that_leaves_no_context_names_the_keys() -> None:
    config = IJEPAConfig(target_scale=(0.8, 0.9))
    with pytest.raises(ValueError, match=r"objective.target_scale=\[0.8, 0.9\].*7x7 patch grid.*objective.min_keep=10"):
        config.check_grid(7, 7)
    IJEPAConfig().check_grid(7, 7)  # the paper's settings fit the recipe's grid
    load_recipe("ijepa").objective.check_grid(7, 7)
    # when the recipe loads, where the image size is known without reading the data (images resized to 28x28)
    resized = ["data.source=imagefolder", "data.path=unread", "data.image_size=28", "objective.target_scale=[0.8,0.9]"]
    with pytest.raises(ConfigError, match=r"recipes/ijepa.yaml: objective.target_scale=\[0.8, 0.9\].*7x7 patch grid"):
        load_recipe("ijepa", resized)
    with pytest.raises(ValueError, match="objective.min_keep=40"):
        IJEPAConfig(min_keep=40).check_grid(7, 7)
    with pytest.raises(ValueError, match="below min_keep=10"):
        multi_block_mask(2, 7, 7, target_scale=(0.8, 0.9))
    enc = vit(28)
    calls: list[tuple] = []
    record(enc, "encode_visible", calls)
    with pytest.raises(ValueError, match="objective.target_scale"):  # before anything is encoded
        IJEPA(IJEPAConfig(target_scale=(0.8, 0.9), **SMALL), enc)(enc, image_batch(images(28), 4))
    assert not calls


def test_a_resnet_is_refused_when_the_recipe_loads() -> None:
    with pytest.raises(ConfigError, match="objective.name=ijepa needs Encoder.encode_visible.*encoder.arch=vit"):
        load_recipe("ijepa", ["encoder.arch=resnet"])
    resnet = build_image_encoder(ImageEncoderConfig(arch="resnet", resnet_width=4), (28, 28), channels=1)
    with pytest.raises(ValueError, match="cannot encode a subset of units"):
        IJEPA(IJEPAConfig(**SMALL), resnet)(resnet, image_batch(images(28), 4))


def test_units_without_a_grid_or_with_padding_are_refused() -> None:
    enc = vit()
    objective = IJEPA(IJEPAConfig(**SMALL), enc)
    batch = image_batch(images(), 4)
    with pytest.raises(ValueError, match="2-D grid"):
        objective(enc, batch.replace(grid=None))
    with pytest.raises(ValueError, match="padding"):
        objective(enc, batch.replace(padding_mask=torch.ones_like(batch.padding_mask)))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("num_targets", 0),
        ("target_scale", [0.3, 0.2]),
        ("context_scale", [0.0, 1.0]),
        ("target_aspect", [0.0, 1.0]),
        ("min_keep", 0),
        ("predictor_dim", 30),
        ("base_momentum", 1.5),
        ("loss", "l1"),
        ("weight_decay_end", -1.0),
    ],
)
def test_invalid_config_values_name_the_key(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"objective.{key}"):
        from_dict(IJEPAConfig, {"name": "ijepa", key: value}, "objective")


def test_builds_from_its_config_defaults() -> None:
    check_builds_from_its_config_defaults("ijepa")


# ---------------------------------------------------------------- predictor and loss


def test_sincos_positions_match_lightlys() -> None:
    ours = sincos_2d(7, 7, 32)
    torch.testing.assert_close(ours, torch.from_numpy(get_2d_sincos_pos_embed(32, 7, cls_token=False)).float())


def copy_into_lightly(ours: IJEPAPredictor, ref: LightlyPredictor) -> None:
    """Our predictor's weights in lightly's (torchvision's encoder blocks: fused q/k/v, ``mlp`` = fc1, GELU, fc2)."""
    with torch.no_grad():
        ref.predictor_embed.load_state_dict(ours.embed.state_dict())
        ref.predictor_proj.load_state_dict(ours.head.state_dict())
        ref.ln.load_state_dict(ours.norm.state_dict())
        ref.mask_token.copy_(ours.mask_token.view(1, 1, -1))
        for block, layer in zip(ref.layers, ours.layers):
            att = layer.attention
            block.ln_1.load_state_dict(layer.layernorm_before.state_dict())
            block.ln_2.load_state_dict(layer.layernorm_after.state_dict())
            block.self_attention.in_proj_weight.copy_(
                torch.cat([att.q_proj.weight, att.k_proj.weight, att.v_proj.weight])
            )
            block.self_attention.in_proj_bias.copy_(torch.cat([att.q_proj.bias, att.k_proj.bias, att.v_proj.bias]))
            block.self_attention.out_proj.load_state_dict(att.o_proj.state_dict())
            block.mlp[0].load_state_dict(layer.mlp.fc1.state_dict())
            block.mlp[3].load_state_dict(layer.mlp.fc2.state_dict())


def test_predictor_matches_lightlys_ijepa_predictor() -> None:
    torch.manual_seed(0)
    width, encoder_dim, side = 16, 64, 5  # lightly's blocks are mlp_dim (the encoder's width) wide: 4 x 16
    ours = IJEPAPredictor(encoder_dim, width, depth=2, heads=2).eval()
    ref = LightlyPredictor(
        seq_length=1,
        num_layers=2,
        num_heads=2,
        hidden_dim=width,
        predictor_embed_dim=width,
        num_patches=side * side,
        mlp_dim=encoder_dim,
        dropout=0.0,
        attention_dropout=0.0,
    ).eval()
    copy_into_lightly(ours, ref)
    context, targets = multi_block_mask(3, side, side, min_keep=4, generator=generator(0))
    hidden = torch.randn(3, context.shape[1], encoder_dim)
    with torch.no_grad():
        pred = ours(hidden, context, targets, (side, side))  # [B, M, N, D]
        expected = ref(hidden, context, list(targets.unbind(1)))  # [M B, N, D], block-major
    torch.testing.assert_close(pred.transpose(0, 1).flatten(0, 1), expected, rtol=1e-5, atol=1e-5)


def test_each_target_block_is_predicted_from_the_context_and_itself_only() -> None:
    torch.manual_seed(0)
    predictor = IJEPAPredictor(8, 16, depth=2, heads=2)
    context, targets = torch.tensor([[0, 1, 2, 3]]), torch.tensor([[[5, 6], [10, 11]]])
    hidden = torch.randn(1, 4, 8)
    moved = targets.clone()
    moved[0, 1] = torch.tensor([14, 15])
    a, b = predictor(hidden, context, targets, (4, 4)), predictor(hidden, context, moved, (4, 4))
    torch.testing.assert_close(a[:, 0], b[:, 0])
    assert not torch.allclose(a[:, 1], b[:, 1])


@pytest.mark.parametrize("loss", ["smooth_l1", "mse"])
def test_loss_by_hand(loss: str) -> None:
    """At step 0 the target encoder is the encoder: the targets are its layer-normalised outputs at the target
    patches; smooth L1 is the code's ``F.smooth_l1_loss(z, h)``, mse the paper's eq. 1 (per feature)."""
    enc = vit()
    objective = IJEPA(IJEPAConfig(loss=loss, min_keep=4, **SMALL), enc)
    batch = image_batch(images(), 4)
    context, targets = multi_block_mask(batch.batch_size, 4, 4, min_keep=4, generator=generator(1))
    calls: list[tuple] = []
    record(enc, "encode_visible", calls)
    out = objective.predict_targets(enc, batch, context, targets)
    ((_, visible), _), *_ = calls
    assert torch.equal(visible, context)

    with torch.no_grad():
        full = enc.encode(batch).hidden  # [B, T, D]
    h = F.layer_norm(full, full.shape[-1:])
    pred = objective.predictor(enc.encode_visible(batch, context).hidden, context, targets, (4, 4))
    if loss == "smooth_l1":
        ref = F.smooth_l1_loss(pred, torch.stack([h[b, targets[b]] for b in range(batch.batch_size)]))
    else:  # (1 / M) sum_i (1 / |B_i|) sum_{j in B_i} ||s_hat_j - s_j||^2 / D, averaged over the images
        per_image = [
            sum(((pred[b, i] - h[b, targets[b, i]]) ** 2).sum(-1).mean() for i in range(4)) / 4 / h.shape[-1]
            for b in range(batch.batch_size)
        ]
        ref = torch.stack(per_image).mean()
    torch.testing.assert_close(out.loss, ref, rtol=1e-5, atol=1e-6)
    out.loss.backward()
    assert all(p.grad is None for p in objective.teacher.parameters())
    assert enc.model.embeddings.patch_embeddings.projection.weight.grad is not None


def test_target_encoder_momentum_rises_linearly_over_the_run_and_it_stays_in_eval_mode() -> None:
    enc = vit()
    objective = IJEPA(IJEPAConfig(**SMALL), enc)
    model = SSLModel(enc, objective).train()
    assert not objective.teacher.module.training
    momenta = []
    for step in (1, 6, 10):
        model.after_optimizer_step(step, 10)
        momenta.append(float(objective.teacher.momentum))
    # the reference's ema[0] + i (ema[1] - ema[0]) / total for its update i = step - 1
    assert momenta == pytest.approx([0.996, 0.996 + 0.004 * 5 / 10, 0.996 + 0.004 * 9 / 10])


def test_weight_decay_follows_a_cosine_from_train_weight_decay_to_its_end() -> None:
    objective = IJEPA(IJEPAConfig(**SMALL), vit())
    assert objective.scheduled_weight_decay(0.04, 0, 100) == pytest.approx(0.04)
    assert objective.scheduled_weight_decay(0.04, 50, 100) == pytest.approx(0.22)
    assert objective.scheduled_weight_decay(0.04, 100, 100) == pytest.approx(0.4)
    constant = IJEPA(IJEPAConfig(weight_decay_end=None, **SMALL), vit())
    assert constant.scheduled_weight_decay(0.04, 50, 100) == 0.04


def test_loss_decreases() -> None:
    check_learns_on_one_batch("ijepa")


def test_target_encoder_is_saved_and_resumes_exactly() -> None:
    def train(model: SSLModel, optimizer: torch.optim.Optimizer, steps: range) -> list[float]:
        losses = []
        for step in steps:
            torch.manual_seed(step)  # the step's masks
            loss = model(image_batch(images(seed=step), 4)).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            model.after_optimizer_step(step, 6)
            losses.append(loss.item())
        return losses

    model = SSLModel(vit(), IJEPA(IJEPAConfig(**SMALL), vit()))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    train(model, optimizer, range(1, 4))
    state, opt_state = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
    assert "objective.teacher.momentum" in state and "objective.teacher.ema.module.model.layernorm.weight" in state
    uninterrupted = train(model, optimizer, range(4, 7))

    torch.manual_seed(5)
    resumed = SSLModel(vit(), IJEPA(IJEPAConfig(**SMALL), vit()))
    resumed.load_state_dict(state)
    resumed_optimizer = torch.optim.AdamW(resumed.parameters(), lr=1e-3)
    resumed_optimizer.load_state_dict(opt_state)
    assert train(resumed, resumed_optimizer, range(4, 7)) == uninterrupted
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), resumed.state_dict().values()))


# ---------------------------------------------------------------- two processes == one process on the global batch


def batch_rows(batch: Batch, rows: slice) -> Batch:
    return batch.replace(units=batch.units[rows], padding_mask=batch.padding_mask[rows])


def _two_processes(rank: int) -> None:
    """Each process has its own target block size (1x1 and 2x2): the loss is normalised by the global number of
    target patches, so the processes' mean loss and the averaged gradients are those of one process that sums the
    errors of both halves and divides by all their target patches."""
    batch = image_batch(images().double(), 4)  # 6 images, a 4x4 grid; float64, so that only a real difference shows
    halves = [batch_rows(batch, slice(0, 3)), batch_rows(batch, slice(3, 6))]
    masks = [
        multi_block_mask(3, 4, 4, target_scale=(s, s), target_aspect=(1.0, 1.0), min_keep=2, generator=generator(r))
        for r, s in enumerate((0.1, 0.25))
    ]
    assert masks[0][1].shape[-1] == 1 and masks[1][1].shape[-1] == 4

    def make() -> SSLModel:
        enc = vit()
        return SSLModel(enc, IJEPA(IJEPAConfig(min_keep=2, **SMALL), enc)).double()

    ref = make()
    counts = [t.numel() for _, t in masks]
    total = sum(ref.objective.predict_targets(ref.encoder, h, *m).loss * n for h, m, n in zip(halves, masks, counts))
    ref_loss = total / sum(counts)
    ref_loss.backward()

    model = make()
    model.objective.sample_masks = lambda _: masks[rank]  # this process's masks
    ddp = DistributedDataParallel(model, find_unused_parameters=True)  # kept alive: its reducer syncs the backward
    loss = ddp(halves[rank]).loss
    loss.backward()
    mean = loss.detach().clone()
    torch.distributed.all_reduce(mean)
    torch.testing.assert_close(mean / WORLD, ref_loss.detach(), rtol=1e-5, atol=1e-5)
    grads = {k: p.grad for k, p in model.named_parameters() if p.grad is not None}
    ref_grads = {k: p.grad for k, p in ref.named_parameters() if p.grad is not None}
    assert grads.keys() == ref_grads.keys() and grads
    for key, grad in grads.items():
        close = torch.isclose(grad, ref_grads[key], rtol=1e-5, atol=1e-5)
        assert bool(close.all()), f"{key}: greatest difference {(grad - ref_grads[key]).abs().max():.3g}"


@pytest.mark.timeout(180)
def test_two_processes_match_one_process_on_the_global_batch(tmp_path: Path) -> None:
    run_in_two_processes(_two_processes, tmp_path)


# ---------------------------------------------------------------- the recipe


def test_recipe_runs_and_its_export_loads_with_transformers_auto_classes(tmp_path: Path, tiny_images: Path) -> None:
    overrides = [*TINY_IMAGE, f"data.path={tiny_images}", "encoder.num_layers=1", "train.max_steps=2"]
    run = pretrain("ijepa", [*overrides, "objective.predictor_dim=16", "objective.predictor_depth=1"], tmp_path / "r")
    export = run / "export"
    model, processor = AutoModel.from_pretrained(export).eval(), AutoImageProcessor.from_pretrained(export)
    pictures = np.load(tiny_images)[:2, :, :, None]  # 28x28 grey, channels last
    pixels = processor(list(pictures), return_tensors="pt", input_data_format="channels_last")["pixel_values"]
    with torch.no_grad():
        patches = model(pixel_values=pixels).last_hidden_state[:, 1:]  # the paper probes the mean patch token
        ours = DOMAINS.get("image").load_encoder(export).eval()
        torch.testing.assert_close(patches, ours.encode(image_batch(pixels, 4)).hidden, rtol=1e-5, atol=1e-5)
