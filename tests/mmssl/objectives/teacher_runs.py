"""Every teacher-bearing objective, found and run small: the objectives of ``OBJECTIVES`` that own a
:class:`MomentumTeacher` (found by building each on a stub encoder with every capability), and a tiny run of
each (an encoder, a config with small heads and the batch of every step) for the teacher tests."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn
from torch_geometric.datasets import KarateClub

from domains.graph.data import GraphDataConfig, GraphViews
from domains.graph.encoders import GraphEncoderConfig, build_graph_encoder
from domains.graph.units import full_batch
from mmssl.encoder import Encoder, TwoTowerEncoder
from mmssl.objectives import OBJECTIVES
from mmssl.objectives.base import Objective, SSLModel
from mmssl.objectives.data2vec import Data2VecConfig
from mmssl.teacher import MomentumTeacher
from mmssl.types import Batch, EncoderOutput
from tests.mmssl.objectives.view_fixtures import CONFIGS, new_images_every_step, vit


class _Tower(Encoder):
    """A stub encoder that declares every optional capability: ids with a mask token, feature units (4x4 grey
    patches), local features (CPC), causal, T5's sentinels, ELECTRA's generator and replaced-token head, corpus counts
    (word2vec)."""

    hidden_size = 16
    vocab_size = 32
    mask_token_id = 4
    unit_dim = 16
    feature_dim = 8
    causal = True
    sentinel_ids = (31, 30, 29)
    eos_token_id = 1

    def encode(self, batch: Batch, mask: Tensor | None = None, all_layers: bool = False) -> EncoderOutput:
        raise NotImplementedError("the stub only builds objectives")

    def quantizer_head(self) -> nn.Module:
        return nn.Identity()

    def unit_decoder(self, in_dim: int, out_dim: int) -> nn.Module:
        return nn.Linear(in_dim, out_dim)

    def replaced_token_head(self) -> nn.Module:
        return nn.Linear(self.hidden_size, 1)

    def mlm_generator(self, width_fraction: float, num_layers: int | None) -> Encoder:
        return _Tower()

    def unit_counts(self) -> Tensor:
        return torch.arange(self.vocab_size, dtype=torch.float32, device="cpu")

    def export(self, out_dir: Path) -> None:
        raise NotImplementedError


class EveryCapabilityEncoder(TwoTowerEncoder, _Tower):
    """Two stub towers behind one encoder that also has every capability of :class:`_Tower`, so that every
    objective builds on it (built on the meta device: no memory, and it never encodes)."""

    def __init__(self) -> None:
        super().__init__(_Tower(), _Tower())

    def export_towers(self, out_dir: Path) -> None:
        raise NotImplementedError


def _owns_a_teacher(name: str) -> bool:
    spec = OBJECTIVES[name]
    try:
        with torch.device("meta"):  # the papers' default heads without the memory
            objective = spec.cls(spec.config_cls(), EveryCapabilityEncoder())
    except RuntimeError as error:  # an objective that reads a value while it builds (colorization's ab gamut)
        if "meta" not in str(error):
            raise
        objective = spec.cls(spec.config_cls(), EveryCapabilityEncoder())
    return any(isinstance(m, MomentumTeacher) for m in objective.modules())


def discover_teacher_bearing() -> tuple[list[str], dict[str, str]]:
    """The objectives of ``OBJECTIVES`` that own a :class:`MomentumTeacher`, and those that did not build."""
    found, failed = [], {}
    for name in OBJECTIVES:
        try:
            if _owns_a_teacher(name):
                found.append(name)
        except Exception as error:  # reported by tests/mmssl/test_teacher.py, not here at collection
            failed[name] = f"{type(error).__name__}: {error}"
    return found, failed


@dataclasses.dataclass(frozen=True)
class TinyRun:
    """A tiny run of a teacher-bearing objective.

    Attributes:
        build: ``build(seed)``, a fresh encoder + objective whose weights depend on ``seed``.
        batch: ``batch(step)``, the batch of the 1-based optimizer step (the same each time it is called).
    """

    build: Callable[[int], SSLModel]
    batch: Callable[[int], Batch]


SMALL_WIDTHS = {
    "projector_hidden_dim": 64,
    "projector_dim": 32,
    "predictor_hidden_dim": 48,
    "queue_size": 20,
    "top_k_layers": 2,
}


def _small_config(name: str) -> object:
    """The objective's default config with small heads (the fields of ``SMALL_WIDTHS`` it has)."""
    config_cls = OBJECTIVES[name].config_cls
    fields = {f.name for f in dataclasses.fields(config_cls)}
    return config_cls(**{k: v for k, v in SMALL_WIDTHS.items() if k in fields})


def _image_run(name: str, config: object | None = None) -> TinyRun:
    """A tiny ViT on two augmented views of smooth images (any objective of image views: MoCo, BYOL, data2vec)."""
    config = config or CONFIGS.get(name) or _small_config(name)

    def build(seed: int) -> SSLModel:
        enc = vit(seed)
        return SSLModel(enc, OBJECTIVES[name].cls(config, enc))

    return TinyRun(build, new_images_every_step)


def _data2vec_run(name: str) -> TinyRun:
    # tau from 0.9 to 0.99 over 4 steps: the resumed steps read a schedule that still moves
    return _image_run(
        name, Data2VecConfig(mask_prob=0.3, top_k_layers=2, ema_decay=0.9, ema_end_decay=0.99, ema_anneal_steps=4)
    )


def _graph_run(name: str) -> TinyRun:
    """A 2-layer GCN with batch norm on KarateClub, two BGRL views of the whole graph per step."""
    graph = full_batch(KarateClub()[0])
    views = GraphViews(GraphDataConfig(source="pyg", name="KarateClub", views="bgrl"))

    def build(seed: int) -> SSLModel:
        torch.manual_seed(seed)
        enc = build_graph_encoder(GraphEncoderConfig(arch="gcn", hidden_size=16, norm="batch_norm"), 34)
        return SSLModel(enc, OBJECTIVES[name].cls(_small_config(name), enc))

    def batch(step: int) -> Batch:
        with torch.random.fork_rng():
            torch.manual_seed(1000 + step)  # the step's views, whatever the generator's state
            return views(graph)

    return TinyRun(build, batch)


# Objectives that need other data than image views; any other teacher-bearing objective runs on image views.
TINY_RUNS: dict[str, Callable[[str], TinyRun]] = {"data2vec": _data2vec_run, "bgrl": _graph_run}


@functools.cache
def tiny_run(name: str) -> TinyRun:
    """The tiny run of the teacher-bearing objective ``name`` (image views unless ``TINY_RUNS`` says otherwise)."""
    return TINY_RUNS.get(name, _image_run)(name)


def teachers_of(objective: Objective) -> list[MomentumTeacher]:
    """The objective's :class:`MomentumTeacher` submodules."""
    return [m for m in objective.modules() if isinstance(m, MomentumTeacher)]
