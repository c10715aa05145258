"""LeJEPA's SIGReg: the statistic against lightly and the paper's formula, the prediction term, two processes (and
the 1/world_size gradient of a plain all_reduce), the slices, the views (the batch's or masked ones), resume,
learning. Every domain's units are run by tests/contracts (the objective declares ids, features, grid, graph)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from lightly.loss import LeJEPALoss
from lightly.loss import SIGReg as LightlySIGReg
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from domains.image.units import image_batch
from mmssl.config import ConfigError, from_dict
from mmssl.encoder import Encoder
from mmssl.masking import random_mask
from mmssl.objectives import objective_spec
from mmssl.objectives.base import SSLModel
from mmssl.objectives.sigreg import (
    SIGReg,
    SIGRegConfig,
    epps_pulley_grid,
    lejepa_loss,
    prediction_loss,
    sigreg_loss,
    slice_directions,
)
from mmssl.types import Batch, EncoderOutput
from tests.fitting import first_last, fit
from tests.mmssl.objectives.loss_checks import (
    LOCAL_B,
    WORLD,
    assert_decreases_on_a_toy_embedding,
    assert_float32_under_bf16_autocast,
    assert_same_loss_and_grads,
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

SMALL = {"projector_hidden_dim": 64, "projector_dim": 32, "num_slices": 64}
K, M = 6, 16  # projection width, slices


def projections(seed: int, views: int = 3, n: int = 8) -> Tensor:
    """``[views, n, K]`` float64 projections that require a gradient."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(views, n, K, generator=g, dtype=torch.float64).requires_grad_()


def lightly_directions(seed: int) -> Tensor:
    """The slices lightly's SIGReg draws after ``torch.manual_seed(seed)`` (randn in the projections' dtype)."""
    torch.manual_seed(seed)
    a = torch.randn(K, M, dtype=torch.float64)
    return a / a.norm(dim=0)


def sigreg_model(config: SIGRegConfig | None = None, seed: int = 0) -> SSLModel:
    enc = vit(seed)
    torch.manual_seed(1)
    return SSLModel(enc, SIGReg(config or SIGRegConfig(**SMALL), enc))


# ---------------------------------------------------------------- SIGReg and the prediction term


def test_sigreg_matches_lightly() -> None:
    proj = projections(0)
    torch.manual_seed(3)
    ref = LightlySIGReg(num_vectors=M).double()(proj)
    assert_same_loss_and_grads(sigreg_loss(proj, lightly_directions(3)), ref, proj)


def test_sigreg_is_the_papers_epps_pulley_statistic() -> None:
    """The paper's form, written out: the complex empirical characteristic function, the trapezoid rule over
    ``[-t_max, t_max]`` on 33 points, ``N`` times the weighted squared distance to ``exp(-t^2 / 2)``."""
    proj, directions = projections(1), slice_directions(K, M, seed=0).double()
    t = torch.linspace(-3.0, 3.0, 33, dtype=torch.float64)
    phi = torch.exp(-(t**2) / 2)
    ecf = torch.exp(1j * (proj @ directions).unsqueeze(-1) * t).mean(1)  # [V, M, 33]
    err = ((ecf.real - phi) ** 2 + ecf.imag**2) * phi
    ref = (torch.trapezoid(err, t, dim=-1) * proj.shape[1]).mean()
    assert_same_loss_and_grads(sigreg_loss(proj, directions), ref, proj)


def test_sigreg_is_small_for_gaussian_samples_and_large_for_a_collapse() -> None:
    directions = slice_directions(K, 64, seed=0)
    gaussian = torch.randn(512, K, generator=torch.Generator().manual_seed(0))
    collapsed = torch.ones(512, K) + 0.01 * gaussian
    assert sigreg_loss(gaussian, directions) < 3.0  # about 1 in expectation under the null
    assert sigreg_loss(collapsed, directions) > 100.0


def test_lejepa_loss_matches_lightly() -> None:
    proj = projections(2, views=4)
    torch.manual_seed(4)
    ref = LeJEPALoss(lambda_param=0.05, sigreg_num_vectors=M).double()(local_proj=proj[2:], global_proj=proj[:2])
    loss, terms = lejepa_loss(proj, lightly_directions(4), weight=0.05, num_global=2)
    assert_same_loss_and_grads(loss, ref, proj)
    torch.testing.assert_close(loss, 0.95 * terms["prediction"] + 0.05 * terms["sigreg"])


