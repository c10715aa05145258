"""T5 span corruption: T5's length formula, reconstruction, parity with T5ForConditionalGeneration's loss, learning,
exact resume, bad settings, and the export through transformers' seq2seq classes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, T5Config, T5EncoderModel, T5ForConditionalGeneration

from domains.text.t5 import T5TextEncoder, build_t5_encoder
from mmssl.config import ConfigError
from mmssl.objectives.base import SSLModel
from mmssl.objectives.t5_span import (
    T5SpanCorruption,
    T5SpanCorruptionConfig,
    random_spans_noise_mask,
    span_counts,
    t5_lengths,
)
from mmssl.pretrain import pretrain
from mmssl.recipe import load_recipe
from mmssl.registry import DOMAINS
from mmssl.trainer import Trainer
from mmssl.types import Batch
from tests.conftest import TINY
from tests.fitting import first_last, fit
from tests.mmssl.loop_fixtures import losses

V, N_SENTINELS, B = 120, 40, 6
SENTINELS = tuple(range(V - 1, V - 1 - N_SENTINELS, -1))  # T5's order: <extra_id_0> is the last id
EOS = 1


def tiny_t5(seed: int = 0) -> T5TextEncoder:
    torch.manual_seed(seed)
    cfg = T5Config(
        vocab_size=V,
        d_model=32,
        d_kv=16,
        d_ff=64,
        num_layers=2,
        num_heads=2,
        dropout_rate=0.0,
        pad_token_id=0,
        eos_token_id=EOS,
        decoder_start_token_id=0,
    )
    return T5TextEncoder(T5ForConditionalGeneration(cfg), SENTINELS)


def raw_rows(length: int, batch: int = B, seed: int = 1) -> torch.Tensor:
    """``[batch, length]`` ids that are neither special nor sentinels."""
    return torch.randint(3, V - N_SENTINELS, (batch, length), generator=torch.Generator().manual_seed(seed))


def objective(encoder: T5TextEncoder, **settings: float) -> T5SpanCorruption:
    return T5SpanCorruption(T5SpanCorruptionConfig(**settings), encoder)


def reference_lengths(inputs_length: int, density: float, mean_span: float) -> tuple[int, int]:
    """T5's ``random_spans_helper`` as the paper's code describes it, written out without mmssl's functions."""

    def corrupted(tokens: int) -> tuple[int, int]:
        noise = int(round(tokens * density))
        spans = int(round(noise / mean_span))
        return tokens - noise + spans + 1, noise + spans + 1

    tokens = inputs_length - 1
    while corrupted(tokens + 1)[0] <= inputs_length:
        tokens += 1
    return tokens, corrupted(tokens)[1]


# ---------------------------------------------------------------------------------------------- (a) lengths
def test_t5_lengths_are_t5s() -> None:
    assert t5_lengths(512, 0.15, 3.0) == (568, 114)  # T5's published pretraining lengths
    assert t5_lengths(128, 0.15, 3.0) == (141, 29)  # the recipe's
    for inputs_length in (32, 64, 100, 128, 256, 512, 1024):
        for density in (0.1, 0.15, 0.3):
            for mean_span in (1.0, 2.0, 3.0, 5.0, 10.0):
                expected = reference_lengths(inputs_length, density, mean_span)
                if round(round(expected[0] * density) / mean_span) == 0:
                    # T5's formula counts no span where its mask draws one (a row of 35 at 0.1 / 10): its input would
                    # be a token too long; mmssl counts the span (the brute-force test below checks exactness)
                    assert t5_lengths(inputs_length, density, mean_span)[0] < expected[0]
                    continue
                assert t5_lengths(inputs_length, density, mean_span) == expected, (inputs_length, density, mean_span)


@pytest.mark.parametrize(
    ("inputs_length", "density", "mean_span"),
    [
        (8, 0.15, 3.0),
        (32, 0.15, 3.0),
        (128, 0.15, 3.0),
        (512, 0.15, 3.0),
        (64, 0.3, 2.0),
        (100, 0.1, 5.0),
        (57, 0.45, 1.0),
    ],
)
def test_rows_of_the_raw_length_corrupt_to_exactly_the_lengths(inputs_length: int, density: float, mean_span: float):
    raw, targets_length = t5_lengths(inputs_length, density, mean_span)
    obj = objective(tiny_t5(), noise_density=density, mean_noise_span_length=mean_span)
    inputs, targets = obj.corrupt(raw_rows(raw))
    assert inputs.shape == (B, inputs_length) and targets.shape == (B, targets_length)
    longer, _ = obj.corrupt(raw_rows(raw + 1))
    assert longer.shape[1] == inputs_length + 1  # the raw length is the longest that fits


