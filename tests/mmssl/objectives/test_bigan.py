"""BiGAN / BigBiGAN: the loss formulas written out and against torch's BCE, patch units <-> images against the image
domain, the trainer's gradient routing (encoder and generator from their loss, discriminator from its own), each
side's loss falling on a fixed batch, exact resume with the discriminator's optimizer, and bad settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from domains.image.encoders import ResNetEncoder
from domains.image.resnet import SmallResNet
from domains.image.units import image_batch
from mmssl.checkpoint import checkpoint_dirs
from mmssl.config import ConfigError
from mmssl.metrics import read_metrics
from mmssl.objectives import OBJECTIVES
from mmssl.objectives.base import SSLModel
from mmssl.objectives.bigan import BiGAN, BiGANConfig, bigan_losses
from mmssl.objectives.gan_modules import Scores
from mmssl.objectives.pixel_decoder import patch_geometry
from mmssl.pretrain import pretrain
from mmssl.recipe import TrainConfig, load_recipe
from mmssl.trainer import Trainer, step_seed
from tests.conftest import TINY_IMAGE

SMALL = dict(z_dim=8, generator_width=4, discriminator_width=4, discriminator_mlp_width=16)
REAL = Scores(torch.tensor([0.5, -2.0, 1.5]), torch.tensor([1.2, 0.3, -0.4]), torch.tensor([-1.0, 2.5, 0.0]))
FAKE = Scores(torch.tensor([-0.5, 0.8, -3.0]), torch.tensor([0.1, -1.5, 2.0]), torch.tensor([0.7, -0.2, -1.1]))


def tiny_bigan(seed: int = 0, **cfg) -> SSLModel:
    """A BiGAN of a width-4 ResNet-18 on 28x28 grey images of 4x4 patches."""
    torch.manual_seed(seed)
    encoder = ResNetEncoder(SmallResNet(in_channels=1, depth=18, width=4), patch_size=4)
    return SSLModel(encoder, BiGAN(BiGANConfig(**{**SMALL, **cfg}), encoder))


def images(seed: int = 0, n: int = 8) -> torch.Tensor:
    return torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------- the losses
def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


@pytest.mark.parametrize("unary", [True, False])
def test_hinge_losses_written_out(unary: bool) -> None:
    real, fake = (REAL, FAKE) if unary else (Scores(REAL.joint, None, None), Scores(FAKE.joint, None, None))
    eg, d = bigan_losses(real, fake, "hinge")
    kinds = range(3 if unary else 1)
    want_d = sum(
        _mean(max(0.0, 1 - v) for v in real[k].tolist()) + _mean(max(0.0, 1 + v) for v in fake[k].tolist())
        for k in kinds
    )
    want_eg = sum(_mean(real[k].tolist()) - _mean(fake[k].tolist()) for k in kinds)
    assert float(d) == pytest.approx(want_d, rel=1e-6) and float(eg) == pytest.approx(want_eg, rel=1e-6)
    if unary:  # by hand for the joint score alone: relu(1 - r) = 0.5, 3, 0 and relu(1 + f) = 0.5, 1.8, 0
        assert float(bigan_losses(Scores(REAL.joint, None, None), Scores(FAKE.joint, None, None), "hinge")[1]) == (
            pytest.approx(3.5 / 3 + 2.3 / 3)
        )


def test_non_saturating_losses_are_binary_cross_entropies() -> None:
    """D: real pairs labelled 1, fake 0; E and G: the labels swapped (BiGAN's non-saturating practice)."""
    eg, d = bigan_losses(REAL, FAKE, "non_saturating")
    bce = F.binary_cross_entropy_with_logits
    want_d = sum(bce(r, torch.ones(3)) + bce(f, torch.zeros(3)) for r, f in zip(REAL, FAKE))
    want_eg = sum(bce(r, torch.zeros(3)) + bce(f, torch.ones(3)) for r, f in zip(REAL, FAKE))
    torch.testing.assert_close(d, want_d)
    torch.testing.assert_close(eg, want_eg)


# ---------------------------------------------------------------------------- units <-> images
@pytest.mark.parametrize(
    ("unit_dim", "geometry"), [(16, (1, 4)), (48, (3, 4)), (12, (3, 2)), (1, (1, 1)), (49, (1, 7))]
)
def test_patch_geometry(unit_dim: int, geometry: tuple[int, int]) -> None:
    assert patch_geometry(unit_dim, "bigan") == geometry


def test_patch_geometry_refuses_other_units() -> None:
    with pytest.raises(ValueError, match="C = 1 or 3; the encoder's units have 8"):
        patch_geometry(8, "bigan")


def test_generated_samples_are_units_of_the_data_grid() -> None:
    model = tiny_bigan()
    assert model.objective.sample(3).shape == (3, 49, 16)  # a 7x7 grid of 4x4 grey patches
    assert model.objective.generator(torch.randn(2, 8)).shape == (2, 1, 28, 28)


# ---------------------------------------------------------------------------- gradients
def _trainer(model: SSLModel, run_dir: Path, **cfg) -> Trainer:
    rows = [{"image": img} for img in images(n=16)]
    collate = lambda rs: image_batch(torch.stack([r["image"] for r in rs]), 4)  # noqa: E731
    base = dict(max_steps=4, batch_size=8, lr=1e-3, warmup_steps=0, log_every=1, checkpoint_every=100)
    return Trainer(model, rows, collate, TrainConfig(**{**base, **cfg}), run_dir)


def test_each_side_gets_the_gradient_of_its_own_loss_only(tmp_path: Path) -> None:
    """Through the trainer, E, G and the latent map hold d loss / d theta, D holds d adversary_loss / d D, although
    the (undetached) adversary loss does reach the encoder when differentiated freely."""
    model = tiny_bigan(spectral_norm=False)  # no power iteration: two forwards give the same scores
    t = _trainer(model, tmp_path)
    batch = image_batch(images(1), 4)
    disc = list(model.objective.discriminator.parameters())
    rest = [p for p in model.parameters() if all(p is not q for q in disc)]
    torch.manual_seed(step_seed(0, 0, 0, 0))  # the trainer's seed of step 0, micro-batch 0
    out = model(batch)
    want_rest = torch.autograd.grad(out.loss, rest, retain_graph=True, allow_unused=True)
    want_disc = torch.autograd.grad(out.adversary_loss, disc, retain_graph=True)
    leak = torch.autograd.grad(out.adversary_loss, list(model.encoder.parameters()), allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in leak)

    t._micro_step(batch, 0)
    t.adversary.install()
    for p, g in zip(rest, want_rest):
        torch.testing.assert_close(p.grad, g if g is not None else torch.zeros_like(p), rtol=1e-4, atol=1e-6)
    for p, g in zip(disc, want_disc):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)
    assert {id(p) for p in t.adversary.params} == {id(p) for p in disc}
    assert not {id(p) for g in t.optimizer.param_groups for p in g["params"]} & {id(p) for p in disc}