def test_prediction_term_is_the_distance_to_the_centre_of_the_global_views() -> None:
    proj = projections(3, views=4)
    centre = (proj[0] + proj[1]) / 2
    ref = torch.stack([((centre - proj[v]) ** 2).mean() for v in range(4)]).mean()
    assert_same_loss_and_grads(prediction_loss(proj, 2), ref, proj)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: sigreg_loss(torch.randn(8, 5), torch.randn(6, 4)), "must agree"),
        (lambda: sigreg_loss(torch.randn(1, 6), torch.randn(6, 4)), "at least 2 samples"),
        (lambda: sigreg_loss(torch.randn(8, 6), torch.randn(6, 4), knots=1), "knots"),
        (lambda: prediction_loss(torch.randn(2, 8, 6), 3), "global views"),
        (lambda: lejepa_loss(torch.randn(2, 8, 6), torch.randn(6, 4), weight=1.5), "weight"),
    ],
)
def test_invalid_arguments_are_named(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_lejepa_loss_decreases_on_a_toy_embedding() -> None:
    directions = slice_directions(16, 128, seed=0)
    assert_decreases_on_a_toy_embedding(
        lambda z1, z2, predictor, x1, x2: lejepa_loss(torch.stack([z1, z2]), directions, 0.05)[0]
    )


def test_lejepa_loss_stays_float32_under_bf16_autocast() -> None:
    directions = slice_directions(32, M, seed=0)
    assert_float32_under_bf16_autocast(lambda z1, z2: lejepa_loss(torch.stack([z1, z2]), directions))


def test_slices_are_unit_directions_fixed_by_their_seed() -> None:
    a = slice_directions(K, M, seed=7)
    torch.testing.assert_close(a.norm(dim=0), torch.ones(M))
    assert torch.equal(a, slice_directions(K, M, seed=7)) and not torch.equal(a, slice_directions(K, M, seed=8))


# ---------------------------------------------------------------- two processes

DIRECTIONS = slice_directions(K, M, seed=0)


def _sigreg_plain_all_reduce(z: Tensor) -> Tensor:
    """SIGReg with the sums reduced by a plain ``dist.all_reduce``, outside autograd: lightly's 2026 bug. Its
    value is the global statistic, but each process's gradient sees its own share of the sums only."""
    t, phi, weights = epps_pulley_grid(17, 3.0)
    x_t = (z @ DIRECTIONS).unsqueeze(-1) * t
    sums = torch.stack([x_t.cos().sum(0), x_t.sin().sum(0)])
    reduced = sums.detach().clone()
    dist.all_reduce(reduced)
    sums = sums + (reduced - sums.detach())  # the value of the global sums, the gradient of the local ones
    n = z.shape[0] * WORLD
    return ((((sums[0] / n - phi) ** 2 + (sums[1] / n) ** 2) @ weights) * n).mean()


def _ddp_and_reference_grads(loss_fn, rank: int) -> tuple[list[Tensor], list[Tensor]]:
    """Parameter gradients of DDP on 2 halves and of one process on the global batch, for ``loss_fn(z, rows)``."""
    torch.manual_seed(0)
    x, net = torch.randn(WORLD * LOCAL_B, 5), nn.Linear(5, K)
    reference = copy.deepcopy(net)
    loss_fn(reference(x), None).backward()
    ddp = DistributedDataParallel(net)
    rows = slice(rank * LOCAL_B, (rank + 1) * LOCAL_B)
    loss_fn(ddp(x[rows]), rows).backward()
    return [p.grad for p in ddp.module.parameters()], [p.grad for p in reference.parameters()]


def _two_processes(rank: int) -> None:
    one_vs_two_processes(
        "lejepa", lambda a, b, rows: lejepa_loss(torch.stack([a, b]), DIRECTIONS, 0.5, gather=rows is not None)[0], rank
    )
    # SIGReg alone: the gradient-carrying reduction gives one process's gradients; a plain all_reduce W times less
    ours, ref = _ddp_and_reference_grads(lambda z, rows: sigreg_loss(z, DIRECTIONS, gather=rows is not None), rank)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    plain, ref = _ddp_and_reference_grads(
        lambda z, rows: sigreg_loss(z, DIRECTIONS, gather=False) if rows is None else _sigreg_plain_all_reduce(z), rank
    )
    for a, b in zip(plain, ref):
        torch.testing.assert_close(a, b / WORLD, rtol=1e-5, atol=1e-6)
    # lightly's gathered SIGReg (its fixed, autograd-aware all_reduce) on the same halves and slices
    local = torch.randn(WORLD * LOCAL_B, K, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    local = local[rank * LOCAL_B : (rank + 1) * LOCAL_B]
    mine, theirs = local.clone().requires_grad_(), local.clone().requires_grad_()
    torch.manual_seed(9)
    ref_loss = LightlySIGReg(num_vectors=M, gather_distributed=True).double()(theirs)
    loss = sigreg_loss(mine, lightly_directions(9))
    torch.testing.assert_close(loss, ref_loss)
    loss.backward()
    ref_loss.backward()
    torch.testing.assert_close(mine.grad, theirs.grad)


@pytest.mark.timeout(120)
def test_two_processes_match_one_process_on_the_global_batch(tmp_path: Path) -> None:
    run_in_two_processes(_two_processes, tmp_path)


# ---------------------------------------------------------------- the objective


def test_loss_is_lejepa_on_the_projections_of_the_batch_views_with_local_crops() -> None:
    model = sigreg_model()
    batch = views_batch(smooth_images(), num_views=4)
    out = model(batch)
    objective = model.objective
    h = torch.cat([model.encoder.encode(v).pooled() for v in batch.views])
    proj = objective.projector(h).view(4, batch.batch_size, -1)
    loss, terms = lejepa_loss(proj, slice_directions(32, 64, seed=0), 0.05, num_global=2)
    torch.testing.assert_close(out.loss, loss)
    assert set(out.terms) == {"prediction", "sigreg"} and out.loss.requires_grad
    assert all(not v.requires_grad for v in out.logs.values())


def test_without_batch_views_it_masks_its_own_views() -> None:
    model = sigreg_model(SIGRegConfig(**SMALL, masked_views=3, mask_prob=0.5))
    batch = image_batch(smooth_images(), PATCH)  # no views: 16 patch units per image
    torch.manual_seed(0)
    out = model(batch)
    torch.manual_seed(0)
    h = []
    for _ in range(3):
        mask = random_mask(batch.maskable, ratio=0.5)
        assert mask.sum(1).eq(8).all()
        h.append(model.encoder.encode(batch, mask=mask).pooled())
    proj = model.objective.projector(torch.cat(h)).view(3, batch.batch_size, -1)
    loss, _ = lejepa_loss(proj, slice_directions(32, 64, seed=0), 0.05, num_global=3)  # every masked view is global
    torch.testing.assert_close(out.loss, loss)


class _TokenEncoder(Encoder):
    """Token ids without a mask token (GPT-2 like)."""

    hidden_size = 8
    vocab_size = 10

    def encode(self, batch: Batch, mask: Tensor | None = None, all_layers: bool = False) -> EncoderOutput:
        raise AssertionError("never reached")

    def export(self, out_dir: Path) -> None:
        raise NotImplementedError


def test_masked_views_of_tokens_need_a_mask_token() -> None:
    encoder = _TokenEncoder()
    objective = SIGReg(SIGRegConfig(**SMALL), encoder)
    batch = Batch(units=torch.zeros(4, 5, dtype=torch.long), padding_mask=torch.zeros(4, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="no mask token"):
        objective(encoder, batch)


def test_slices_follow_the_optimizer_step_which_is_saved_and_resumes_exactly() -> None:
    model = sigreg_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for step in range(1, 4):
        loss = model(new_images_every_step(step)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.after_optimizer_step(step, 10)
    state = copy.deepcopy(model.state_dict())
    assert int(state["objective.step"]) == 3

    resumed = sigreg_model(seed=5)
    resumed.load_state_dict(state)
    batch = new_images_every_step(9)
    out = model(batch)
    assert torch.equal(out.loss, resumed(batch).loss)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), resumed.state_dict().values()))
    h = torch.cat([model.encoder.encode(v).pooled() for v in batch.views])
    proj = model.objective.projector(h).view(2, batch.batch_size, -1)
    torch.testing.assert_close(out.loss, lejepa_loss(proj, slice_directions(32, 64, seed=3))[0])


def test_loss_decreases() -> None:
    torch.manual_seed(0)
    enc = MLPEncoder()
    model = SSLModel(enc, SIGReg(SIGRegConfig(**SMALL), enc))
    first, last = first_last(fit(model, new_images_every_step, 40, lr=2e-3, optimizer=torch.optim.Adam))
    assert last < first - 0.05 * max(abs(first), 1.0), (first, last)


def test_builds_from_its_config_defaults() -> None:
    config = from_dict(SIGRegConfig, {"name": "sigreg"}, "objective")
    assert config == objective_spec("sigreg").config_cls() and config.weight == 0.05
    with torch.device("meta"):
        objective = SIGReg(config, vit())
    assert [m.out_features for m in objective.projector if isinstance(m, nn.Linear)] == [2048, 2048, 128]


@pytest.mark.parametrize(
    ("key", "value"),
    [("weight", 1.5), ("knots", 1), ("num_slices", 0), ("masked_views", 1), ("mask_prob", 1.0), ("t_max", 0.0)],
)
def test_invalid_config_values_name_the_key(key: str, value: float) -> None:
    with pytest.raises(ConfigError, match=f"objective.{key}"):
        from_dict(SIGRegConfig, {"name": "sigreg", key: value}, "objective")
    with pytest.raises(ConfigError, match="unknown key 'objective.lambd'"):
        from_dict(SIGRegConfig, {"name": "sigreg", "lambd": 0.1}, "objective")
