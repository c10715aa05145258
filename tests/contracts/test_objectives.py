"""Every registered objective, on a tiny encoder of every unit kind it declares, from a domain's real data.

The cases come from ``OBJECTIVES`` itself (each entry's ``units`` and ``needs``) and from the domains that
give them (:meth:`mmssl.domain.Domain.contract_overrides`), so an objective is tested the moment it is
added to the dict. Each case checks the :class:`ObjectiveOutput` (a finite scalar loss, finite scalar
terms and logs), that the gradient reaches the encoder's own layers, and that a few optimizer steps on
one fixed batch lower the loss (the same seed before every forward, so the masks and negatives are the
same each time; teachers move in ``after_optimizer_step`` as in training).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mmssl.encoder import Encoder
from mmssl.model import build_model
from mmssl.objectives import OBJECTIVES
from mmssl.objectives.base import UNIT_KINDS, ObjectiveSpec, SSLModel
from mmssl.objectives.memory import MemoryQueue
from mmssl.objectives.mlm import MaskedLM, MaskedLMConfig
from mmssl.registry import DOMAINS
from mmssl.types import Batch, ObjectiveOutput
from tests.contracts.cases import SEED, objective_cases, providers
from tests.contracts.checks import check_needs

STEPS = 15  # optimizer steps on the fixed batch
LR = 1e-3


def seeded_forward(model: SSLModel, batch: Batch) -> ObjectiveOutput:
    """The objective on ``batch`` with the RNG at :data:`SEED` (the same masks, noise and shuffles each call)."""
    torch.manual_seed(SEED)
    return model(batch)


def check_output(out: ObjectiveOutput) -> None:
    """A finite scalar loss; every term and log a finite scalar."""
    assert out.loss.shape == () and out.loss.requires_grad and torch.isfinite(out.loss)
    for name, value in {**out.terms, **out.logs}.items():
        value = torch.as_tensor(value)
        assert value.numel() == 1 and torch.isfinite(value), f"{name} = {value}"


def encoder_body(encoder: Encoder, batch: Batch) -> list[nn.Parameter]:
    """The encoder's parameters that its output on ``batch`` depends on (a random projection of
    ``hidden`` is back-propagated: a plain sum has no gradient through a final layer norm)."""
    params = [p for p in encoder.parameters() if p.requires_grad]
    hidden = encoder.encode(batch).hidden
    grads = torch.autograd.grad((hidden * torch.randn_like(hidden)).sum(), params, allow_unused=True)
    return [p for p, g in zip(params, grads) if g is not None and bool(g.any())]


def encoder_gradient(model: SSLModel, body: list[nn.Parameter]) -> float:
    """The largest absolute gradient on the encoder's ``body``, leaving out what it shares with its own prediction
    head (BERT's tied word embeddings, which the vocabulary projection reaches without the encoder's layers)."""
    head = model.encoder.prediction_head()
    shared = {id(p) for p in head.parameters()} if head is not None else set()
    layers = [p for p in body if id(p) not in shared] or body  # wav2vec 2.0's head is the whole model
    return max((float(p.grad.abs().max()) for p in layers if p.grad is not None), default=0.0)


def fit(model: SSLModel, batch: Batch, steps: int) -> list[float]:
    """``steps`` Adam steps on ``batch`` (teachers updated after each); the losses before each step.

    Memories of past batches (:class:`MemoryQueue`: MoCo's keys, GPT-GNN's negatives) are put back after each
    step: on one fixed batch they would fill with the batch's own keys, which are then negatives of themselves.
    """
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=LR)
    memories = [(m, copy.deepcopy(m.state_dict())) for m in model.modules() if isinstance(m, MemoryQueue)]
    losses = []
    for step in range(1, steps + 1):
        optimizer.zero_grad(set_to_none=True)
        out = seeded_forward(model, batch)
        out.loss.backward()
        optimizer.step()
        model.after_optimizer_step(step, steps)
        for memory, state in memories:
            memory.load_state_dict(state)
        losses.append(float(out.loss.detach()))
    return losses


def test_objective_spec_refuses_unknown_declarations() -> None:
    """A registry line must declare its unit kinds from the vocabulary, and its needs too."""
    with pytest.raises(TypeError, match="units"):
        ObjectiveSpec(MaskedLM, MaskedLMConfig, "no units")  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="units must name at least one of ids, features, grid, graph"):
        ObjectiveSpec(MaskedLM, MaskedLMConfig, units=())
    with pytest.raises(ValueError, match="unknown units 'tokens'"):
        ObjectiveSpec(MaskedLM, MaskedLMConfig, units=("ids", "tokens"))
    with pytest.raises(ValueError, match="unknown needs 'labels'; known: views, pretext_labels"):
        ObjectiveSpec(MaskedLM, MaskedLMConfig, units=("ids",), needs=("labels",))
    with pytest.raises(ValueError, match="objective.\\* keys only, got 'data.views=none'"):
        ObjectiveSpec(MaskedLM, MaskedLMConfig, units=("ids",), smoke_overrides=("data.views=none",))


def test_every_objective_declares_what_it_reads() -> None:
    """No entry can be skipped: each declares a unit kind (ObjectiveSpec refuses none) and has a case."""
    tested = {key for key, _, _ in objective_cases()}
    assert all(spec.units and set(spec.units) <= set(UNIT_KINDS) for spec in OBJECTIVES.values())
    assert tested == set(OBJECTIVES), f"objectives without a contract case: {sorted(set(OBJECTIVES) - tested)}"


@pytest.mark.parametrize("key", sorted(OBJECTIVES))
def test_every_declared_unit_kind_has_a_domain(key: str) -> None:
    """Each unit kind an objective declares is given, with the objective's needs, by a registered domain."""
    spec = OBJECTIVES[key]
    kinds = {name: DOMAINS.get(name).unit_kind for name in DOMAINS}
    for kind in spec.units:
        assert providers(kind, spec.needs), (
            f"objective {key} declares unit kind {kind!r} with needs {spec.needs}, but no domain gives them "
            f"(domains and their unit kinds: {kinds}); drop the kind or teach a domain's contract_overrides"
        )


@pytest.mark.parametrize(("key", "unit_kind", "domain"), objective_cases())
def test_objective_contract(key: str, unit_kind: str, domain: str, contract_data) -> None:
    spec = OBJECTIVES[key]
    case = contract_data(domain, spec.needs, key)
    torch.manual_seed(SEED)
    model = build_model(case.recipe, case.data.processor).train()
    check_needs(spec.needs, model.encoder, case.batch)

    body = encoder_body(model.encoder, case.batch)
    out = seeded_forward(model, case.batch)
    check_output(out)
    out.loss.backward()
    assert encoder_gradient(model, body) > 0, f"{key}: no gradient reaches the {type(model.encoder).__name__}"

    losses = fit(model, case.batch, STEPS)
    final = float(seeded_forward(model, case.batch).loss)
    assert all(map(torch.isfinite, torch.tensor(losses))) and final < losses[0], (
        f"{key} on {domain} ({unit_kind}): the loss did not fall on a fixed batch: {losses} -> {final}"
    )
