"""ImageGPT's next-pixel objective: parity with transformers' ImageGPTForCausalImageModeling loss, learning, exact
resume with the palette, and the encoder capability it needs."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch

from mmssl.encoder import CapabilityError
from mmssl.objectives.base import SSLModel
from mmssl.objectives.imagegpt import ImageGPTObjective, ImageGPTObjectiveConfig
from tests.domains.image.test_imagegpt_encoder import smooth_arrays, tiny_encoder
from tests.fitting import first_last, fit
from tests.mmssl.objectives.view_fixtures import MLPEncoder, views_batch


def test_loss_matches_transformers_causal_image_modeling(tmp_path: Path) -> None:
    """transformers' loss on the start token + the palette ids (labels = input ids, shifted inside) is the mean
    cross-entropy of every pixel given the ones before it: ours, on the same tokens and weights."""
    encoder, _, batch = tiny_encoder(tmp_path, max_positions=197)  # room for the start token + all 196 ids
    out = ImageGPTObjective(ImageGPTObjectiveConfig(), encoder)(encoder, batch)
    ids = encoder.unit_ids(batch)
    tokens = torch.cat([torch.full_like(ids[:, :1], encoder.model.config.vocab_size - 1), ids], dim=1)
    ref = encoder.model(input_ids=tokens, labels=tokens)
    assert out.loss.item() == pytest.approx(ref.loss.item(), rel=1e-5)
    assert out.logs["bits_per_unit"].item() == pytest.approx(ref.loss.item() / math.log(2), rel=1e-5)
    predicted = ref.logits[:, :-1].argmax(-1)
    assert out.logs["accuracy"].item() == pytest.approx((predicted == ids).float().mean().item(), abs=1e-6)


def test_a_fresh_model_starts_near_the_uniform_loss(tmp_path: Path) -> None:
    """At initialisation the 8 colours are about equally likely: loss near ln 8."""
    encoder, _, batch = tiny_encoder(tmp_path)
    loss = ImageGPTObjective(ImageGPTObjectiveConfig(), encoder)(encoder, batch).loss.item()
    assert abs(loss - math.log(8)) < 0.3, loss


def test_loss_decreases(tmp_path: Path) -> None:
    encoder, _, batch = tiny_encoder(tmp_path)
    model = SSLModel(encoder.train(), ImageGPTObjective(ImageGPTObjectiveConfig(), encoder))
    first, last = first_last(fit(model, batch, 30, lr=3e-3))
    assert last < 0.8 * first, (first, last)


def test_resumes_exactly_with_the_palette(tmp_path: Path) -> None:
    """Three steps, a checkpoint (the state dict: weights and palette), three more; a model of other weights and
    another palette that loads the checkpoint takes the same steps and ends in the same state."""
    batches = [tiny_encoder(tmp_path / f"b{s}", smooth_arrays(seed=s))[2] for s in range(6)]

    def build(seed: int, palette_seed: int) -> tuple[SSLModel, torch.optim.Optimizer]:
        encoder, _, _ = tiny_encoder(tmp_path / f"m{seed}", smooth_arrays(seed=palette_seed), seed=seed)
        model = SSLModel(encoder.train(), ImageGPTObjective(ImageGPTObjectiveConfig(), encoder))
        return model, torch.optim.AdamW(model.parameters(), lr=1e-3)

    def steps(model: SSLModel, optimizer: torch.optim.Optimizer, which: range) -> list[float]:
        losses = []
        for step in which:
            loss = model(batches[step]).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        return losses

    model, optimizer = build(0, palette_seed=0)
    steps(model, optimizer, range(3))
    state, opt_state = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
    assert "encoder.clusters" in state
    uninterrupted = steps(model, optimizer, range(3, 6))

    resumed, resumed_optimizer = build(7, palette_seed=3)
    assert not torch.equal(resumed.encoder.clusters, state["encoder.clusters"])  # another palette until loaded
    resumed.load_state_dict(state)
    resumed_optimizer.load_state_dict(opt_state)
    assert steps(resumed, resumed_optimizer, range(3, 6)) == uninterrupted
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), resumed.state_dict().values()))


def test_an_encoder_without_a_start_token_is_refused() -> None:
    encoder = MLPEncoder()
    encoder.vocab_size = 8  # a vocabulary, but no start token to read its units behind
    objective = ImageGPTObjective(ImageGPTObjectiveConfig(), encoder)
    with pytest.raises(CapabilityError, match="reads no start token .* encoder.arch=imagegpt"):
        objective(encoder, views_batch(torch.rand(2, 1, 16, 16)))