def test_noise_fraction_and_span_lengths_follow_the_settings() -> None:
    length, rows = 568, 4000
    noise = random_spans_noise_mask(rows, length, 0.15, 3.0, generator=torch.Generator().manual_seed(0))
    num_noise, num_spans = span_counts(length, 0.15, 3.0)
    assert (num_noise, num_spans) == (85, 28)
    assert bool((noise.sum(1) == num_noise).all())  # every row: round(0.15 * 568) noise tokens
    starts = noise & ~F.pad(noise[:, :-1], (1, 0), value=False)
    assert bool((starts.sum(1) == num_spans).all())  # in 28 spans: mean length 3.04
    assert not noise[:, 0].any() and noise[:, -1].all()  # kept tokens first, a noise span last (T5's order)
    # span lengths are a random composition (geometric-like), not all 3; noise is spread over the row
    ends = noise & ~F.pad(noise[:, 1:], (0, 1), value=False)
    lengths = (ends.nonzero()[:, 1] - starts.nonzero()[:, 1] + 1).float()
    assert lengths.mean().item() == pytest.approx(85 / 28) and (lengths == 1).float().mean() > 0.25
    assert lengths.max() >= 12
    per_position = noise[:, 20:-20].float().mean(0)
    assert per_position.mean().item() == pytest.approx(0.15, abs=0.005) and per_position.sub(0.15).abs().max() < 0.04


# ---------------------------------------------------------------------------------------------- (b) reconstruction
def test_filling_each_sentinel_with_its_span_gives_back_the_row() -> None:
    units = raw_rows(141, batch=32)
    inputs, targets = objective(tiny_t5()).corrupt(units, generator=torch.Generator().manual_seed(3))
    assert bool((inputs[:, -1] == EOS).all() and (targets[:, -1] == EOS).all())
    for row, inp, tgt in zip(units.tolist(), inputs[:, :-1].tolist(), targets[:, :-1].tolist()):
        spans: dict[int, list[int]] = {}
        for token in tgt:
            if token in SENTINELS:
                spans[token] = []
                current = spans[token]
            else:
                current.append(token)
        assert list(spans) == [s for s in inp if s in SENTINELS] == list(SENTINELS[: len(spans)])  # k-th span: k-th id
        assert all(spans.values())
        assert [t for s in inp for t in (spans[s] if s in SENTINELS else [s])] == row


def test_the_generator_fixes_the_draw() -> None:
    obj, units = objective(tiny_t5()), raw_rows(141)
    first = obj.corrupt(units, generator=torch.Generator().manual_seed(5))
    again = obj.corrupt(units, generator=torch.Generator().manual_seed(5))
    other = obj.corrupt(units, generator=torch.Generator().manual_seed(6))
    assert all(torch.equal(a, b) for a, b in zip(first, again)) and not torch.equal(first[0], other[0])


