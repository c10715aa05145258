"""Exemplar triplets: semi-hard mining against a brute-force search, the loss against torch's TripletMarginLoss on
the mined triplets, learning, exact resume, and the settings refused at load time.

Neither pytorch-metric-learning nor TF-Addons is installed, and lightly has no semi-hard miner: the reference
mining below is TF-Addons' ``triplet_semihard_loss`` rule written out one (anchor, positive) pair at a time.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from domains.image.units import image_batch
from mmssl.config import ConfigError, from_dict
from mmssl.objectives.base import SSLModel
from mmssl.objectives.triplet import Triplet, TripletConfig, distance, semi_hard_triplet_loss
from mmssl.recipe import load_recipe
from tests.fitting import first_last, fit
from tests.mmssl.objectives.resume_checks import assert_resumes_exactly
from tests.mmssl.objectives.view_fixtures import (
    PATCH,
    MLPEncoder,
    new_images_every_step,
    projections,
    smooth_images,
    views_batch,
    vit,
)

SMALL = {"projector_hidden_dim": 64, "projector_dim": 32}


def _brute_force_negative(z: torch.Tensor, labels: torch.Tensor, a: int, p: int, kind: str, fallback: str) -> int:
    """Among the negatives of anchor a, the closest one farther than p; if none, the farthest (or the closest)."""
    d = lambda i, j: float(distance(z[i], z[j], kind))  # noqa: E731
    negatives = [n for n in range(len(labels)) if labels[n] != labels[a]]
    farther = [n for n in negatives if d(a, n) > d(a, p)]
    if farther:
        return min(farther, key=lambda n: d(a, n))
    return max(negatives, key=lambda n: d(a, n)) if fallback == "farthest" else min(negatives, key=lambda n: d(a, n))


def _embeddings(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Three views of five images: close views, and images that overlap, so that both mining branches occur."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(5, 4, generator=g, dtype=torch.float64)
    z = torch.cat([centres + 0.7 * torch.randn(5, 4, generator=g, dtype=torch.float64) for _ in range(3)])
    z[10] = -z[0]  # a third view of image 0 opposite its first: from either, every negative is closer (fallback)
    return z.requires_grad_(), torch.arange(5).repeat(3)


def _reference(z: torch.Tensor, labels: torch.Tensor, margin: float, kind: str, fallback: str):
    """The mined triplets scored by torch's own triplet losses, and whether any pair fell back."""
    zn = F.normalize(z, dim=1)
    pairs = [(a, p) for a in range(len(labels)) for p in range(len(labels)) if a != p and labels[a] == labels[p]]
    negatives = [_brute_force_negative(zn.detach(), labels, a, p, kind, fallback) for a, p in pairs]
    a, p = zip(*pairs)
    anchors, positives, negs = zn[list(a)], zn[list(p)], zn[negatives]
    if kind == "euclidean":
        loss = nn.TripletMarginLoss(margin=margin, p=2, eps=0.0)(anchors, positives, negs)
    else:
        fn = (
            (lambda x, y: (x - y).pow(2).sum(-1))
            if kind == "squared_euclidean"
            else (lambda x, y: 1 - F.cosine_similarity(x, y))
        )
        loss = nn.TripletMarginWithDistanceLoss(distance_function=fn, margin=margin)(anchors, positives, negs)
    zd = zn.detach()
    fell_back = any(
        all(
            float(distance(zd[i], zd[n], kind)) <= float(distance(zd[i], zd[j], kind))
            for n in range(len(labels))
            if labels[n] != labels[i]
        )
        for i, j in pairs
    )
    return loss, torch.tensor(negatives), fell_back


@pytest.mark.parametrize("kind", ["euclidean", "squared_euclidean", "cosine"])
@pytest.mark.parametrize("fallback", ["farthest", "hardest"])
def test_mining_and_loss_match_brute_force_and_torch_triplet_loss(kind: str, fallback: str) -> None:
    z, labels = _embeddings()
    ours, negatives = semi_hard_triplet_loss(z, labels, 0.3, kind, fallback)
    ref, ref_negatives, fell_back = _reference(z, labels, 0.3, kind, fallback)
    assert fell_back, "the fixture must exercise the fallback"
    assert torch.equal(negatives, ref_negatives)
    torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=1e-6)
    (g_ours,), (g_ref,) = torch.autograd.grad(ours, z), torch.autograd.grad(ref, z)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-4, atol=1e-6)


def test_a_batch_of_one_image_has_no_negatives() -> None:
    with pytest.raises(ValueError, match="at least two images"):
        semi_hard_triplet_loss(torch.randn(2, 3), torch.zeros(2, dtype=torch.long), 0.2)


def test_objective_loss_is_the_mined_triplet_loss_of_the_projected_views() -> None:
    enc = vit()
    torch.manual_seed(1)
    objective = Triplet(TripletConfig(**SMALL), enc)
    batch = views_batch(smooth_images(), num_views=3)
    out = objective(enc, batch)
    z = torch.cat(projections(objective, enc, batch.views))
    expected, _ = semi_hard_triplet_loss(z, torch.arange(batch.batch_size).repeat(3), 0.2)
    torch.testing.assert_close(out.loss, expected)
    assert 0.0 <= float(out.logs["triplet_accuracy"]) <= 1.0 and float(out.logs["embedding_std"]) > 0
    with pytest.raises(ValueError, match="data.views"):
        objective(enc, image_batch(smooth_images(), PATCH))


@pytest.mark.parametrize("kind", ["squared_euclidean", "cosine"])
def test_loss_decreases(kind: str) -> None:
    torch.manual_seed(0)
    enc = MLPEncoder()
    model = SSLModel(enc, Triplet(TripletConfig(distance=kind, **SMALL), enc))
    first, last = first_last(fit(model, new_images_every_step, 40, lr=2e-3, optimizer=torch.optim.Adam))
    assert last < 0.8 * first, (first, last)


def test_resumes_exactly() -> None:
    def build(seed: int) -> SSLModel:
        enc = vit(seed)
        torch.manual_seed(seed)
        return SSLModel(enc, Triplet(TripletConfig(**SMALL), enc))

    assert_resumes_exactly(build, {"objective.projector.1.running_mean"}, "objective.projector.")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("margin", 0.0),
        ("margin", -0.1),
        ("distance", "manhattan"),
        ("fallback_negative", "random"),
        ("projector_dim", 0),
    ],
)
def test_bad_settings_are_refused_naming_the_key(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"objective.{key}"):
        from_dict(TripletConfig, {"name": "triplet", key: value}, "objective")


def test_recipe_refuses_a_bad_margin_at_load_time() -> None:
    with pytest.raises(ConfigError, match="objective.margin"):
        load_recipe("triplet", ["objective.margin=0"])
