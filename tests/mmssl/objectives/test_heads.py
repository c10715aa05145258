"""MLP heads: layers and batch norms follow the flags, and every published head shape builds as its paper has it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mmssl.objectives.heads import HEAD_SHAPES, MLPHead


def test_mlp_head_layers_follow_the_flags() -> None:
    head = MLPHead(5, 7, 3, num_layers=3, batch_norm=True, last_batch_norm=True)
    kinds = [type(m).__name__ for m in head]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d"]
    assert all(m.bias is None for m in head if isinstance(m, nn.Linear))  # every linear feeds a batch norm
    assert not head[-1].affine and head[0].in_features == 5 and head[-2].out_features == 3
    assert head(torch.randn(4, 5)).shape == (4, 3)

    plain = MLPHead(5, 7, 3, num_layers=2, batch_norm=False)
    assert [type(m).__name__ for m in plain] == ["Linear", "ReLU", "Linear"]
    assert all(m.bias is not None for m in plain if isinstance(m, nn.Linear))
    assert [type(m).__name__ for m in MLPHead(5, 7, 3, num_layers=1)] == ["Linear"]


@pytest.mark.parametrize("name", sorted(HEAD_SHAPES))
def test_every_published_head_shape_builds(name: str) -> None:
    shape = HEAD_SHAPES[name]
    with torch.device("meta"):  # full-size heads (up to 8192 wide) without allocating them
        head = shape.build(2048)
        out = head(torch.empty(4, 2048))
    assert out.shape == (4, shape.out_dim)
    assert sum(isinstance(m, nn.Linear) for m in head) == shape.num_layers


def test_head_shapes_cite_the_papers() -> None:
    assert HEAD_SHAPES["byol_projector"] == HEAD_SHAPES["byol_predictor"]  # 4096 -> 256, both
    assert (HEAD_SHAPES["simsiam_predictor"].hidden_dim, HEAD_SHAPES["simsiam_predictor"].out_dim) == (512, 2048)
    assert HEAD_SHAPES["moco_v3_projector"].last_batch_norm and not HEAD_SHAPES["moco_v3_predictor"].last_batch_norm
    assert not HEAD_SHAPES["moco_v2_projector"].batch_norm
    assert HEAD_SHAPES["barlow_twins_projector"].out_dim == HEAD_SHAPES["vicreg_projector"].out_dim == 8192


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: MLPHead(0, 4, 4, 2), "in_dim"),
        (lambda: MLPHead(4, 4, 4, 0), "num_layers"),
    ],
)
def test_invalid_arguments_are_named(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()
