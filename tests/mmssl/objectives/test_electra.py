"""ELECTRA: the loss against a computation written out on transformers' own classes, sampling, shared embeddings and
gradients, learning, exact resume, the size checks, and the export through the Auto classes and the fill-mask pipeline."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    ElectraConfig,
    ElectraForMaskedLM,
    ElectraForPreTraining,
    ElectraForSequenceClassification,
    pipeline,
)

from domains.text.encoders import HFTextEncoder
from mmssl.checkpoint import latest_checkpoint
from mmssl.config import ConfigError
from mmssl.masking import bert_mask
from mmssl.metrics import read_metrics
from mmssl.objectives.base import SSLModel
from mmssl.objectives.electra import ELECTRA, ELECTRAConfig, sample_tokens
from mmssl.pretrain import pretrain
from mmssl.recipe import load_recipe
from tests.conftest import TINY
from tests.fitting import first_last, fit
from tests.mmssl.objectives.lm_fixtures import V, token_batch


def electra(seed: int = 0) -> SSLModel:
    """A 2-layer, 32-wide discriminator (24-wide factorised embeddings) and its ELECTRA objective."""
    torch.manual_seed(seed)
    cfg = ElectraConfig(
        vocab_size=V,
        embedding_size=24,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    encoder = HFTextEncoder(ElectraForPreTraining(cfg), SimpleNamespace(mask_token_id=4))
    return SSLModel(encoder, ELECTRA(ELECTRAConfig(), encoder))


def _capture_input_ids(model: torch.nn.Module, into: list[torch.Tensor]) -> None:
    """Record the ``input_ids`` of every call of ``model`` (a keyword from mmssl, positional from transformers)."""

    def record(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        into.append(kwargs["input_ids"] if "input_ids" in kwargs else args[0])

    model.register_forward_pre_hook(record, with_kwargs=True)


def test_loss_equals_generator_ce_plus_50_times_bce_written_out() -> None:
    model = electra().eval()  # no dropout: the reference passes must give the same logits
    generator, discriminator = model.objective.generator.model, model.encoder.model
    batch = token_batch(padding_from=17)
    seen_by_generator, seen_by_discriminator = [], []
    _capture_input_ids(generator.electra, seen_by_generator)
    _capture_input_ids(discriminator.electra, seen_by_discriminator)
    torch.manual_seed(3)
    out = model(batch)

    torch.manual_seed(3)  # the objective's first draw: the mask, 85% [MASK] and 15% kept, no random tokens
    mask, masked = bert_mask(
        batch.units, batch.maskable, mask_token_id=4, vocab_size=V, mask_token_frac=0.85, random_token_frac=0.0
    )
    assert torch.equal(seen_by_generator[0], masked)
    corrupted = seen_by_discriminator[0]
    assert torch.equal(corrupted[~mask], batch.units[~mask])  # only masked units are replaced
    replaced = corrupted != batch.units  # a sample equal to the original counts as original
    assert 0 < replaced.sum() < mask.sum()

    attention = (~batch.padding_mask).long()
    with torch.no_grad():
        gen_logits = generator(input_ids=masked, attention_mask=attention).logits  # [B, T, V], every position
        disc_logits = discriminator(input_ids=corrupted, attention_mask=attention).logits  # [B, T]
    ce = -gen_logits.log_softmax(-1)[mask].gather(1, batch.units[mask][:, None]).mean()
    real = ~batch.padding_mask & ~batch.special_mask
    x, y = disc_logits[real], replaced[real].float()
    bce = -(y * F.logsigmoid(x) + (1 - y) * F.logsigmoid(-x)).mean()
    assert out.terms["mlm"].item() == pytest.approx(ce.item(), rel=1e-5)
    assert out.terms["rtd"].item() == pytest.approx(bce.item(), rel=1e-5)
    assert out.loss.item() == pytest.approx((ce + 50 * bce).item(), rel=1e-5)
    assert out.logs["replaced_fraction"].item() == pytest.approx((replaced.sum() / real.sum()).item())


def test_samples_follow_the_generator_softmax_and_carry_no_gradient() -> None:
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0], requires_grad=True)
    for temperature in (1.0, 2.0):
        torch.manual_seed(0)
        ids = sample_tokens(logits.expand(40000, 4), temperature)
        assert not ids.requires_grad and ids.dtype == torch.long
        frequencies = torch.bincount(ids, minlength=4) / ids.numel()
        torch.testing.assert_close(frequencies, (logits / temperature).softmax(-1).detach(), atol=0.01, rtol=0)


def test_shared_embeddings_are_one_tensor() -> None:
    model = electra()
    generator, discriminator = model.objective.generator.model, model.encoder.model
    assert generator.electra.embeddings is discriminator.electra.embeddings
    shared = discriminator.electra.embeddings
    state = model.state_dict()  # what a checkpoint holds: one storage under both names
    for table in ("word_embeddings", "position_embeddings", "token_type_embeddings", "LayerNorm"):
        ours = state[f"objective.generator.model.electra.embeddings.{table}.weight"]
        assert ours.data_ptr() == state[f"encoder.model.electra.embeddings.{table}.weight"].data_ptr()
    assert generator.generator_lm_head.weight is shared.word_embeddings.weight  # tied output projection
    assert generator.config.hidden_size == 16 and generator.config.num_attention_heads == 1  # 1/4: one 16-wide head
    assert generator.config.intermediate_size == 32 and generator.config.num_hidden_layers == 2
    # one tensor, so counted once: the model holds the discriminator plus the generator's own weights
    own = sum(p.numel() for n, p in generator.named_parameters() if not n.startswith("electra.embeddings."))
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in discriminator.parameters()) + own


def test_discriminator_loss_sends_no_gradient_into_the_generator() -> None:
    model = electra()
    generator, discriminator = model.objective.generator.model, model.encoder.model
    torch.manual_seed(0)
    model(token_batch()).terms["rtd"].backward()
    own = [p for n, p in generator.named_parameters() if not n.startswith("electra.embeddings.")]
    assert all(p.grad is None for p in own)  # the sampled ids are integers: no path back
    assert discriminator.electra.embeddings.word_embeddings.weight.grad.abs().sum() > 0  # shared, reached from D
    assert discriminator.discriminator_predictions.dense_prediction.weight.grad.abs().sum() > 0

    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    model(token_batch()).terms["mlm"].backward()
    assert all(p.grad is None for p in discriminator.electra.encoder.parameters())
    assert discriminator.discriminator_predictions.dense_prediction.weight.grad is None
    assert all(p.grad is not None for p in own)


def test_loss_decreases() -> None:
    first, last = first_last(fit(electra(), token_batch(), 20, lr=3e-3, seed=lambda step: step - 1))
    assert last < 0.8 * first, (first, last)


def _train(model: SSLModel, optimizer: torch.optim.Optimizer, steps: range) -> list[float]:
    losses = []
    for step in steps:
        torch.manual_seed(step)  # the step's mask, samples and dropout, the same in either run
        loss = model(token_batch(padding_from=18 if step % 2 else None)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_generator_is_saved_and_resumes_exactly() -> None:
    model = electra(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    _train(model, optimizer, range(1, 4))
    state, opt_state = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
    assert "objective.generator.model.generator_lm_head.bias" in state
    uninterrupted = _train(model, optimizer, range(4, 7))

    resumed = electra(5)
    resumed.load_state_dict(state)
    assert resumed.objective.generator.model.electra.embeddings is resumed.encoder.model.electra.embeddings
    resumed_optimizer = torch.optim.AdamW(resumed.parameters(), lr=1e-3)
    resumed_optimizer.load_state_dict(opt_state)
    assert _train(resumed, resumed_optimizer, range(4, 7)) == uninterrupted
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), resumed.state_dict().values()))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["objective.generator_size_fraction=1.5"], r"objective\.generator_size_fraction=1\.5 must be in \(0, 1\]"),
        (["objective.generator_num_layers=6"], r"objective\.generator_num_layers=6 .* \(encoder\.num_layers=4\)"),
        (
            ["encoder.arch=bert", "encoder.embedding_size=null"],
            r"encoder\.arch=bert has none; set encoder\.arch=electra",
        ),
        (["encoder.arch=bert"], r"encoder\.embedding_size=128: .* for encoder\.arch=electra only"),
    ],
)
def test_a_generator_larger_than_the_discriminator_is_refused_at_load(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_recipe("electra", overrides)


def test_a_generator_larger_than_an_encoder_it_was_not_checked_against_is_refused() -> None:
    """An ``encoder.init_from`` checkpoint sets its own sizes; building the generator checks them again."""
    encoder = electra().encoder
    with pytest.raises(ValueError, match="objective.generator_num_layers=3 at most 2"):
        encoder.mlm_generator(0.25, 3)


@pytest.fixture(scope="module")
def electra_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny 4-step run, and the same run stopped at step 2 then resumed to 4."""
    root = tmp_path_factory.mktemp("electra")
    overrides = [*TINY, "train.checkpoint_every=2"]
    full = pretrain("electra", [*overrides, "train.max_steps=4"], root / "full")
    part = pretrain("electra", [*overrides, "train.max_steps=2"], root / "part")
    return full, pretrain("electra", [*overrides, "train.max_steps=4"], part, resume=True)


