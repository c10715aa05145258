"""Deep InfoMax: the local and global losses against the authors' formulation written out, learning, exact resume,
and the settings refused at load time."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from domains.image.encoders import ImageEncoderConfig, build_image_encoder
from domains.image.units import image_batch
from mmssl.config import ConfigError, from_dict
from mmssl.encoder import Encoder
from mmssl.objectives.base import SSLModel
from mmssl.objectives.dim import DIM, DIMConfig, dim_loss, dim_scores
from mmssl.recipe import load_recipe, recipe_from_dict
from tests.fitting import first_last, fit
from tests.mmssl.objectives.resume_checks import assert_resumes_exactly
from tests.mmssl.objectives.view_fixtures import PATCH, SIZE, MLPEncoder, smooth_images, views_batch

SMALL = {"mi_units": 16}


def resnet(seed: int = 0, size: int = SIZE) -> Encoder:
    """A width-4 ResNet-18: a 2x2 feature map (4 locations) on 16x16 images."""
    torch.manual_seed(seed)
    return build_image_encoder(ImageEncoderConfig(arch="resnet", resnet_width=4, patch_size=PATCH), (size, size), 1)


def _reference(scores: torch.Tensor, keep: torch.Tensor, estimator: str) -> torch.Tensor:
    """Hjelm et al. (2019) with the authors' choice of negatives, one (location, summary) pair at a time.

    JSD (eq. 4, without 2 log 2) and DV (eq. 2) average over every positive (i, t, i) and negative (i, t, k != i);
    InfoNCE (eq. 5) classifies each positive against summary i scored with the other inputs' locations.
    """
    b, t, _ = scores.shape
    pos = [scores[i, u, i] for i in range(b) for u in range(t) if keep[i, u]]
    neg = [scores[i, u, k] for i in range(b) for u in range(t) for k in range(b) if keep[i, u] and k != i]
    if estimator == "jsd":
        return torch.stack([F.softplus(-p) for p in pos]).mean() + torch.stack([F.softplus(n) for n in neg]).mean()
    if estimator == "dv":
        return torch.log(torch.stack([torch.exp(n) for n in neg]).mean()) - torch.stack(pos).mean()
    terms = []
    for i in range(b):
        others = [scores[j, u, i] for j in range(b) for u in range(t) if j != i and keep[j, u]]
        for u in range(t):
            if keep[i, u]:
                denom = torch.exp(scores[i, u, i]) + sum(torch.exp(o) for o in others)
                terms.append(torch.log(denom) - scores[i, u, i])
    return torch.stack(terms).mean()


@pytest.mark.parametrize("estimator", ["jsd", "infonce", "dv"])
def test_dim_loss_matches_the_written_out_estimators_with_padding(estimator: str) -> None:
    g = torch.Generator().manual_seed(0)
    local = torch.randn(3, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    summary = torch.randn(3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    keep = torch.tensor([[True] * 4, [True, True, False, False], [True, False, True, True]])
    scores = dim_scores(local, summary)
    torch.testing.assert_close(scores[1, 2, 0], (local[1, 2] @ summary[0]).float())
    ours = dim_loss(scores, keep, estimator)
    ref = _reference(local.float() @ summary.float().T, keep, estimator)  # scores written as [B, T, B]
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(torch.autograd.grad(ours, (local, summary)), torch.autograd.grad(ref, (local, summary))):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_objective_weights_the_local_and_global_terms() -> None:
    enc = resnet()
    objective = DIM(DIMConfig(alpha=0.5, beta=2.0, **SMALL), enc).eval()  # eval: no batch statistics; 1/sqrt(16) scale
    batch = image_batch(smooth_images(), PATCH)
    out = objective(enc, batch)
    hidden, summary = enc.encode(batch).hidden, enc.encode(batch).pooled()
    keep = torch.ones(hidden.shape[:2], dtype=torch.bool)
    b, t, d = hidden.shape
    critic = objective.local_critic
    local = dim_loss(
        dim_scores(critic.local_net(hidden.reshape(b * t, d)).view(b, t, -1), critic.summary_net(summary) / 4.0),
        keep,
        "jsd",
    )
    codes = objective.global_critic.local_net(hidden.reshape(b * t, d)).view(b, t, -1)
    whole = codes.mean(1, keepdim=True)  # the whole map, one vector per image
    glob = dim_loss(dim_scores(whole, objective.global_critic.summary_net(summary) / 4.0), keep[:, :1], "jsd")
    torch.testing.assert_close(out.terms["local"], local)
    torch.testing.assert_close(out.terms["global"], glob)
    torch.testing.assert_close(out.loss, 2.0 * local + 0.5 * glob)
    assert set(out.logs) == {"local_accuracy", "global_accuracy"}


def test_bilinear_critic_scores_h_w_s() -> None:
    """discriminator=bilinear is DGI's D(h, s) = h^T W s on the raw features and summaries."""
    enc = resnet()
    objective = DIM(DIMConfig(discriminator="bilinear", estimator="infonce"), enc)
    batch = image_batch(smooth_images(), PATCH)
    encoded = enc.encode(batch)
    weight = objective.local_critic.weight
    scores = torch.einsum("itd,de,ke->itk", encoded.hidden, weight, encoded.pooled())
    keep = torch.ones(scores.shape[:2], dtype=torch.bool)
    torch.testing.assert_close(objective(enc, batch).loss, dim_loss(scores, keep, "infonce"))


