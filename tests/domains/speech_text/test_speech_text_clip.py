"""The clip objective and retrieval recall: parity with independent computations, invariants, errors, learning."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mmssl.encoder import Encoder, TwoTowerEncoder
from mmssl.objectives.base import SSLModel
from mmssl.objectives.clip import CLIP, ClipConfig, ClipHeads, clip_loss
from mmssl.probes import retrieval_recall
from mmssl.types import Batch, EncoderOutput
from tests.fitting import fit


def reference_clip_loss(a: torch.Tensor, b: torch.Tensor, scale: float) -> float:
    """Radford et al. 2021, Fig. 3, written out with explicit sums in float64."""
    a = a.double() / a.double().norm(dim=1, keepdim=True)
    b = b.double() / b.double().norm(dim=1, keepdim=True)
    n = a.shape[0]
    total_ab = total_ba = 0.0
    for i in range(n):
        row = [scale * float(a[i] @ b[j]) for j in range(n)]
        col = [scale * float(b[i] @ a[j]) for j in range(n)]
        total_ab += -row[i] + math.log(sum(math.exp(x) for x in row))
        total_ba += -col[i] + math.log(sum(math.exp(x) for x in col))
    return (total_ab / n + total_ba / n) / 2


def test_clip_loss_matches_the_formula_and_is_symmetric() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    for scale in (1.0, 1 / 0.07, 100.0):
        assert float(clip_loss(a, b, scale)) == pytest.approx(reference_clip_loss(a, b, scale), rel=1e-5)
        assert float(clip_loss(a, b, scale)) == pytest.approx(float(clip_loss(b, a, scale)), rel=1e-6)
    # scale-invariant inputs: the loss reads directions only; perfectly aligned pairs at a high scale cost ~0
    assert float(clip_loss(3 * a, b, 10.0)) == pytest.approx(float(clip_loss(a, b, 10.0)), rel=1e-6)
    eye = torch.eye(4)
    assert float(clip_loss(eye, eye, 100.0)) < 1e-6


def test_clip_loss_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"\[B, P\]"):
        clip_loss(torch.randn(4, 3), torch.randn(5, 3), 1.0)


def test_heads_start_at_clip_temperature_and_clamp_at_100() -> None:
    heads = ClipHeads(8, 6, 4)
    assert float(heads.logit_scale().detach()) == pytest.approx(1 / 0.07, rel=1e-6)
    with torch.no_grad():
        heads.log_logit_scale.fill_(10.0)
    assert float(heads.logit_scale().detach()) == pytest.approx(100.0)


class Tower(Encoder):
    """A tiny mean-pooled MLP over ``[B, T, C]`` units."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, hidden))
        self.hidden_size = hidden

    def encode(self, batch: Batch, mask=None, all_layers: bool = False) -> EncoderOutput:
        return EncoderOutput(hidden=self.net(batch.units), padding_mask=batch.padding_mask)

    def export(self, out_dir) -> None:  # pragma: no cover - these tests never export
        raise AssertionError("the loss tests do not export")


class Towers(TwoTowerEncoder):
    def export_towers(self, out_dir) -> None:  # pragma: no cover - these tests never export
        raise AssertionError("the loss tests do not export")


def paired_batch(n: int = 8, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    text = Batch(units=torch.randn(n, 3, 5, generator=g), padding_mask=torch.zeros(n, 3, dtype=torch.bool))
    return Batch(units=torch.randn(n, 7, 4, generator=g), padding_mask=torch.zeros(n, 7, dtype=torch.bool), pair=text)


def test_clip_objective_learns_a_fixed_batch() -> None:
    torch.manual_seed(0)
    encoder = Towers(Tower(4, 16), Tower(5, 12))
    objective = CLIP(ClipConfig(projection_dim=8), encoder)
    batch = paired_batch()
    losses = fit(SSLModel(encoder, objective), batch, 30, lr=1e-2)
    assert losses[-1] < 0.5 * losses[0]
    out = objective(encoder, batch)
    assert float(out.logs["accuracy_a_to_b"]) == 1.0 and float(out.logs["accuracy_b_to_a"]) == 1.0
    assert encoder.paired.net[0].weight.grad is not None and objective.heads.log_logit_scale.grad is not None


def test_clip_objective_errors_name_what_is_missing() -> None:
    with pytest.raises(ValueError, match="two-tower encoder"):
        CLIP(ClipConfig(), Tower(4, 8))
    encoder = Towers(Tower(4, 16), Tower(5, 12))
    objective = CLIP(ClipConfig(projection_dim=8), encoder)
    with pytest.raises(ValueError, match=r"needs the paired .* inputs in Batch.pair"):
        objective(encoder, paired_batch().replace(pair=None))
    with pytest.raises(ValueError, match="init_temperature"):
        ClipConfig(init_temperature=0.001)


def naive_recall(queries: torch.Tensor, keys: torch.Tensor, k: int) -> float:
    hits = 0
    for i in range(len(queries)):
        scores = [float(F.cosine_similarity(queries[i], keys[j], dim=0)) for j in range(len(keys))]
        top = sorted(range(len(keys)), key=lambda j: -scores[j])[:k]
        hits += i in top
    return hits / len(queries)


def test_retrieval_recall_matches_a_naive_ranking() -> None:
    g = torch.Generator().manual_seed(1)
    keys = torch.randn(20, 6, generator=g)
    queries = keys + 0.9 * torch.randn(20, 6, generator=g)  # noisy matches: some ranked first, some not
    recall = retrieval_recall(queries, keys, ks=(1, 5))
    assert recall[1] == pytest.approx(naive_recall(queries, keys, 1))
    assert recall[5] == pytest.approx(naive_recall(queries, keys, 5))
    assert 0 < recall[1] < 1
    assert retrieval_recall(keys, keys, ks=(1,))[1] == 1.0
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        retrieval_recall(keys, keys[:3])