def _steps(model: SSLModel, params: list, which: str, steps: int = 12) -> list[tuple[float, float, float]]:
    """Adam steps on one side's loss over ``params``, same batch and noise each time; (loss, D loss, margin) before."""
    optimizer = torch.optim.Adam(params, lr=2e-3)
    batch, seen = image_batch(images(2), 4), []
    for _ in range(steps + 1):
        torch.manual_seed(0)
        out = model(batch)
        seen.append(
            (
                float(out.loss.detach()),
                float(out.adversary_loss.detach()),
                float(out.logs["score_real"] - out.logs["score_fake"]),
            )
        )
        optimizer.zero_grad()
        (out.loss if which == "main" else out.adversary_loss).backward(inputs=params)
        optimizer.step()
    return seen


def test_the_discriminator_learns_to_separate_the_pairs() -> None:
    model = tiny_bigan().eval()  # batch norm in eval mode: G and E stay put between steps
    model.objective.discriminator.train()
    seen = _steps(model, list(model.objective.discriminator.parameters()), "adversary")
    assert seen[-1][1] < seen[0][1] and seen[-1][2] > seen[0][2]  # D loss falls, real scores move above fake


def test_encoder_and_generator_learn_to_fool_it() -> None:
    model = tiny_bigan().eval()
    disc = {id(p) for p in model.objective.discriminator.parameters()}
    seen = _steps(model, [p for p in model.parameters() if id(p) not in disc], "main")
    assert seen[-1][0] < seen[0][0] and seen[-1][2] < seen[0][2]  # E/G loss falls, the margin shrinks


