"""BiGAN / BigBiGAN (Donahue et al. 2017; Donahue & Simonyan 2019): adversarial representation learning.

A generator ``G`` maps a latent ``z ~ N(0, I)`` to an image; the encoder ``E`` (the run's image encoder, its pooled
output mapped linearly to ``z``'s size) maps an image to a latent; a joint discriminator ``D(x, z)`` tells encoder
pairs ``(x, E(x))`` from generator pairs ``(G(z), z)``. At the optimum ``E`` inverts ``G``, and the encoder's
features are the representation (the exported encoder).

``D`` is the objective's adversary (:class:`mmssl.objectives.base.Adversary`): the trainer trains it on
``adversary_loss`` with its own AdamW (``objective.discriminator_*``) while ``E`` and ``G`` minimise ``loss``
(:mod:`mmssl.adversary`). With ``s`` the sum of the scores in use (``s_xz``, plus BigBiGAN's unary ``s_x + s_z``),
``real`` the encoder pairs and ``fake`` the generator pairs:

* hinge (BigBiGAN, sec. 2): ``L_D = sum_s mean relu(1 - s(real)) + mean relu(1 + s(fake))``,
  ``L_EG = sum_s mean s(real) - mean s(fake)``;
* non-saturating (BiGAN's practice, Goodfellow et al. 2014's trick): ``L_D = sum_s mean softplus(-s(real)) +
  mean softplus(s(fake))``, ``L_EG = sum_s mean softplus(s(real)) + mean softplus(-s(fake))``.

Grid units only: the objective folds the ``[B, T, C * P * P]`` patch units back into ``[B, C, H, W]`` images for
``D`` (:mod:`mmssl.objectives.gan_modules`); ``G`` draws images of ``objective.image_size`` pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmssl.encoder import Encoder
from mmssl.objectives.base import Adversary, Objective
from mmssl.objectives.checks import check_positive
from mmssl.objectives.gan_modules import Generator, JointDiscriminator, Scores
from mmssl.objectives.pixel_decoder import patch_geometry, patch_units, unit_images
from mmssl.objectives.units import feature_units, unit_dim_of
from mmssl.types import Batch, ObjectiveOutput

LOSSES = ("hinge", "non_saturating")


@dataclass(frozen=True)
class BiGANConfig:
    """BiGAN (Donahue et al. 2017) / BigBiGAN (Donahue & Simonyan 2019).

    ``E`` and ``G`` train with ``train.lr`` / ``train.betas``; ``D`` with ``objective.discriminator_*``.
    """

    name: str = "bigan"
    z_dim: int = 120  # BigBiGAN, as BigGAN: z ~ N(0, I) of 120 dimensions
    loss: Literal["hinge", "non_saturating"] = "hinge"  # BigBiGAN: hinge; BiGAN: the non-saturating GAN loss
    unary_terms: bool = True  # BigBiGAN's unary scores s_x and s_z beside the joint s_xz (sec. 2, Table 1)
    image_size: int = 28  # side of the generated (and the data's) square images: Fashion-MNIST's 28
    generator_width: int = 64  # channels of G's last stage, doubling per stage below it (DCGAN's ngf)
    generator_upsamples: int = 2  # stride-2 stages of G and of D's convolutional net (28 = 7 x 2^2)
    discriminator_width: int = 64  # channels of D's first convolution, doubling per stage (DCGAN's ndf)
    discriminator_mlp_width: int = 512  # D's F(x) features and H, J MLP width (BigBiGAN's are 2048 wide)
    spectral_norm: bool = True  # on every D layer (Miyato et al. 2018; BigGAN and BigBiGAN)
    discriminator_lr: float = 2e-4  # DCGAN (Radford et al. 2016) and BiGAN: Adam, lr 2e-4
    discriminator_betas: tuple[float, float] = (0.5, 0.999)  # DCGAN's beta1 = 0.5 (BigGAN/BigBiGAN use 0)
    discriminator_weight_decay: float = 0.0

    def __post_init__(self) -> None:
        check_positive(self, "z_dim", "image_size", "generator_width", "discriminator_width", "discriminator_mlp_width")
        check_positive(self, "discriminator_lr")
        if self.loss not in LOSSES:
            raise ValueError(f"objective.loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.generator_upsamples < 0:
            raise ValueError(f"objective.generator_upsamples must be >= 0, got {self.generator_upsamples}")
        if self.image_size % 2**self.generator_upsamples:
            raise ValueError(
                f"objective.image_size={self.image_size} cannot be drawn by objective.generator_upsamples="
                f"{self.generator_upsamples} stride-2 stages: it must be a multiple of {2**self.generator_upsamples}; "
                "change objective.generator_upsamples"
            )
        if len(self.discriminator_betas) != 2 or not all(0 <= b < 1 for b in self.discriminator_betas):
            raise ValueError(
                f"objective.discriminator_betas must be two values in [0, 1), got {self.discriminator_betas}"
            )
        if self.discriminator_weight_decay < 0:
            raise ValueError(
                f"objective.discriminator_weight_decay must be >= 0, got {self.discriminator_weight_decay}"
            )

    def check_recipe(self, recipe: Any) -> None:
        """The generated images are cut into whole patches of ``encoder.patch_size`` (an image encoder's)."""
        patch = getattr(recipe.encoder, "patch_size", None)
        if patch and self.image_size % patch:
            raise ValueError(
                f"objective.image_size={self.image_size} is not a multiple of encoder.patch_size={patch}: set "
                "objective.image_size to the data's image side"
            )


def discriminator_loss(real: Tensor, fake: Tensor, loss: str) -> Tensor:
    """D's loss on one score: ``real`` ``[B]`` logits of encoder pairs (label 1), ``fake`` ``[B]`` of generator pairs."""
    if loss == "hinge":
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    return F.softplus(-real).mean() + F.softplus(fake).mean()


def encoder_generator_loss(real: Tensor, fake: Tensor, loss: str) -> Tensor:
    """E's and G's loss on one score (labels swapped; hinge: BigGAN's linear generator loss), shapes as above."""
    if loss == "hinge":
        return real.mean() - fake.mean()
    return F.softplus(real).mean() + F.softplus(-fake).mean()


def bigan_losses(real: Scores, fake: Scores, loss: str) -> tuple[Tensor, Tensor]:
    """``(L_EG, L_D)``: each loss summed over the scores present (``s_xz``, and ``s_x``, ``s_z`` when unary)."""
    pairs = [(r, f) for r, f in zip(real, fake) if r is not None]
    eg = sum(encoder_generator_loss(r, f, loss) for r, f in pairs)
    d = sum(discriminator_loss(r, f, loss) for r, f in pairs)
    return eg, d


def _halves(scores: Scores) -> tuple[Scores, Scores]:
    """Scores of ``[real; fake]`` pairs -> the real pairs' and the fake pairs'."""
    split = [s.chunk(2) if s is not None else (None, None) for s in scores]
    return Scores(*(s[0] for s in split)), Scores(*(s[1] for s in split))


class BiGAN(Objective):
    """BiGAN / BigBiGAN: the encoder learns to invert a generator under a joint discriminator (the adversary)."""

    def __init__(self, config: BiGANConfig, encoder: Encoder) -> None:
        super().__init__(config, encoder)
        self.unit_dim = unit_dim_of(encoder, "bigan")
        self.channels, self.patch = patch_geometry(self.unit_dim, "bigan")
        if config.image_size % self.patch:
            raise ValueError(
                f"objective.image_size={config.image_size} is not a multiple of the encoder's patch size {self.patch}"
            )
        c = config
        self.to_latent = nn.Linear(encoder.hidden_size, c.z_dim)  # E: pooled features -> z
        self.generator = Generator(c.z_dim, self.channels, c.image_size, c.generator_width, c.generator_upsamples)
        self.discriminator = JointDiscriminator(
            self.channels,
            c.image_size,
            c.z_dim,
            c.discriminator_width,
            c.generator_upsamples,
            c.discriminator_mlp_width,
            unary=c.unary_terms,
            spectral=c.spectral_norm,
        )

    def adversary(self) -> Adversary:
        c = self.config
        return Adversary(
            self.discriminator,
            lr=c.discriminator_lr,
            betas=c.discriminator_betas,
            weight_decay=c.discriminator_weight_decay,
        )

    def real_images(self, batch: Batch) -> Tensor:
        """``[B, C, S, S]``: the batch's patch units folded back into images of the generator's size ``S``.

        Raises:
            ValueError: If the batch has no grid, or its images are not ``objective.image_size`` square.
        """
        units = feature_units(batch, self.unit_dim, "bigan")
        if batch.grid is None:
            raise ValueError("bigan reads image patches on a 2-D grid (Batch.grid); this batch has none")
        rows, cols = batch.grid
        side = self.config.image_size
        if (rows * self.patch, cols * self.patch) != (side, side):
            raise ValueError(
                f"the batch's images are {rows * self.patch}x{cols * self.patch} pixels but the generator draws "
                f"{side}x{side} ones: set objective.image_size to the data's side (square images only)"
            )
        return unit_images(units, (rows, cols), self.channels)

    def sample(self, n: int) -> Tensor:
        """``[n, T, C * P * P]``: patch units of ``n`` generated images (the units a domain's collate would make)."""
        z = torch.randn(n, self.config.z_dim, device=self.to_latent.weight.device)
        side = self.config.image_size // self.patch
        return patch_units(self.generator(z), (side, side))

    def forward(self, encoder: Encoder, batch: Batch) -> ObjectiveOutput:
        real = self.real_images(batch)  # [B, C, S, S]
        latent = self.to_latent(encoder.encode(batch).pooled())  # [B, Z]: E(x)
        z = torch.randn(real.shape[0], self.config.z_dim, device=real.device, dtype=latent.dtype)  # the prior
        fake = self.generator(z)  # [B, C, S, S]: G(z)
        # one pass of D over both kinds of pair: D has no batch norm, so each score sees its own pair only
        scores = self.discriminator(torch.cat([real, fake.to(real.dtype)]), torch.cat([latent, z.to(latent.dtype)]))
        on_real, on_fake = _halves(scores)
        loss, d_loss = bigan_losses(on_real, on_fake, self.config.loss)
        # d_loss is not detached: the trainer differentiates it w.r.t. D's parameters only (autograd.grad prunes E, G)
        logs = {
            "score_real": on_real.joint.detach().mean(),
            "score_fake": on_fake.joint.detach().mean(),
            "discriminator_accuracy": ((on_real.joint > 0).float().mean() + (on_fake.joint < 0).float().mean()).detach()
            / 2,
        }
        return ObjectiveOutput(loss=loss, terms={"encoder_generator": loss.detach()}, logs=logs, adversary_loss=d_loss)
