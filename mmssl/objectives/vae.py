"""Variational autoencoder (Kingma & Welling 2014, "Auto-Encoding Variational Bayes").

The encoder's pooled features ``h`` (:meth:`EncoderOutput.pooled`: a ResNet's global average, a ViT's ``[CLS]``)
give a diagonal Gaussian posterior ``q(z | x) = N(mu(h), diag(exp(log_var(h))))`` through two linear heads; ``z = mu
+ sigma * eps`` (the reparameterisation, sec. 2.4) is decoded by a linear stem and the convolutional
:class:`~mmssl.objectives.pixel_decoder.PixelDecoder` into patch units; the loss is the negative ELBO (eq. 10,
per image, averaged over the batch)::

    loss = -E_q[log p(x | z)] + w * KL(q(z | x) || N(0, I)),   w = beta * min(1, step / kl_warmup_steps)

with one sample of ``z`` and the analytic KL (App. B). ``likelihood=bernoulli`` (the paper's MNIST decoder, App. C.1)
scores the ``[0, 1]`` pixels the image domain collates (``extras[Extra.PIXELS]``, the inverse of its standardisation:
units are ``(pixels - mean) / std``); ``gaussian`` scores the standardised units with unit variance. ``beta > 1`` is
the beta-VAE (Higgins et al. 2017); the KL warm-up is Bowman et al. (2016) and Sønderby et al. (2016).

The representation is the posterior mean ``mu``: its head ships with the export (``posterior_mean/``, see
:class:`PosteriorMeanExport`). After pretraining, :meth:`VAE.write_artifacts` draws decoded samples of ``z ~ N(0, I)``
and reconstructions into the run directory.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from mmssl.encoder import Encoder
from mmssl.objectives.base import Objective
from mmssl.objectives.checks import check_positive
from mmssl.objectives.pixel_decoder import (
    VectorStem,
    build_pixel_decoder,
    check_decoder_settings,
    check_grid_domain,
    input_grid,
    patch_geometry,
    patch_units,
    unit_images,
)
from mmssl.types import Batch, EncoderOutput, Extra, ObjectiveOutput

log = logging.getLogger(__name__)

POSTERIOR_MEAN_DIR = "posterior_mean"  # the export's folder of the mean head: config.json + model.safetensors
SAMPLES_FILE, RECONSTRUCTIONS_FILE = "vae_samples.png", "vae_reconstructions.png"


@dataclass(frozen=True)
class VAEConfig:
    """Variational autoencoder (Kingma & Welling 2014) with a convolutional decoder."""

    name: str = "vae"
    latent_dim: int = 32  # Fig. 2 and 3: 2 to 200 latent variables on MNIST
    likelihood: Literal["bernoulli", "gaussian"] = "bernoulli"  # App. C.1: Bernoulli decoder for MNIST
    beta: float = 1.0  # KL weight: 1 is the ELBO (eq. 10); > 1 beta-VAE (Higgins et al. 2017)
    kl_warmup_steps: int = 0  # KL weight ramps linearly from 0 to beta (Bowman et al. 2016); 0: none, as the paper
    decoder_width: int = 64  # channels of the decoder's resize-convolution blocks
    decoder_depth: int = 2
    decoder_start: int = 4  # side of the feature map the latent is projected to (DCGAN's generator: 4)
    sample_grid: int = 8  # the PNGs after pretraining: sample_grid^2 samples, sample_grid reconstruction pairs

    def __post_init__(self) -> None:
        if self.beta < 0:
            raise ValueError(f"objective.beta must be >= 0, got {self.beta}")
        if self.kl_warmup_steps < 0:
            raise ValueError(f"objective.kl_warmup_steps must be >= 0, got {self.kl_warmup_steps}")
        if self.likelihood not in ("bernoulli", "gaussian"):
            raise ValueError(f"objective.likelihood must be bernoulli or gaussian, got {self.likelihood!r}")
        check_positive(self, "latent_dim", "decoder_start", "sample_grid")
        check_decoder_settings(self)

    def check_recipe(self, recipe: Any) -> None:
        """An image domain (the decoder needs a grid), and the collated ``[0, 1]`` pixels for a Bernoulli likelihood,
        which the image domain's augmented views (``data.views``) replace."""
        check_grid_domain(recipe, self.name)
        views = getattr(recipe.data, "views", "none")
        if self.likelihood == "bernoulli" and views != "none":
            raise ValueError(
                f"objective.likelihood=bernoulli scores the collated [0, 1] pixels, which data.views={views} "
                "replaces by augmented views: set data.views=none, or objective.likelihood=gaussian"
            )


def gaussian_kl(mu: Tensor, log_var: Tensor) -> Tensor:
    """``KL(N(mu, diag(exp(log_var))) || N(0, I))`` per sample, ``[B]`` (Kingma & Welling 2014, App. B)::

    KL = -1/2 * sum_k (1 + log_var_k - mu_k^2 - exp(log_var_k))
    """
    return -0.5 * (1.0 + log_var - mu.pow(2) - log_var.exp()).sum(-1)


