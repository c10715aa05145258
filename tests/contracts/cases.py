"""The contract cases, read from the registries, and the tiny recipe and real first batch of each.

A case pairs a unit kind and a set of needs (:data:`mmssl.objectives.base.UNIT_KINDS`,
:data:`mmssl.objectives.base.NEEDS`) with every domain that gives them
(:meth:`mmssl.domain.Domain.contract_overrides`). Its recipe is the domain's defaults shrunk by the
domain's own ``smoke_overrides`` and set by its ``contract_overrides``; its batch is the first batch of
the domain's real pretraining pipeline (``collate``, then the per-step ``transform`` under a fixed seed).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader

from mmssl.config import apply_overrides, from_dict
from mmssl.domain import PretrainData
from mmssl.objectives import OBJECTIVES
from mmssl.recipe import Recipe
from mmssl.registry import DOMAINS
from mmssl.types import Batch

SEED = 0
TINY_DEPTH = 2  # encoder layers (data2vec averages the top two)


def providers(unit_kind: str, needs: tuple[str, ...]) -> list[tuple[str, tuple[str, ...]]]:
    """``(domain name, its contract overrides)`` of every registered domain that gives ``unit_kind`` and ``needs``."""
    found = []
    for name in DOMAINS.names():
        domain = DOMAINS.get(name)
        overrides = domain.contract_overrides(needs) if domain.unit_kind == unit_kind else None
        if overrides is not None:
            found.append((name, tuple(overrides)))
    return found


def objective_cases() -> list[tuple[str, str, str]]:
    """``(objective, unit kind, domain)`` for every unit kind each objective of ``OBJECTIVES`` declares, on every
    domain that gives it with the objective's needs."""
    return [
        (key, kind, domain)
        for key, spec in OBJECTIVES.items()
        for kind in spec.units
        for domain, _ in providers(kind, spec.needs)
    ]


def domain_cases() -> list[tuple[str, tuple[str, ...], str]]:
    """``(domain, needs, objective)``: every domain with every set of needs an objective case trains it on (the
    objective only completes the recipe: the data and the encoder do not depend on it)."""
    cases: dict[tuple[str, tuple[str, ...]], str] = {}
    for key, _, domain in objective_cases():
        cases.setdefault((domain, OBJECTIVES[key].needs), key)
    return [(domain, needs, key) for (domain, needs), key in sorted(cases.items())]


@dataclass
class ContractData:
    """A case's tiny recipe, and its domain's pretraining data and first batch (which do not depend on the
    objective: an objective's smoke overrides set ``objective.*`` only, as :class:`ObjectiveSpec` checks)."""

    recipe: Recipe
    data: PretrainData
    batch: Batch


def depth_overrides(config_cls: type, prefix: str = "encoder") -> list[str]:
    """``<prefix>...num_layers=TINY_DEPTH`` for every ``num_layers`` of an encoder config, nested towers included: the
    domains' smoke overrides keep a recipe's depth, and a contract recipe has the configs' defaults (4-6 layers)."""
    overrides = []
    for f in dataclasses.fields(config_cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if f.name == "num_layers":
            overrides.append(f"{prefix}.num_layers={TINY_DEPTH}")
        elif dataclasses.is_dataclass(default):
            overrides += depth_overrides(type(default), f"{prefix}.{f.name}")
    return overrides


def tiny_raw(domain_name: str, needs: tuple[str, ...], objective: str, fill: Callable[[str], str]) -> dict[str, Any]:
    """The raw recipe of ``objective`` on ``domain_name`` giving ``needs``: the domain's smoke overrides at
    :data:`TINY_DEPTH`, its contract overrides, then the objective's own (:attr:`ObjectiveSpec.smoke_overrides`)."""
    domain = DOMAINS.get(domain_name)
    contract = domain.contract_overrides(needs)
    if contract is None:
        raise ValueError(f"domain {domain_name} does not give {needs}")
    raw = apply_overrides(
        {"name": f"contract-{domain_name}", "domain": domain_name, "objective": {"name": objective}}, list(contract)
    )
    data = from_dict(domain.data_config, raw.get("data"), "data")  # the smoke overrides depend on it (graph level)
    smoke = [fill(o) for o in domain.smoke_overrides(data)]
    depth = depth_overrides(domain.encoder_config)
    return apply_overrides(raw, [*smoke, *depth, *contract, *OBJECTIVES[objective].smoke_overrides])


def first_batch(data: PretrainData, batch_size: int) -> Batch:
    """The first batch of the pipeline, transformed under a fixed seed (as the trainer's first step would be)."""
    loader = DataLoader(data.dataset, batch_size=batch_size, collate_fn=data.collate, drop_last=True)
    batch = next(iter(loader))
    torch.manual_seed(SEED)
    return batch if data.transform is None else data.transform(batch)