@pytest.mark.parametrize("estimator", ["jsd", "infonce"])
def test_loss_decreases(estimator: str) -> None:
    enc = resnet()
    torch.manual_seed(1)
    model = SSLModel(enc, DIM(DIMConfig(estimator=estimator, alpha=0.5, **SMALL), enc))
    losses = fit(model, lambda step: image_batch(smooth_images(seed=step), PATCH), 30, lr=2e-3)
    first, last = first_last(losses)
    assert last < first - 0.1 * abs(first), (first, last)


def test_resumes_exactly() -> None:
    def build(seed: int) -> SSLModel:
        enc = resnet(seed)
        return SSLModel(enc, DIM(DIMConfig(alpha=1.0, **SMALL), enc))

    saved = {"objective.local_critic.local_net.block.1.running_mean", "objective.global_critic.summary_net.norm.weight"}
    assert_resumes_exactly(build, saved, "objective.global_critic.local_net.")


def test_views_are_not_needed_and_are_ignored() -> None:
    enc = resnet()
    objective = DIM(DIMConfig(**SMALL), enc).eval()
    images = smooth_images()
    torch.testing.assert_close(
        objective(enc, views_batch(images)).loss, objective(enc, image_batch(images, PATCH)).loss
    )


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("estimator", "nwj", "objective.estimator"),
        ("discriminator", "concat", "objective.discriminator"),
        ("alpha", -1.0, "objective.alpha"),
        ("beta", 0.0, "objective.alpha and objective.beta are both 0"),
        ("mi_units", 0, "objective.mi_units"),
    ],
)
def test_bad_settings_are_refused_naming_the_key(key: str, value: object, message: str) -> None:
    settings = {"name": "dim", key: value}
    if key == "beta":
        settings["alpha"] = 0.0
    with pytest.raises(ConfigError, match=message):
        from_dict(DIMConfig, settings, "objective")


def test_recipe_without_a_spatial_map_is_refused_at_load_time() -> None:
    """The local term on text tokens (no spatial map) fails when the recipe is read; beta=0 (global only) loads."""
    raw = {"name": "x", "domain": "text", "objective": {"name": "dim"}}
    with pytest.raises(ConfigError, match="objective.beta=1.0: the local MI term needs an encoder with a spatial map"):
        recipe_from_dict(raw)
    recipe_from_dict({**raw, "objective": {"name": "dim", "beta": 0.0, "alpha": 1.0}})
    with pytest.raises(ConfigError, match="objective.estimator"):
        load_recipe("dim", ["objective.estimator=mine"])


def test_a_map_of_one_location_is_refused() -> None:
    """An encoder whose map is a single vector (an MLP; a ResNet on 8x8 images: 1x1 map) has no local features."""
    with pytest.raises(ValueError, match="objective.beta=1.0: the encoder's feature map has 1 location"):
        enc = MLPEncoder()
        DIM(DIMConfig(**SMALL), enc)(enc, views_batch(smooth_images()))
    enc = resnet(size=8)
    with pytest.raises(ValueError, match="1 location"):
        DIM(DIMConfig(**SMALL), enc)(enc, image_batch(smooth_images()[..., :8, :8], PATCH))
    global_only = DIM(DIMConfig(alpha=1.0, beta=0.0, **SMALL), enc)
    assert math.isfinite(float(global_only(enc, image_batch(smooth_images()[..., :8, :8], PATCH)).loss))
