"""Fixtures of the contract tests: one thread per test, and each case's tiny recipe and real batch, built once."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch

from mmssl.domain import PretrainData
from mmssl.recipe import recipe_from_dict
from mmssl.registry import DOMAINS
from mmssl.types import Batch
from tests.conftest import FIXTURE_PLACEHOLDER
from tests.contracts.cases import SEED, ContractData, first_batch, tiny_raw


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread per test: tiny models are all per-op overhead, and on a shared 2-core machine a second
    thread only waits (a MoCo v3 case measured 0.8 s of CPU with one thread, 8 s with two under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def contract_data(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str, tuple[str, ...], str], ContractData]:
    """``(domain, needs, objective) -> ContractData``; data and batch are built once per ``(domain, needs)``."""
    cache: dict[tuple[str, tuple[str, ...]], tuple[PretrainData, Batch]] = {}
    fill = lambda o: FIXTURE_PLACEHOLDER.sub(lambda m: str(request.getfixturevalue(m.group(1))), o)  # noqa: E731

    def get(domain_name: str, needs: tuple[str, ...], objective: str) -> ContractData:
        recipe = recipe_from_dict(tiny_raw(domain_name, needs, objective, fill))
        key = (domain_name, needs)
        if key not in cache:
            torch.manual_seed(SEED)
            run_dir = tmp_path_factory.mktemp(f"contract-{domain_name}")
            data = DOMAINS.get(domain_name).pretrain_data(recipe, run_dir, 0, 1)
            cache[key] = data, first_batch(data, recipe.train.batch_size)
        return ContractData(recipe, *cache[key])

    return get
