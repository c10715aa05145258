"""Batch.to moves every tensor, including the views and the paired batch; metadata passes through."""

import pytest
import torch

from mmssl.types import Batch, Extra


def batch(n: int, **fields: object) -> Batch:
    fields.setdefault("extras", {Extra.LABELS: torch.zeros(2)})
    return Batch(units=torch.zeros(2, n, 3), padding_mask=torch.zeros(2, n, dtype=torch.bool), **fields)


def test_batch_to_moves_views_and_pair_and_keeps_metadata() -> None:
    views = (batch(4, grid=(1, 4)), batch(1, grid=(1, 1)))
    moved = batch(4, grid=(1, 4), views=views, pair=batch(2), layout="full").to("meta")
    assert moved.units.device.type == "meta" and moved.grid == (1, 4) and moved.layout == "full"
    assert isinstance(moved.views, tuple)
    assert [v.units.device.type for v in moved.views] == ["meta", "meta"]
    assert moved.views[1].extras["labels"].device.type == "meta"  # Extra keys are the plain strings
    assert moved.pair is not None and moved.pair.units.device.type == "meta"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"views": (torch.zeros(2),)}, "Batch.views must be a tuple of Batch"),
        ({"pair": torch.zeros(2)}, "Batch.pair must be a Batch"),
        ({"grid": (2, 2, 1)}, r"Batch.grid must be \(rows, cols\)"),
        ({"extras": {"views": ()}}, r"Batch.extras\['views'\]: views is a field of Batch; pass views=... instead"),
    ],
)
def test_typed_fields_reject_the_wrong_type(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        batch(4, **fields)
