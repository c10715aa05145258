"""NNCLR: the support-set lookup and the loss against lightly's NNMemoryBankModule + NTXentLoss over several steps,
two processes, the support queue in training and in the checkpoint, learning."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from lightly.loss import NTXentLoss
from lightly.models.modules import NNMemoryBankModule
from torch import Tensor

from domains.image.units import image_batch
from mmssl.config import ConfigError, from_dict
from mmssl.objectives import objective_spec
from mmssl.objectives.base import SSLModel
from mmssl.objectives.memory import MemoryQueue
from mmssl.objectives.nnclr import NNCLR, NNCLRConfig, nnclr_loss
from mmssl.objectives.simclr import nt_xent
from tests.fitting import first_last, fit
from tests.mmssl.objectives.loss_checks import (
    LOCAL_B,
    WORLD,
    assert_decreases_on_a_toy_embedding,
    assert_float32_under_bf16_autocast,
    assert_same_loss_and_grads,
    grads,
    one_vs_two_processes,
    run_in_two_processes,
)
from tests.mmssl.objectives.view_fixtures import (
    PATCH,
    MLPEncoder,
    new_images_every_step,
    smooth_images,
    views_batch,
    vit,
)

SMALL = {"projector_hidden_dim": 64, "projector_dim": 32, "predictor_hidden_dim": 48, "queue_size": 16}
B, D = 8, 6


def nnclr(config: NNCLRConfig | None = None, seed: int = 0) -> SSLModel:
    enc = vit(seed)
    torch.manual_seed(1)
    return SSLModel(enc, NNCLR(config or NNCLRConfig(**SMALL), enc))


def step_inputs(step: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Projections ``z1, z2`` and predictions ``p1, p2`` (float64, requiring a gradient) of one step."""
    g = torch.Generator().manual_seed(step)
    z1 = torch.randn(B, D, generator=g, dtype=torch.float64)
    z2 = z1 + 0.3 * torch.randn(B, D, generator=g, dtype=torch.float64)
    p1, p2 = z1 + 0.1 * torch.randn_like(z1), z2 + 0.1 * torch.randn_like(z2)
    return z1, z2, p1.requires_grad_(), p2.requires_grad_()


# ---------------------------------------------------------------- the support set and the loss


def test_nearest_is_the_most_cosine_similar_key_as_stored() -> None:
    queue = MemoryQueue(dim=2, size=3)
    queue.enqueue(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, -1.0]]))
    found = queue.nearest(torch.tensor([[3.0, 0.2], [0.1, -5.0], [0.2, 4.0]]))
    torch.testing.assert_close(found, torch.tensor([[1.0, 0.0], [0.0, -1.0], [0.0, 1.0]]))
    assert not found.requires_grad
    with pytest.raises(ValueError, match=r"query must be \[B, 2\]"):
        queue.nearest(torch.randn(4, 3))


def test_nnclr_matches_lightly_memory_bank_and_nt_xent_over_several_steps() -> None:
    """lightly's NNCLR recipe: ``z0 = bank(z0, update=False); z1 = bank(z1, update=True)``, then
    ``(NTXentLoss(z0, p1) + NTXentLoss(z1, p0)) / 2``; our support set takes the normalised second view."""
    support = MemoryQueue(D, 16).double()
    bank = NNMemoryBankModule(size=(16, D)).double()
    bank.bank = support.queue.clone()
    criterion = NTXentLoss(temperature=0.1)
    for step in range(4):  # the bank fills and wraps around: 4 x 8 keys in 16 slots
        z1, z2, p1, p2 = step_inputs(step)
        ours = nnclr_loss(support.nearest(z1), support.nearest(z2), p1, p2, temperature=0.1)
        support.enqueue(F.normalize(z2, dim=1))
        nn1, nn2 = bank(z1, update=False), bank(z2, update=True)
        ref = (criterion(nn1, p2) + criterion(nn2, p1)) / 2
        assert_same_loss_and_grads(ours, ref, p1, p2)


def test_nnclr_is_nt_xent_with_the_neighbours_as_anchors() -> None:
    z1, z2, p1, p2 = step_inputs(0)
    support = MemoryQueue(D, 16).double()
    nn1, nn2 = support.nearest(z1), support.nearest(z2)
    expected = (nt_xent(nn1, p2, 0.1) + nt_xent(nn2, p1, 0.1)) / 2
    assert_same_loss_and_grads(nnclr_loss(nn1, nn2, p1, p2, 0.1), expected, p1, p2)
    assert all(g.abs().sum() > 0 for g in grads(nnclr_loss(nn1, nn2, p1, p2), p1, p2))


def test_nnclr_loss_decreases_on_a_toy_embedding() -> None:
    support = MemoryQueue(16, 64)
    support.enqueue(F.normalize(torch.randn(64, 16, generator=torch.Generator().manual_seed(3)), dim=1))

    def loss_of(z1: Tensor, z2: Tensor, predictor: torch.nn.Module, x1: Tensor, x2: Tensor) -> Tensor:
        loss = nnclr_loss(support.nearest(z1), support.nearest(z2), predictor(z1), predictor(z2), 0.2)
        support.enqueue(F.normalize(z2.detach(), dim=1))
        return loss

    assert_decreases_on_a_toy_embedding(loss_of)