def reconstruction_nll(pred: Tensor, target: Tensor, likelihood: str) -> Tensor:
    """``-log p(x | z)`` per sample, ``[B]``, summed over every element of ``[B, T, C]``.

    ``bernoulli``: ``pred`` are logits, ``target`` in ``[0, 1]`` (binary cross-entropy); ``gaussian``: ``pred`` is
    the mean of a unit-variance Gaussian, ``-log p = (x - pred)^2 / 2 + log(2 pi) / 2`` per element.
    """
    pred, target = pred.float(), target.detach().float()
    if likelihood == "bernoulli":
        nll = F.binary_cross_entropy_with_logits(pred, target, reduction="none")
    else:
        nll = 0.5 * (target - pred).pow(2) + 0.5 * math.log(2 * math.pi)
    return nll.flatten(1).sum(-1)


class GaussianPosterior(nn.Module):
    """``h [B, D]`` -> ``(mu, log_var)``, each ``[B, K]``: the encoder's two linear heads (eq. 9 ff.)."""

    def __init__(self, in_dim: int, latent_dim: int) -> None:
        super().__init__()
        self.mean = nn.Linear(in_dim, latent_dim)
        self.log_var = nn.Linear(in_dim, latent_dim)

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """``(mu, log_var)`` in float32, also under autocast (the ELBO runs in float32)."""
        h = h.float()
        return self.mean(h).float(), self.log_var(h).float()


