"""Joint-embedding and masked-regression losses: parity with lightly, HF ViTMAE and the papers' formulas,
stop-gradients, two-process equivalence under gloo, and learning."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from lightly.loss import BarlowTwinsLoss, NegativeCosineSimilarity, NTXentLoss, VICRegLoss
from lightly.loss.vicreg_loss import covariance_loss, invariance_loss, variance_loss
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from transformers import ViTMAEConfig, ViTMAEForPreTraining

from mmssl.objectives.functional import (
    barlow_twins_loss,
    byol_loss,
    info_nce,
    masked_regression_loss,
    moco_v3_loss,
    nt_xent,
    simsiam_loss,
    vicreg_loss,
)

B, D = 8, 6


def _pair(seed: int = 0, b: int = B, d: int = D) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(b, d, generator=g, dtype=torch.float64)
    z2 = z1 + 0.5 * torch.randn(b, d, generator=g, dtype=torch.float64)  # a correlated second view
    return z1.requires_grad_(), z2.requires_grad_()


def _grads(loss: Tensor, *xs: Tensor) -> tuple[Tensor, ...]:
    return torch.autograd.grad(loss, xs)


def _assert_same_loss_and_grads(ours: Tensor, ref: Tensor, *xs: Tensor) -> None:
    torch.testing.assert_close(ours.double(), ref.double(), rtol=1e-5, atol=1e-6)
    for a, b in zip(_grads(ours, *xs), _grads(ref, *xs)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- parity with references


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_nt_xent_matches_lightly(temperature: float) -> None:
    z1, z2 = _pair()
    _assert_same_loss_and_grads(nt_xent(z1, z2, temperature), NTXentLoss(temperature)(z1, z2), z1, z2)


def test_nt_xent_matches_the_paper_formula_with_2n_minus_2_negatives() -> None:
    z1, z2 = _pair()
    views = F.normalize(torch.cat([z1, z2]), dim=1)
    n2 = views.shape[0]
    terms = []
    for i in range(n2):
        pos = (i + B) % n2
        denom = sum(torch.exp(views[i] @ views[k] / 0.5) for k in range(n2) if k != i)  # 2N - 1 terms: 1 pos + 2N-2 neg
        terms.append(-torch.log(torch.exp(views[i] @ views[pos] / 0.5) / denom))
    _assert_same_loss_and_grads(nt_xent(z1, z2), torch.stack(terms).mean(), z1, z2)


def test_nt_xent_is_symmetric_in_the_views() -> None:
    z1, z2 = _pair()
    torch.testing.assert_close(nt_xent(z1, z2), nt_xent(z2, z1))


def test_info_nce_with_queue_matches_lightly_memory_bank() -> None:
    q, k = _pair()
    queue = F.normalize(torch.randn(20, D, dtype=torch.float64), dim=1)
    ref_fn = NTXentLoss(0.2, memory_bank_size=(20, D)).double()
    ref_fn.memory_bank.bank = queue.clone()
    ref = ref_fn(q, k.detach())  # lightly's positive is q.k, its negatives the bank, like MoCo
    _assert_same_loss_and_grads(info_nce(q, k, queue, 0.2), ref, q)


def test_info_nce_without_queue_uses_the_other_keys_as_negatives() -> None:
    q, k = _pair()
    qn, kn = F.normalize(q, dim=1), F.normalize(k.detach(), dim=1)
    ref = torch.stack([-torch.log_softmax(qn[i] @ kn.T / 0.2, 0)[i] for i in range(B)]).mean()
    _assert_same_loss_and_grads(info_nce(q, k), ref, q)
    assert info_nce(q, k).grad_fn is not None and _grads(info_nce(q, k), q)[0].abs().sum() > 0


def test_info_nce_and_moco_v3_send_no_gradient_to_keys() -> None:
    q, k = _pair()
    for loss in (info_nce(q, k), info_nce(q, k, torch.randn(5, D, dtype=torch.float64)), moco_v3_loss(q, k)):
        grad_q, grad_k = torch.autograd.grad(loss, (q, k), allow_unused=True)
        assert grad_k is None and grad_q.abs().sum() > 0


def test_moco_v3_loss_matches_the_official_formula() -> None:
    q, k = _pair()
    tau = 0.2
    qn, kn = F.normalize(q, dim=1), F.normalize(k.detach(), dim=1)
    ce = torch.stack([torch.logsumexp(qn[i] @ kn.T / tau, 0) - qn[i] @ kn[i] / tau for i in range(B)]).mean()
    _assert_same_loss_and_grads(moco_v3_loss(q, k, tau), 2 * tau * ce, q)


def test_byol_and_simsiam_match_lightly_negative_cosine() -> None:
    p, z = _pair()
    _assert_same_loss_and_grads(byol_loss(p, z), 2 + 2 * NegativeCosineSimilarity()(p, z.detach()), p)
    _assert_same_loss_and_grads(simsiam_loss(p, z), NegativeCosineSimilarity()(p, z.detach()), p)


def test_byol_is_the_squared_distance_of_unit_vectors() -> None:
    p, z = _pair()
    ref = (F.normalize(p, dim=1) - F.normalize(z, dim=1)).pow(2).sum(1).mean()
    torch.testing.assert_close(byol_loss(p, z), ref)


@pytest.mark.parametrize("loss_fn", [byol_loss, simsiam_loss], ids=["byol", "simsiam"])
def test_bootstrap_losses_stop_the_gradient_of_the_target(loss_fn: Callable[[Tensor, Tensor], Tensor]) -> None:
    p, z = _pair()
    grad_p, grad_z = torch.autograd.grad(loss_fn(p, z), (p, z), allow_unused=True)
    assert grad_z is None and grad_p.abs().sum() > 0
    assert loss_fn(z.detach(), z) == pytest.approx(0.0 if loss_fn is byol_loss else -1.0, abs=1e-6)


def test_barlow_twins_matches_lightly() -> None:
    z1, z2 = _pair(b=16)
    _assert_same_loss_and_grads(barlow_twins_loss(z1, z2), BarlowTwinsLoss(lambda_param=5e-3)(z1, z2), z1, z2)


def test_barlow_twins_is_zero_for_identical_decorrelated_views() -> None:
    z = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    assert barlow_twins_loss(z, z).item() == pytest.approx(0.0, abs=1e-4)  # C = I up to BN's eps


def test_vicreg_matches_lightly_total_and_terms() -> None:
    z1, z2 = _pair(b=16)
    loss, terms = vicreg_loss(z1, z2)
    _assert_same_loss_and_grads(loss, VICRegLoss()(z1, z2), z1, z2)
    torch.testing.assert_close(terms["invariance"], invariance_loss(z1, z2))
    torch.testing.assert_close(terms["variance"], (variance_loss(z1) + variance_loss(z2)) / 2)
    torch.testing.assert_close(terms["covariance"], covariance_loss(z1) + covariance_loss(z2))


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_masked_regression_matches_hf_vit_mae_loss(norm_pix_loss: bool) -> None:
    torch.manual_seed(0)
    config = ViTMAEConfig(
        image_size=8, patch_size=2, num_channels=3, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, decoder_hidden_size=16, decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
        decoder_intermediate_size=32, mask_ratio=0.75, norm_pix_loss=norm_pix_loss,
    )
    model = ViTMAEForPreTraining(config).eval()
    pixels = torch.randn(2, 3, 8, 8)
    out = model(pixels)  # logits [2, 16, 12], mask [2, 16] (1 = masked)
    ours = masked_regression_loss(out.logits, model.patchify(pixels), out.mask.bool(), norm_target=norm_pix_loss)
    torch.testing.assert_close(ours, out.loss)
    torch.testing.assert_close(_grads(ours, out.logits)[0], _grads(out.loss, out.logits)[0])


@pytest.mark.parametrize("kind", ["mse", "l1", "smooth_l1"])
def test_masked_regression_averages_over_masked_units_only(kind: str) -> None:
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(3, 5, 4, generator=g), torch.randn(3, 5, 4, generator=g)
    mask = torch.rand(3, 5, generator=g) < 0.5
    elementwise = {
        "mse": lambda d: d**2,
        "l1": torch.abs,
        "smooth_l1": lambda d: torch.where(d.abs() < 0.5, d**2, d.abs() - 0.25),  # beta = 0.5
    }
    per_unit = [elementwise[kind](pred[b, t] - target[b, t]).mean() for b in range(3) for t in range(5) if mask[b, t]]
    ours = masked_regression_loss(pred, target, mask, loss=kind, beta=0.5)
    torch.testing.assert_close(ours, torch.stack(per_unit).mean())
    pred[~mask] = 1e6  # unmasked predictions cost nothing
    torch.testing.assert_close(masked_regression_loss(pred, target, mask, loss=kind, beta=0.5), ours)


def test_masked_regression_with_nothing_masked_is_zero() -> None:
    pred = torch.randn(2, 3, 4, requires_grad=True)
    loss = masked_regression_loss(pred, torch.randn(2, 3, 4), torch.zeros(2, 3, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and pred.grad.abs().sum() == 0


# ---------------------------------------------------------------- argument contracts


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: nt_xent(torch.randn(4, 3), torch.randn(4, 2)), "z1 and z2"),
        (lambda: nt_xent(torch.randn(4, 3), torch.randn(4, 3), temperature=0.0), "temperature"),
        (lambda: info_nce(torch.randn(4, 3), torch.randn(4, 3), torch.randn(5, 2)), "queue"),
        (lambda: moco_v3_loss(torch.randn(4, 3), torch.randn(3, 3)), "q and k"),
        (lambda: byol_loss(torch.randn(4), torch.randn(4)), "p and z"),
        (lambda: barlow_twins_loss(torch.randn(1, 3), torch.randn(1, 3)), "at least 2"),
        (lambda: barlow_twins_loss(torch.randn(4, 3), torch.randn(4, 3), lambda_offdiag=-1), "lambda_offdiag"),
        (lambda: vicreg_loss(torch.randn(4, 3), torch.randn(4, 3), var_weight=-1), "var_weight"),
        (lambda: vicreg_loss(torch.randn(4, 3), torch.randn(4, 3), eps=0), "eps"),
        (lambda: masked_regression_loss(torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.ones(2, 3)), "mask"),
        (lambda: masked_regression_loss(torch.randn(2, 4), torch.randn(2, 5), torch.ones(2).bool()), "pred and target"),
        (lambda: masked_regression_loss(torch.randn(2, 4), torch.randn(2, 4), torch.ones(2).bool(), loss="l3"), "loss"),
        (lambda: masked_regression_loss(torch.ones(2, 1), torch.ones(2, 1), torch.ones(2).bool(), norm_target=True),
         "norm_target"),
    ],
)
def test_invalid_arguments_are_named(call: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


# ---------------------------------------------------------------- learning


def _toy_loss(name: str, net: nn.Module, predictor: nn.Module, x1: Tensor, x2: Tensor) -> Tensor:
    z1, z2 = net(x1), net(x2)
    queue = F.normalize(torch.randn(32, z1.shape[1], generator=torch.Generator().manual_seed(1)), dim=1)
    losses: dict[str, Callable[[], Tensor]] = {
        "nt_xent": lambda: nt_xent(z1, z2, 0.2),
        "info_nce": lambda: info_nce(predictor(z1), z2, queue),
        "moco_v3": lambda: moco_v3_loss(predictor(z1), z2) + moco_v3_loss(predictor(z2), z1),
        "byol": lambda: byol_loss(predictor(z1), z2) + byol_loss(predictor(z2), z1),
        "simsiam": lambda: (simsiam_loss(predictor(z1), z2) + simsiam_loss(predictor(z2), z1)) / 2,
        "barlow_twins": lambda: barlow_twins_loss(z1, z2),
        "vicreg": lambda: vicreg_loss(z1, z2)[0],
        # reconstruct the clean 16-feature input of 4 units from the noisy view's embedding
        "masked_regression": lambda: masked_regression_loss(
            predictor(z2).view(-1, 4, 4), x1.view(-1, 4, 4), torch.arange(4).expand(x1.shape[0], 4) % 2 == 0
        ),
    }
    return losses[name]()


@pytest.mark.parametrize(
    "name", ["nt_xent", "info_nce", "moco_v3", "byol", "simsiam", "barlow_twins", "vicreg", "masked_regression"]
)
def test_loss_decreases_on_a_toy_embedding(name: str) -> None:
    torch.manual_seed(0)
    data = torch.randn(64, 16)
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16))
    predictor = nn.Linear(16, 16)
    opt = torch.optim.Adam([*net.parameters(), *predictor.parameters()], lr=1e-2)
    losses = []
    for _ in range(40):
        x1, x2 = data + 0.3 * torch.randn_like(data), data + 0.3 * torch.randn_like(data)
        loss = _toy_loss(name, net, predictor, x1, x2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert math.isfinite(last) and last < first - 0.1 * abs(first), losses


# ---------------------------------------------------------------- two processes (gloo) == one process

WORLD, LOCAL_B = 2, 4

GLOBAL_MASK = torch.tensor([1, 1, 0, 1, 0, 0, 1, 0], dtype=torch.bool)  # 3 masked units on rank 0, 1 on rank 1

# rows=None: the one-process reference on the whole batch; rows=slice: this process's share, gathering
PAIR_LOSSES: dict[str, Callable[[Tensor, Tensor, slice | None], Tensor]] = {
    "nt_xent": lambda a, b, rows: nt_xent(a, b, 0.5, gather=rows is not None),
    "moco_v3": lambda a, b, rows: moco_v3_loss(a, b, 0.2, gather=rows is not None),
    "barlow_twins": lambda a, b, rows: barlow_twins_loss(a, b, gather=rows is not None),
    "vicreg": lambda a, b, rows: vicreg_loss(a, b, gather=rows is not None)[0],
    # the reference passes the full count on both processes, which the global normaliser maps back to it
    "masked_regression": lambda a, b, rows: masked_regression_loss(a, b, GLOBAL_MASK[rows or slice(None)]),
}


def _one_vs_two_processes(name: str, rank: int) -> None:
    """The DDP step on 2 local halves equals the one-process step on the whole batch."""
    loss_fn = PAIR_LOSSES[name]
    torch.manual_seed(0)  # identical data and weights on both processes
    x1, x2, net = torch.randn(WORLD * LOCAL_B, 5), torch.randn(WORLD * LOCAL_B, 5), nn.Linear(5, 6)

    ref_net, g1, g2 = copy.deepcopy(net), x1.clone().requires_grad_(), x2.clone().requires_grad_()
    ref_loss = loss_fn(*ref_net(torch.cat([g1, g2])).chunk(2), None)
    ref_loss.backward()

    ddp = DistributedDataParallel(net)
    rows = slice(rank * LOCAL_B, (rank + 1) * LOCAL_B)
    l1, l2 = x1[rows].clone().requires_grad_(), x2[rows].clone().requires_grad_()
    loss = loss_fn(*ddp(torch.cat([l1, l2])).chunk(2), rows)  # one forward per backward, as DDP wants
    loss.backward()

    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss)
    torch.testing.assert_close(mean_loss / WORLD, ref_loss.detach(), rtol=1e-5, atol=1e-5, msg=f"{name} loss")
    for p, ref_p in zip(ddp.module.parameters(), ref_net.parameters()):
        torch.testing.assert_close(p.grad, ref_p.grad, rtol=1e-5, atol=1e-5, msg=f"{name} parameter grad")
    # per-sample input gradients: each process holds W x its slice's share (see gather_with_grad)
    for local, ref in ((l1, g1), (l2, g2)):
        torch.testing.assert_close(local.grad / WORLD, ref.grad[rows], rtol=1e-5, atol=1e-5, msg=f"{name} input grad")


def _worker(rank: int, init_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        for name in PAIR_LOSSES:
            _one_vs_two_processes(name, rank)
        z1, z2 = torch.randn(LOCAL_B, 3), torch.randn(LOCAL_B, 3)  # lightly's gathered NT-Xent, same convention
        torch.testing.assert_close(nt_xent(z1, z2), NTXentLoss(0.5, gather_distributed=True)(z1, z2))
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_two_processes_match_one_process_on_the_global_batch(tmp_path: Path) -> None:
    # fork, not spawn: the children reuse this process's imports (torch, lightly, transformers),
    # which takes the test from ~15 s to well under one; gloo rendezvous through a file, no port
    mp.start_processes(_worker, args=(str(tmp_path / "rendezvous"),), nprocs=WORLD, join=True, start_method="fork")


@pytest.mark.parametrize("loss", ["nt_xent", "barlow_twins_loss", "vicreg_loss"])
def test_losses_stay_float32_under_bf16_autocast(loss: str) -> None:
    import mmssl.objectives.functional as functional

    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(16, 32, generator=g), torch.randn(16, 32, generator=g)
    fn = getattr(functional, loss)
    ref = fn(z1, z2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fn(z1, z2)
    ref, out = (ref[0], out[0]) if isinstance(ref, tuple) else (ref, out)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
