"""VAE: the ELBO's terms against torch.distributions, the KL warm-up, learning, exact resume, the posterior mean in the
export, the PNGs of samples and reconstructions, and the recipe's load-time checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torch import nn
from torch.distributions import Bernoulli, Normal, kl_divergence

from mmssl.config import ConfigError
from mmssl.objectives.base import SSLModel
from mmssl.objectives.pixel_decoder import patch_units
from mmssl.objectives.vae import (
    POSTERIOR_MEAN_DIR,
    RECONSTRUCTIONS_FILE,
    SAMPLES_FILE,
    VAE,
    PosteriorMeanEncoder,
    VAEConfig,
    gaussian_kl,
    reconstruction_nll,
)
from mmssl.pretrain import pretrain
from mmssl.recipe import load_recipe
from mmssl.registry import DOMAINS
from tests.mmssl.objectives.pixel_fixtures import (
    MEAN,
    STD,
    batch_of,
    check_export_reloads_the_features,
    check_loss_decreases,
    check_resumes_exactly,
    pixels,
    resnet,
)

SMALL = {"latent_dim": 8, "decoder_width": 8}


def test_elbo_terms_match_torch_distributions() -> None:
    torch.manual_seed(0)
    mu, log_var = torch.randn(4, 6), torch.randn(4, 6)
    posterior, prior = Normal(mu, (0.5 * log_var).exp()), Normal(torch.zeros(6), torch.ones(6))
    torch.testing.assert_close(gaussian_kl(mu, log_var), kl_divergence(posterior, prior).sum(-1))
    logits, x = torch.randn(4, 5, 3), torch.rand(4, 5, 3)
    expected = (
        -Bernoulli(logits=logits, validate_args=False).log_prob(x).sum((1, 2))
    )  # continuous [0, 1] targets: the cross-entropy
    torch.testing.assert_close(reconstruction_nll(logits, x, "bernoulli"), expected)
    mean, y = torch.randn(4, 5, 3), torch.randn(4, 5, 3)
    torch.testing.assert_close(reconstruction_nll(mean, y, "gaussian"), -Normal(mean, 1.0).log_prob(y).sum((1, 2)))


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_loss_is_the_negative_elbo_of_one_reparameterised_sample(likelihood: str) -> None:
    enc, images = resnet(), pixels()
    batch = batch_of(images)
    objective = VAE(VAEConfig(likelihood=likelihood, beta=2.0, **SMALL), enc)
    torch.manual_seed(4)
    out = objective(enc, batch)

    mu, log_var = objective.posterior(enc.encode(batch).pooled())
    torch.manual_seed(4)
    z = mu + (0.5 * log_var).exp() * torch.randn_like(mu)
    pred = objective.decode(z, (7, 7))
    target = patch_units(images, (7, 7)) if likelihood == "bernoulli" else batch.units
    if likelihood == "bernoulli":  # the [0, 1] pixels are the inverse of the standardised units
        torch.testing.assert_close(target, batch.units * STD + MEAN)
        nll = -Bernoulli(logits=pred, validate_args=False).log_prob(target).sum((1, 2)).mean()
    else:
        nll = -Normal(pred, 1.0).log_prob(target).sum((1, 2)).mean()
    kl = kl_divergence(Normal(mu, (0.5 * log_var).exp()), Normal(0.0, 1.0)).sum(-1).mean()
    torch.testing.assert_close(out.loss, nll + 2.0 * kl)
    torch.testing.assert_close(out.logs["elbo"], -(nll + kl).detach())


def test_kl_weight_warms_up_linearly_to_beta() -> None:
    objective = VAE(VAEConfig(beta=0.5, kl_warmup_steps=10, **SMALL), resnet())
    weights = []
    for step in (0, 5, 10, 20):
        objective.steps_done.fill_(step)
        weights.append(float(objective.kl_weight()))
    assert weights == [0.0, 0.25, 0.5, 0.5]
    assert float(VAE(VAEConfig(beta=0.5, **SMALL), resnet()).kl_weight()) == 0.5  # no warm-up


def test_loss_decreases() -> None:
    # the cross-entropy of [0, 1] pixels is at least their entropy: the negative ELBO's floor
    floor = Bernoulli(probs=pixels(0)).entropy().sum((1, 2, 3)).mean().item()
    config = VAEConfig(latent_dim=8, decoder_width=16)
    check_loss_decreases(lambda: SSLModel(enc := resnet(), VAE(config, enc)), lr=1e-2, floor=floor)


def test_resumes_exactly_with_the_warm_up_position() -> None:
    config = VAEConfig(kl_warmup_steps=10, **SMALL)
    state = check_resumes_exactly(lambda seed: SSLModel(enc := resnet(seed), VAE(config, enc)))
    assert int(state["objective.steps_done"]) == 3


def test_export_gives_the_posterior_mean_without_mmssl(tmp_path: Path) -> None:
    enc = resnet()
    model = SSLModel(enc, VAE(VAEConfig(**SMALL), enc))
    features = check_export_reloads_the_features(model, tmp_path)  # SmallResNet.from_pretrained
    folder = tmp_path / POSTERIOR_MEAN_DIR
    config = json.loads((folder / "config.json").read_text())
    head = nn.Linear(config["in_features"], config["out_features"])  # torch and safetensors only
    head.load_state_dict(load_file(str(folder / "model.safetensors")))
    with torch.no_grad():
        mu, _ = model.objective.posterior(enc.encode(batch_of(pixels(9))).pooled())
        torch.testing.assert_close(head(features), mu, rtol=1e-5, atol=1e-5)
    assert config["out_features"] == 8


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_write_artifacts_draws_the_sample_and_reconstruction_grids(likelihood: str, tmp_path: Path) -> None:
    enc = resnet()
    model = SSLModel(enc, VAE(VAEConfig(likelihood=likelihood, sample_grid=4, **SMALL), enc)).eval()
    paths = model.objective.write_artifacts(enc, batch_of(pixels()), tmp_path)
    assert paths == [tmp_path / SAMPLES_FILE, tmp_path / RECONSTRUCTIONS_FILE]
    # torchvision's grid: 28-pixel images with 2-pixel padding around each
    assert Image.open(paths[0]).size == (4 * 30 + 2, 4 * 30 + 2)  # 4 x 4 samples
    assert Image.open(paths[1]).size == (4 * 30 + 2, 2 * 30 + 2)  # 4 inputs over their 4 reconstructions


def test_pretraining_writes_the_pngs_into_the_run_directory(tmp_path: Path, tiny_images: Path) -> None:
    overrides = [
        "data.source=numpy",
        f"data.path={tiny_images}",
        "encoder.resnet_width=4",
        "objective.decoder_width=8",
        "objective.latent_dim=4",
        "train.batch_size=8",
        "train.max_steps=2",
        "train.warmup_steps=1",
        "monitor.every=0",
    ]
    run = pretrain("vae", overrides, tmp_path / "run")
    assert Image.open(run / SAMPLES_FILE).size == (8 * 30 + 2, 8 * 30 + 2)  # the recipe's 8 x 8 grid
    assert Image.open(run / RECONSTRUCTIONS_FILE).size == (8 * 30 + 2, 2 * 30 + 2)
    # the domain's loader (what the probes read) gives mu as the pooled features
    loaded = DOMAINS.get("image").load_encoder(run / "export").eval()
    assert isinstance(loaded, PosteriorMeanEncoder) and loaded.hidden_size == 32
    batch = batch_of(pixels())
    with torch.no_grad():
        out, backbone = loaded.encode(batch), loaded.backbone.encode(batch)
    assert out.pooled().shape == (8, 4)
    torch.testing.assert_close(out.pooled(), loaded.mean(backbone.pooled()))
    assert torch.equal(out.hidden, backbone.hidden)
    head = load_file(str(run / "export" / POSTERIOR_MEAN_DIR / "model.safetensors"))
    torch.testing.assert_close(loaded.mean.weight, head["weight"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["objective.beta=-1"], "objective.beta must be >= 0, got -1"),
        (["objective.kl_warmup_steps=-5"], "objective.kl_warmup_steps must be >= 0"),
        (["objective.latent_dim=0"], "objective.latent_dim must be > 0"),
        (["objective.likelihood=poisson"], "objective.likelihood"),
        (["data.views=crop"], "objective.likelihood=bernoulli scores the collated \\[0, 1\\] pixels"),
    ],
)
def test_bad_settings_are_refused_at_recipe_load_time(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_recipe("vae", overrides)
    assert load_recipe("vae", ["data.views=crop", "objective.likelihood=gaussian"]).objective.likelihood == "gaussian"
