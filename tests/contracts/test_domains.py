"""Every registered domain, with every set of needs an objective's contract case trains it on.

From the domain's real pretraining pipeline (tiny settings: its own smoke and contract overrides), the
first batch must be a valid :class:`Batch` whose units are of the domain's ``unit_kind`` and which
carries the needs; the domain's encoder must encode it to ``[B, T, D]`` with ``D = hidden_size`` and a
padding mask on its output grid; and the export of the model (:func:`mmssl.export.write_export`, as a
run writes it) must load back through ``domain.load_encoder`` and encode the batch to the same outputs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mmssl.export import write_export
from mmssl.model import build_model
from mmssl.objectives.base import UNIT_KINDS
from mmssl.registry import DOMAINS
from tests.contracts.cases import SEED, domain_cases
from tests.contracts.checks import check_batch, check_needs


def test_every_domain_has_a_contract_case() -> None:
    """A domain whose units no objective declares (or whose contract_overrides gives nothing) would go untested."""
    untested = {name for name in DOMAINS} - {domain for domain, _, _ in domain_cases()}
    assert not untested, f"domains no objective's contract case runs on: {sorted(untested)}"
    assert all(DOMAINS.get(name).unit_kind in UNIT_KINDS for name in DOMAINS)


CASES = [pytest.param(*case, id=f"{case[0]}-{'+'.join(case[1]) or 'plain'}") for case in domain_cases()]


@pytest.mark.parametrize(("domain", "needs", "objective"), CASES)
def test_domain_contract(domain: str, needs: tuple[str, ...], objective: str, contract_data, tmp_path: Path) -> None:
    spec = DOMAINS.get(domain)
    case = contract_data(domain, needs, objective)
    torch.manual_seed(SEED)
    model = build_model(case.recipe, case.data.processor).eval()
    encoder = model.encoder
    check_batch(case.batch, spec.unit_kind, encoder)
    check_needs(needs, encoder, case.batch)

    with torch.no_grad():
        out = encoder.encode(case.batch)
    assert out.hidden.ndim == 3 and out.hidden.shape[0] == case.batch.batch_size
    assert out.hidden.shape[2] == encoder.hidden_size
    assert out.padding_mask.dtype == torch.bool and out.padding_mask.shape == out.hidden.shape[:2]
    assert torch.equal(out.padding_mask, encoder.output_padding_mask(case.batch))
    assert torch.isfinite(out.hidden[~out.padding_mask]).all()

    export = write_export(model, case.data.processor, case.recipe, tmp_path / "export", None, 0, case.data.summary)
    loaded = spec.load_encoder(export).eval()
    with torch.no_grad():
        again = loaded.encode(case.batch)
    torch.testing.assert_close(again.hidden, out.hidden)
    assert torch.equal(again.padding_mask, out.padding_mask)