class PosteriorMeanExport:
    """Saves the mean head beside the encoder's export: ``posterior_mean/model.safetensors`` (``weight`` ``[K, D]``,
    ``bias`` ``[K]``) and ``config.json``; ``mu = features @ weight.T + bias`` on the backbone's pooled features.
    It loads with torch alone: ``nn.Linear(cfg["in_features"], cfg["out_features"]).load_state_dict(load_file(...))``.
    """

    def __init__(self, mean: nn.Linear) -> None:
        self.mean = mean

    def save(self, out_dir: Path) -> None:
        folder = Path(out_dir) / POSTERIOR_MEAN_DIR
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.mean.state_dict().items()}
        save_file(state, str(folder / "model.safetensors"))
        config = {
            "in_features": self.mean.in_features,
            "out_features": self.mean.out_features,
            "input": "the backbone's pooled features (a SmallResNet: the global average of its final feature map; "
            "a ViT: the [CLS] token after the final layer norm)",
            "output": "the VAE posterior mean mu, the representation",
        }
        (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def load_posterior_mean(folder: Path, random_init: bool = False) -> nn.Linear:
    """The mean head :class:`PosteriorMeanExport` saved in ``folder`` (freshly initialised with ``random_init``)."""
    config = json.loads((Path(folder) / "config.json").read_text())
    head = nn.Linear(config["in_features"], config["out_features"])
    if not random_init:
        head.load_state_dict(load_file(str(Path(folder) / "model.safetensors")))
    return head


class PosteriorMeanEncoder(Encoder):
    """A loaded VAE export: the backbone's outputs with the posterior mean ``mu`` as :attr:`EncoderOutput.summary`,
    so probes (:meth:`EncoderOutput.pooled`) read the VAE's representation.

    Args:
        backbone: the exported encoder, as its domain loads it.
        mean: the posterior mean head on the backbone's pooled features.
    """

    def __init__(self, backbone: Encoder, mean: nn.Linear) -> None:
        super().__init__()
        self.backbone, self.mean = backbone, mean
        self.hidden_size, self.unit_dim, self.pipeline_tag = (
            backbone.hidden_size,
            backbone.unit_dim,
            backbone.pipeline_tag,
        )

    def encode(self, batch: Batch, mask: Tensor | None = None, all_layers: bool = False) -> EncoderOutput:
        out = self.backbone.encode(batch, mask, all_layers)
        return dataclasses.replace(out, summary=self.mean(out.pooled().float()))

    def export(self, out_dir: Path) -> None:
        self.backbone.export(out_dir)
        PosteriorMeanExport(self.mean).save(out_dir)


def with_posterior_mean(encoder: Encoder, export_dir: Path, random_init: bool = False) -> Encoder:
    """``encoder`` loaded from ``export_dir``, wrapped in :class:`PosteriorMeanEncoder` when the export holds a VAE's
    mean head (``posterior_mean/``); else ``encoder`` itself. A domain's ``load_encoder`` calls it."""
    folder = Path(export_dir) / POSTERIOR_MEAN_DIR
    if not (folder / "config.json").is_file():
        return encoder
    return PosteriorMeanEncoder(encoder, load_posterior_mean(folder, random_init))


class VAE(Objective):
    """The negative ELBO of a Gaussian-posterior VAE whose encoder is the backbone plus two linear heads.

    Attributes:
        posterior: the mean and log-variance heads.
        stem, decoder: ``z`` -> feature map -> patch units (logits or means).
        steps_done: buffer, optimizer steps completed (the KL warm-up's position; in every checkpoint).
    """

    artifact_samples = 64  # training images write_artifacts reconstructs (at most sample_grid of them)
    steps_done: Tensor

    def __init__(self, config: VAEConfig, encoder: Encoder) -> None:
        super().__init__(config, encoder)
        self.posterior = GaussianPosterior(encoder.hidden_size, config.latent_dim)
        self.stem = VectorStem(config.latent_dim, config.decoder_width, config.decoder_start)
        self.decoder = build_pixel_decoder(encoder, config, "vae", in_dim=config.decoder_width)
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        encoder.attach_export(POSTERIOR_MEAN_DIR, PosteriorMeanExport(self.posterior.mean))

    def kl_weight(self) -> Tensor:
        """``beta * min(1, steps_done / kl_warmup_steps)`` (``beta`` without warm-up)."""
        cfg = self.config
        if not cfg.kl_warmup_steps:
            return torch.tensor(cfg.beta, device=self.steps_done.device)
        return cfg.beta * (self.steps_done.float() / cfg.kl_warmup_steps).clamp(max=1.0)

    def target(self, batch: Batch) -> Tensor:
        """``[B, T, C]``: the ``[0, 1]`` pixels as patch units (Bernoulli), or the standardised units (Gaussian).

        Raises:
            ValueError: For a Bernoulli likelihood on a batch without its ``[0, 1]`` pixels.
        """
        if self.config.likelihood == "gaussian":
            return batch.units
        if Extra.PIXELS not in batch.extras:
            raise ValueError(
                "objective.likelihood=bernoulli needs the [0, 1] pixels of the batch (extras['pixels'], given by the "
                "image domain with data.views=none); set data.views=none or objective.likelihood=gaussian"
            )
        return patch_units(batch.extras[Extra.PIXELS], input_grid(batch, "vae"))

    def decode(self, z: Tensor, grid: tuple[int, int]) -> Tensor:
        """``z [B, K]`` -> ``[B, rows * cols, C]`` patch units: Bernoulli logits or Gaussian means."""
        return self.decoder(self.stem(z), grid)

    def forward(self, encoder: Encoder, batch: Batch) -> ObjectiveOutput:
        target = self.target(batch)
        mu, log_var = self.posterior(encoder.encode(batch).pooled())  # [B, K] each
        z = mu + (0.5 * log_var).exp() * torch.randn_like(mu)  # reparameterisation (sec. 2.4)
        nll = reconstruction_nll(self.decode(z, input_grid(batch, "vae")), target, self.config.likelihood).mean()
        kl = gaussian_kl(mu, log_var).mean()
        weight = self.kl_weight()
        loss = nll + weight * kl
        logs = {"kl": kl.detach(), "kl_weight": weight.detach(), "elbo": -(nll + kl).detach()}
        return ObjectiveOutput(loss=loss, terms={"reconstruction": nll, "kl": weight * kl}, logs=logs)

    def after_optimizer_step(self, encoder: Encoder, step: int, max_steps: int) -> None:
        self.steps_done.fill_(step)

    def displayed(self, units: Tensor, batch: Batch) -> Tensor:
        """Decoded or target units as ``[N, C, H, W]`` images (Bernoulli: pixel probabilities). ``C`` is the pixels'
        when the batch has them, else 1 when a unit is a square patch and 3 otherwise (the image domain's channels)."""
        if Extra.PIXELS in batch.extras:
            channels = batch.extras[Extra.PIXELS].shape[1]
        else:
            channels = patch_geometry(units.shape[-1], "vae")[0]
        return unit_images(units.float(), input_grid(batch, "vae"), channels)

    @torch.no_grad()
    def write_artifacts(self, encoder: Encoder, batch: Batch, run_dir: Path) -> list[Path]:
        """Draw ``sample_grid^2`` decoded samples of ``z ~ N(0, I)`` (seed 0), and a row of ``sample_grid`` inputs
        over a row of their reconstructions from ``mu``, into ``run_dir`` as PNGs (:data:`SAMPLES_FILE`,
        :data:`RECONSTRUCTIONS_FILE`); returns their paths. Gaussian outputs are min-max scaled for display."""
        from torchvision.utils import save_image  # only when figures are drawn

        cfg, grid = self.config, input_grid(batch, "vae")
        n = min(cfg.sample_grid, batch.batch_size)
        z = torch.randn(cfg.sample_grid**2, cfg.latent_dim, generator=torch.Generator().manual_seed(0))
        samples = self.decode(z.to(batch.units.device), grid)
        mu, _ = self.posterior(encoder.encode(batch).pooled())
        pairs = torch.cat([self.target(batch)[:n], self.decode(mu[:n], grid)])
        if cfg.likelihood == "bernoulli":
            samples, pairs[n:] = samples.sigmoid(), pairs[n:].sigmoid()
        paths = [Path(run_dir) / SAMPLES_FILE, Path(run_dir) / RECONSTRUCTIONS_FILE]
        scaled = cfg.likelihood == "gaussian"
        save_image(self.displayed(samples, batch), paths[0], nrow=cfg.sample_grid, normalize=scaled)
        save_image(self.displayed(pairs, batch), paths[1], nrow=n, normalize=scaled)
        log.info("vae: samples and reconstructions in %s, %s", *paths)
        return paths
