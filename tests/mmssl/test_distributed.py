"""The gathers of mmssl.distributed: identities in one process; in two (gloo), every row in rank order and the
gradient of every process's loss back to its own rows."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mmssl.distributed import gather_no_grad, gather_with_grad
from tests.mmssl.objectives.loss_checks import run_in_two_processes


def test_gathers_are_identities_in_one_process() -> None:
    x = torch.randn(3, 2, requires_grad=True)
    assert gather_with_grad(x) is x
    out = gather_no_grad(x)
    assert not out.requires_grad and torch.equal(out, x)


def _collectives(rank: int) -> None:
    # every process sees all rows in rank order, and the gradient of its own slice summed over
    # every process's loss: L_r = sum(w_r * gathered) with w_r = r + 1 gives dL/dx = 1 + 2 on both
    x = torch.full((2, 3), float(rank), requires_grad=True)
    gathered = gather_with_grad(x)
    torch.testing.assert_close(gathered, torch.tensor([0.0, 0.0, 1.0, 1.0]).unsqueeze(1).expand(4, 3))
    ((rank + 1) * gathered).sum().backward()
    torch.testing.assert_close(x.grad, torch.full((2, 3), 3.0))

    assert not gather_no_grad(x).requires_grad and torch.equal(gather_no_grad(x), gathered.detach())
    with pytest.raises(ValueError, match="same shape"):
        gather_with_grad(torch.zeros(2 + rank, 3))  # uneven last batch: an error everywhere, not a hang


@pytest.mark.timeout(120)
def test_two_process_gathers(tmp_path: Path) -> None:
    run_in_two_processes(_collectives, tmp_path)