def test_nnclr_loss_stays_float32_under_bf16_autocast() -> None:
    support = MemoryQueue(32, 20)
    assert_float32_under_bf16_autocast(lambda z1, z2: nnclr_loss(support.nearest(z1), support.nearest(z2), z1, z2))


# ---------------------------------------------------------------- two processes


def _two_processes(rank: int) -> None:
    torch.manual_seed(11)  # the same support set in both processes
    support = MemoryQueue(D, 12)

    def loss_fn(a: Tensor, b: Tensor, rows: slice | None) -> Tensor:
        return nnclr_loss(support.nearest(a), support.nearest(b), a, b, 0.5, gather=rows is not None)

    one_vs_two_processes("nnclr", loss_fn, rank)
    # each process enqueues its half; the support set ends up as one process's after the global batch, in order
    keys = F.normalize(torch.randn(WORLD * LOCAL_B, D, generator=torch.Generator().manual_seed(12)), dim=1)
    expected = support.negatives()
    expected[torch.arange(WORLD * LOCAL_B) % 12] = keys
    support.enqueue(keys[rank * LOCAL_B : (rank + 1) * LOCAL_B])
    assert torch.equal(support.queue, expected) and int(support.ptr) == WORLD * LOCAL_B


@pytest.mark.timeout(120)
def test_two_processes_match_one_process_on_the_global_batch(tmp_path: Path) -> None:
    run_in_two_processes(_two_processes, tmp_path)


# ---------------------------------------------------------------- the objective


def test_loss_uses_the_support_set_before_this_step_then_enqueues_the_second_view() -> None:
    model = nnclr()
    objective = model.objective
    batch = views_batch(smooth_images())
    before = copy.deepcopy(objective.support)
    out = model(batch)
    z1, z2 = (objective.projector(model.encoder.encode(v).pooled()) for v in batch.views)
    p1, p2 = objective.predictor(z1), objective.predictor(z2)
    expected = nnclr_loss(before.nearest(z1), before.nearest(z2), p1, p2, objective.config.temperature)
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(objective.support.queue[:B], F.normalize(z2.detach(), dim=1))
    assert int(objective.support.ptr) == B
    assert out.loss.requires_grad and all(not v.requires_grad for v in out.logs.values())
    model.eval()
    model(batch)
    assert int(objective.support.ptr) == B  # evaluation leaves the support set alone


def test_support_set_is_saved_and_resumes_exactly() -> None:
    model = nnclr()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for step in range(1, 4):
        loss = model(new_images_every_step(step)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.after_optimizer_step(step, 10)
    state = copy.deepcopy(model.state_dict())
    assert {"objective.support.queue", "objective.support.ptr"} <= set(state)
    assert int(state["objective.support.ptr"]) == (3 * B) % 16

    resumed = nnclr(seed=5)
    resumed.load_state_dict(state)
    batch = new_images_every_step(9)
    assert torch.equal(model(batch).loss, resumed(batch).loss)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), resumed.state_dict().values()))


def test_loss_decreases() -> None:
    torch.manual_seed(0)
    enc = MLPEncoder()
    model = SSLModel(enc, NNCLR(NNCLRConfig(**{**SMALL, "queue_size": 32}), enc))
    # the first 4 steps are left out: the support set starts as random vectors, as MoCo's queue
    first, last = first_last(fit(model, new_images_every_step, 30, lr=2e-3, optimizer=torch.optim.Adam), skip=4)
    assert last < first - 0.05 * max(abs(first), 1.0), (first, last)


def test_builds_from_its_config_defaults_and_needs_two_views() -> None:
    config = from_dict(NNCLRConfig, {"name": "nnclr"}, "objective")
    assert config == objective_spec("nnclr").config_cls()
    with torch.device("meta"):  # the paper's heads and 98304-key support set without the memory
        objective = NNCLR(config, vit())
    assert objective.support.queue.shape == (98304, 256) and objective.predictor[-1].out_features == 256
    model = nnclr()
    with pytest.raises(ValueError, match="data.views"):
        model(image_batch(smooth_images(), PATCH))
    with pytest.raises(ValueError, match="exactly two views"):
        model(views_batch(smooth_images(), num_views=3))


@pytest.mark.parametrize(("key", "value"), [("temperature", 0.0), ("queue_size", 0)])
def test_invalid_config_values_name_the_key(key: str, value: float) -> None:
    with pytest.raises(ConfigError, match=f"objective.{key}"):
        from_dict(NNCLRConfig, {"name": "nnclr", key: value}, "objective")
    with pytest.raises(ConfigError, match="unknown key 'objective.support_size'"):
        from_dict(NNCLRConfig, {"name": "nnclr", "support_size": 10}, "objective")
