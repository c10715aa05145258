"""Batch.to moves every tensor, including the views of a multi-view batch; metadata passes through."""

import torch

from mmssl.types import Batch


def test_batch_to_moves_views_and_keeps_metadata() -> None:
    def batch(n: int) -> Batch:
        return Batch(units=torch.zeros(2, n, 3), padding_mask=torch.zeros(2, n, dtype=torch.bool),
                     extras={"grid": (1, n), "labels": torch.zeros(2)})

    views = (batch(4), batch(1))
    moved = batch(4).replace(extras={"grid": (1, 4), "views": views}).to("meta")
    assert moved.units.device.type == "meta" and moved.extras["grid"] == (1, 4)
    assert isinstance(moved.extras["views"], tuple)
    assert [v.units.device.type for v in moved.extras["views"]] == ["meta", "meta"]
    assert moved.extras["views"][1].extras["labels"].device.type == "meta"