# ---------------------------------------------------------------------------------------------- (c) parity
def test_loss_and_gradients_match_t5_for_conditional_generation() -> None:
    enc = tiny_t5().eval()
    obj = objective(enc)
    units = raw_rows(37)
    torch.manual_seed(7)
    out = obj(enc, Batch(units=units, padding_mask=torch.zeros_like(units, dtype=torch.bool)))
    out.loss.backward()
    ours = enc.model.shared.weight.grad.clone()
    enc.zero_grad()

    torch.manual_seed(7)  # the same draw the objective made
    inputs, targets = obj.corrupt(units)
    ref = enc.model(input_ids=inputs, labels=targets)  # T5 shifts the labels right behind <pad> itself
    ref.loss.backward()
    assert out.terms["span_corruption"].item() == pytest.approx(ref.loss.item(), rel=1e-5)
    by_hand = F.cross_entropy(ref.logits.flatten(0, 1), targets.flatten())  # an independent cross-entropy
    assert out.loss.item() == pytest.approx(by_hand.item(), rel=1e-5)
    torch.testing.assert_close(ours, enc.model.shared.weight.grad, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------------- (d) learning
def test_loss_decreases() -> None:
    enc = tiny_t5()
    units = raw_rows(37)
    batch = Batch(units=units, padding_mask=torch.zeros_like(units, dtype=torch.bool))
    first, last = first_last(fit(SSLModel(enc, objective(enc)), batch, 20, lr=3e-3, seed=lambda step: step - 1))
    assert last < 0.85 * first, (first, last)


# ---------------------------------------------------------------------------------------------- (e) exact resume
def test_interrupted_run_resumes_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each run trains its own unigram tokenizer (it must be the same) and draws its spans from the trainer's
    per-step seed, so a run interrupted after its step-3 checkpoint and resumed logs the same losses."""
    overrides = [*TINY, "train.max_steps=6", "train.checkpoint_every=3"]
    pretrain("t5", overrides, tmp_path / "straight")
    original = Trainer._run_hooks

    def interrupt(self: Trainer) -> dict:
        if self.state.step == 5:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Trainer, "_run_hooks", interrupt)
    with pytest.raises(KeyboardInterrupt):
        pretrain("t5", overrides, tmp_path / "resumed")
    monkeypatch.setattr(Trainer, "_run_hooks", original)
    pretrain("t5", overrides, tmp_path / "resumed", resume=True)
    straight, resumed = losses(tmp_path / "straight"), losses(tmp_path / "resumed")
    assert list(resumed) == list(range(1, 7)) and resumed == pytest.approx(straight, rel=1e-6, abs=1e-7)


# ---------------------------------------------------------------------------------------------- (f) bad input
@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("objective.noise_density=0", r"objective.noise_density must be in \(0, 1\), got 0"),
        ("objective.noise_density=1.0", r"objective.noise_density must be in \(0, 1\), got 1.0"),
        ("objective.noise_density=-0.2", r"objective.noise_density must be in \(0, 1\)"),
        ("objective.mean_noise_span_length=0", "objective.mean_noise_span_length must be >= 1 .*got 0"),
        ("objective.mean_noise_span_length=-3", "objective.mean_noise_span_length must be >= 1"),
        ("objective.mean_noise_span_length=0.5", "objective.mean_noise_span_length must be >= 1"),
        ("data.packing=line", "data.packing=line pads rows: set data.packing=concat"),
        ("encoder.arch=bert", "encoder.arch=bert has no decoder; set encoder.arch=t5"),
    ],
)
def test_bad_settings_are_refused_at_load_naming_the_key(setting: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f"t5.yaml: .*{message}"):
        load_recipe("t5", [setting])


def test_a_corpus_shorter_than_one_input_names_the_file_and_lengths(tmp_path: Path) -> None:
    corpus = tmp_path / "short.txt"
    corpus.write_text("Tiny.\n\nText.\n")
    recipe = load_recipe("t5", [*TINY, "data.source=files", f"data.paths=[{corpus}]"])
    raw = t5_lengths(32, 0.15, 3.0)[0]
    with pytest.raises(
        ValueError, match=f"files .*short.txt holds less than one block of {raw} tokens .*block_size=32"
    ):
        DOMAINS.get("text").pretrain_data(recipe, tmp_path / "run", 0, 1)


def test_more_spans_than_sentinels_and_a_tokenizer_without_sentinels_are_refused(tiny_bert_run: Path) -> None:
    with pytest.raises(ValueError, match=r"get \d+ noise spans .* only 40 sentinel tokens: shorten data.block_size"):
        objective(tiny_t5()).corrupt(raw_rows(t5_lengths(800, 0.15, 3.0)[0]))
    bert_tokenizer = AutoTokenizer.from_pretrained(tiny_bert_run / "export")
    recipe = load_recipe("t5", TINY)
    with pytest.raises(ValueError, match="encoder.arch=t5 needs a tokenizer with a pad token and the sentinel tokens"):
        build_t5_encoder(recipe.encoder, bert_tokenizer)
    with pytest.raises(ValueError, match="encoder.arch=t5"):
        T5SpanCorruption(T5SpanCorruptionConfig(), DOMAINS.get("text").load_encoder(tiny_bert_run / "export"))


# ---------------------------------------------------------------------------------------------- (g) export
@pytest.fixture(scope="module")
def t5_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pretrain("t5", [*TINY, "train.max_steps=3"], tmp_path_factory.mktemp("runs") / "t5")


def test_export_loads_offline_as_seq2seq_lm_and_its_encoder_alone(t5_run: Path) -> None:
    export = t5_run / "export"  # HF_HUB_OFFLINE=1 (tests/conftest.py): nothing is fetched
    tokenizer = AutoTokenizer.from_pretrained(export)
    assert tokenizer.convert_tokens_to_ids("<extra_id_0>") == len(tokenizer) - 1  # T5's sentinel order
    ids = tokenizer("It was a truth <extra_id_0> acknowledged.", return_tensors="pt")
    assert ids.input_ids[0, -1].item() == tokenizer.eos_token_id  # </s> closes an input, as in pretraining

    model = AutoModelForSeq2SeqLM.from_pretrained(export).eval()
    assert type(model).__name__ == "T5ForConditionalGeneration"
    generated = model.generate(**ids, max_new_tokens=6, do_sample=False)
    assert generated.shape[0] == 1 and isinstance(tokenizer.decode(generated[0], skip_special_tokens=True), str)

    features = T5EncoderModel.from_pretrained(export).eval()(**ids).last_hidden_state
    encoder = DOMAINS.get("text").load_encoder(export).eval()  # what `mmssl evaluate` probes
    batch = Batch(units=ids.input_ids, padding_mask=ids.attention_mask == 0)
    with torch.no_grad():
        torch.testing.assert_close(encoder.encode(batch).hidden, features)
    assert "pipeline_tag: text2text-generation" in (export / "README.md").read_text()
    assert json.loads((export / "mmssl.json").read_text())["objective"] == "t5_span_corruption"
