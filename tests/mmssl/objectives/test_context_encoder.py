"""Context encoder: the dropped central square or blocks, the L2 on them (with the weighted overlap border) written
out, the adversarial term and its critic, learning, exact resume, the export, and the load-time checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mmssl.checkpoint import checkpoint_dirs
from mmssl.config import ConfigError
from mmssl.metrics import read_metrics
from mmssl.objectives import OBJECTIVES
from mmssl.objectives.base import Adversary, SSLModel
from mmssl.objectives.context_encoder import ContextEncoder, ContextEncoderConfig, border, center_mask
from mmssl.objectives.losses import masked_regression_loss
from mmssl.pretrain import pretrain
from mmssl.recipe import load_recipe
from mmssl.trainer import Trainer
from tests.conftest import TINY_IMAGE
from tests.mmssl.objectives.masking_fixtures import record
from tests.mmssl.objectives.pixel_fixtures import (
    B,
    batch_of,
    check_export_reloads_the_features,
    check_loss_decreases,
    check_resumes_exactly,
    pixels,
    resnet,
    vit,
)

L2_ONLY = {"adversarial_weight": 0.0, "decoder_width": 8}


def test_center_mask_is_the_central_square_and_border_its_ring() -> None:
    mask = center_mask(2, (7, 7), 3, torch.device("cpu"))
    square = torch.zeros(7, 7, dtype=torch.bool)
    square[2:5, 2:5] = True
    assert torch.equal(mask, square.flatten().expand(2, -1))
    ring = torch.zeros(7, 7, dtype=torch.bool)
    ring[1:6, 1:6] = True
    assert torch.equal(border(mask, (7, 7)), (ring & ~square).flatten().expand(2, -1))


def test_the_encoder_reads_the_image_with_a_mean_filled_hole_and_l2_scores_the_hole() -> None:
    enc, batch = resnet(), batch_of(pixels())
    objective = ContextEncoder(ContextEncoderConfig(**L2_ONLY), enc)
    calls: list[tuple] = []
    record(enc, "encode", calls)
    out = objective(enc, batch)
    (((seen,), _),) = calls
    mask = center_mask(B, (7, 7), 3, torch.device("cpu"))
    assert (seen.units[mask] == 0).all() and torch.equal(seen.units[~mask], batch.units[~mask])
    pred = objective.decoder(seen_map(enc, seen), (7, 7))
    torch.testing.assert_close(out.loss, masked_regression_loss(pred, batch.units, mask))
    torch.testing.assert_close(out.loss, ((pred - batch.units)[mask] ** 2).mean())


def seen_map(enc, seen):
    out = enc.encode(seen)
    return out.hidden.transpose(1, 2).reshape(B, -1, *out.grid)


def test_overlap_border_is_weighted_in_the_loss() -> None:
    enc, batch = resnet(), batch_of(pixels())
    objective = ContextEncoder(ContextEncoderConfig(overlap_weight=10.0, **L2_ONLY), enc)
    out = objective(enc, batch)
    mask = center_mask(B, (7, 7), 3, torch.device("cpu"))
    ring = border(mask, (7, 7))
    pred = objective.decoder(seen_map(enc, batch.replace(units=batch.units.masked_fill(mask[..., None], 0))), (7, 7))
    err = (pred - batch.units) ** 2  # [B, T, 16]
    expected = (err[mask].sum() + 10 * err[ring].sum()) / (16 * (mask.sum() + 10 * ring.sum()))
    torch.testing.assert_close(out.loss, expected)


def test_random_blocks_drop_about_the_ratio() -> None:
    enc = resnet()
    objective = ContextEncoder(ContextEncoderConfig(region="blocks", block_ratio=0.25, **L2_ONLY), enc)
    torch.manual_seed(0)
    out = objective(enc, batch_of(pixels()))
    assert abs(float(out.logs["masked_fraction"]) - 0.25) < 0.05


def test_adversarial_term_and_critic_loss_are_the_papers() -> None:
    enc, batch = resnet(), batch_of(pixels())
    objective = ContextEncoder(ContextEncoderConfig(adversarial_weight=0.25, decoder_width=8), enc)
    adversary = objective.adversary()
    assert isinstance(adversary, Adversary) and adversary.module is objective.critic
    assert adversary.lr == 2e-4 and adversary.betas == (0.5, 0.999)
    out = objective(enc, batch)
    mask = center_mask(B, (7, 7), 3, torch.device("cpu"))
    pred = objective.decoder(seen_map(enc, batch.replace(units=batch.units.masked_fill(mask[..., None], 0))), (7, 7))
    inpainted = torch.where(mask[..., None], pred, batch.units)
    d_fake, d_real = objective.critic(inpainted, (7, 7)), objective.critic(batch.units, (7, 7))
    rec = ((pred - batch.units)[mask] ** 2).mean()
    adv = -F.logsigmoid(d_fake).mean()
    torch.testing.assert_close(out.loss, 0.75 * rec + 0.25 * adv)
    critic = -(F.logsigmoid(d_real) + torch.log1p(-torch.sigmoid(d_fake))).mean()
    torch.testing.assert_close(out.adversary_loss, critic)
    # the critic's loss does not reach the encoder or the decoder (it reads the inpainting detached)
    grads = torch.autograd.grad(out.adversary_loss, list(objective.decoder.parameters()), allow_unused=True)
    assert all(g is None for g in grads)
    assert ContextEncoder(ContextEncoderConfig(**L2_ONLY), enc).adversary() is None


@pytest.mark.parametrize("build", [resnet, vit])
def test_loss_decreases(build) -> None:
    check_loss_decreases(lambda: SSLModel(enc := build(), ContextEncoder(ContextEncoderConfig(decoder_width=16), enc)))


def test_resumes_exactly() -> None:
    config = ContextEncoderConfig(decoder_width=8, discriminator_width=4)
    state = check_resumes_exactly(lambda seed: SSLModel(enc := resnet(seed), ContextEncoder(config, enc)))
    assert any(k.startswith("objective.critic.") for k in state)


def test_export_reloads_the_features_without_mmssl(tmp_path: Path) -> None:
    enc = resnet()
    check_export_reloads_the_features(SSLModel(enc, ContextEncoder(ContextEncoderConfig(**L2_ONLY), enc)), tmp_path)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("objective.mask_size=7", "objective.mask_size=7 covers the whole 7x7 patch grid side"),
        ("objective.mask_size=9", "objective.mask_size=9 covers the whole 7x7"),
        ("objective.block_ratio=1.2", "objective.block_ratio must be in \\(0, 1\\)"),
        ("objective.adversarial_weight=1", "objective.adversarial_weight must be in \\[0, 1\\)"),
        ("objective.overlap_weight=-1", "objective.overlap_weight must be >= 0"),
    ],
)
def test_bad_settings_are_refused_at_recipe_load_time(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_recipe("context_encoder", [*SIZED_28, override])


# 28x28 images known before loading (resized on load), 4x4 patches: a 7x7 grid; Fashion-MNIST's prepared files give
# the same from their header
SIZED_28 = ["data.source=imagefolder", "data.path=images", "data.image_size=28"]


def test_a_central_square_larger_than_the_batchs_grid_is_refused() -> None:
    enc = resnet()
    objective = ContextEncoder(ContextEncoderConfig(mask_size=7, **L2_ONLY), enc)
    with pytest.raises(ValueError, match="objective.mask_size=7 covers the whole 7x7 patch grid side"):
        objective(enc, batch_of(pixels()))


def test_the_trainer_trains_the_critic_and_resumes_both_optimizers_exactly(
    tmp_path: Path, tiny_images: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    overrides = [*TINY_IMAGE, f"data.path={tiny_images}", *OBJECTIVES["context_encoder"].smoke_overrides]
    overrides += ["train.max_steps=6", "train.checkpoint_every=3", "train.batch_size=8"]
    pretrain("context_encoder", overrides, tmp_path / "straight")
    original = Trainer._run_hooks

    def interrupt(self: Trainer) -> dict:
        if self.state.step == 5:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Trainer, "_run_hooks", interrupt)
    with pytest.raises(KeyboardInterrupt):
        pretrain("context_encoder", overrides, tmp_path / "resumed")
    monkeypatch.setattr(Trainer, "_run_hooks", original)
    ckpt = checkpoint_dirs(tmp_path / "resumed")[-1]
    assert (ckpt / "optimizer_1.bin").is_file()  # the critic's own AdamW
    pretrain("context_encoder", overrides, tmp_path / "resumed", resume=True)

    def lines(run: Path) -> list[tuple]:
        return [(r["step"], r["loss"], r["loss_adversary"]) for r in read_metrics(run) if "event" not in r]

    assert [s for s, *_ in lines(tmp_path / "resumed")] == list(range(1, 7))
    assert lines(tmp_path / "resumed") == pytest.approx(lines(tmp_path / "straight"), rel=1e-6, abs=1e-7)