def test_a_resumed_run_continues_exactly(electra_runs: tuple[Path, Path]) -> None:
    full, resumed = electra_runs
    losses = lambda run: [r["loss"] for r in read_metrics(run) if "loss" in r]  # noqa: E731
    assert len(losses(full)) == 4 and losses(resumed) == pytest.approx(losses(full), rel=1e-5)


def test_export_loads_through_the_auto_classes_and_the_fill_mask_pipeline(electra_runs: tuple[Path, Path]) -> None:
    run = electra_runs[0]
    export = run / "export"
    tokenizer = AutoTokenizer.from_pretrained(export)
    classifier = AutoModelForSequenceClassification.from_pretrained(export, num_labels=2)
    assert isinstance(classifier, ElectraForSequenceClassification)
    assert classifier(**tokenizer(["she was very happy"], return_tensors="pt")).logits.shape == (1, 2)

    discriminator, info = ElectraForPreTraining.from_pretrained(export, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]  # the trained RTD head, not a fresh one
    trained = load_file(latest_checkpoint(run) / "model.safetensors")
    key = "encoder.model.discriminator_predictions.dense_prediction.weight"
    assert torch.equal(discriminator.discriminator_predictions.dense_prediction.weight, trained[key])

    generator = ElectraForMaskedLM.from_pretrained(export / "generator")
    assert generator.config.hidden_size < discriminator.config.hidden_size
    shared = discriminator.electra.embeddings.word_embeddings.weight
    assert torch.equal(generator.electra.embeddings.word_embeddings.weight, shared)
    fill = pipeline("fill-mask", model=str(export / "generator"), tokenizer=str(export))
    guesses = fill(f"she was {tokenizer.mask_token} happy")
    assert len(guesses) == 5 and all(isinstance(g["token_str"], str) for g in guesses)