# ---------------------------------------------------------------------------- resume
def test_interrupted_run_resumes_the_discriminator_exactly(
    tmp_path: Path, tiny_images: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    overrides = [*TINY_IMAGE, f"data.path={tiny_images}", *OBJECTIVES["bigan"].smoke_overrides]
    overrides += ["train.max_steps=8", "train.checkpoint_every=4", "train.batch_size=8"]
    pretrain("bigan", overrides, tmp_path / "straight")
    original = Trainer._run_hooks

    def interrupt(self: Trainer) -> dict:
        if self.state.step == 6:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Trainer, "_run_hooks", interrupt)
    with pytest.raises(KeyboardInterrupt):
        pretrain("bigan", overrides, tmp_path / "resumed")
    monkeypatch.setattr(Trainer, "_run_hooks", original)
    ckpt = checkpoint_dirs(tmp_path / "resumed")[-1]
    assert (ckpt / "optimizer_1.bin").is_file() and (ckpt / "scheduler_1.bin").is_file()
    with safe_open(str(ckpt / "model.safetensors"), "pt") as weights:
        assert any(k.startswith("objective.discriminator.") for k in weights.keys())
    pretrain("bigan", overrides, tmp_path / "resumed", resume=True)

    def lines(run: Path) -> list[tuple]:
        return [(r["step"], r["loss"], r["loss_adversary"]) for r in read_metrics(run) if "event" not in r]

    assert [s for s, *_ in lines(tmp_path / "resumed")] == list(range(1, 9))
    assert lines(tmp_path / "resumed") == pytest.approx(lines(tmp_path / "straight"), rel=1e-6, abs=1e-7)


# ---------------------------------------------------------------------------- bad settings
@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("objective.z_dim=0", "objective.z_dim must be > 0"),
        (
            "objective.generator_upsamples=3",
            "objective.image_size=28 cannot be drawn by objective.generator_upsamples=3",
        ),
        ("encoder.patch_size=8", "objective.image_size=28 is not a multiple of encoder.patch_size=8"),
        ("objective.loss=wasserstein", "objective.loss"),
        ("objective.discriminator_betas=[1.0,0.9]", "objective.discriminator_betas must be two values in"),
        ("objective.discriminator_lr=0", "objective.discriminator_lr must be > 0"),
    ],
)
def test_bad_settings_fail_at_load_naming_the_key(setting: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_recipe("bigan", [setting])


def test_images_of_another_size_than_the_generators_are_refused() -> None:
    model = tiny_bigan(image_size=32)
    with pytest.raises(ValueError, match="images are 28x28 pixels but the generator draws 32x32.*objective.image_size"):
        model(image_batch(images(), 4))


def test_units_that_are_not_image_patches_are_refused() -> None:
    encoder = ResNetEncoder(SmallResNet(in_channels=1, depth=18, width=4), patch_size=4)
    encoder.unit_dim = 8  # e.g. 8 fbank features per frame
    with pytest.raises(ValueError, match="C = 1 or 3"):
        BiGAN(BiGANConfig(**SMALL), encoder)
