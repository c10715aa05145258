"""word2vec (Mikolov et al. 2013): the negative-sampling loss of skip-gram and CBOW against the formula written out,
subsampling and the noise distribution against their formulas (and their draws), the dynamic window's pair counts,
learning, exact resume, and the settings refused at recipe load."""

from __future__ import annotations

import copy
import math
import re

import pytest
import torch

from domains.text.word2vec import Word2VecEncoder
from mmssl.config import ConfigError
from mmssl.objectives.base import SSLModel
from mmssl.objectives.word2vec import (
    Word2Vec,
    Word2VecConfig,
    cbow_inputs,
    keep_probabilities,
    negative_sampling_loss,
    noise_distribution,
    skipgram_pairs,
)
from mmssl.recipe import load_recipe
from mmssl.types import Batch

SPECIALS = ["[PAD]", "[UNK]", "</s>"]
TOPICS = (["red", "green", "blue", "pink", "cyan"], ["cat", "dog", "cow", "pig", "hen"])
WORDS = SPECIALS + TOPICS[0] + TOPICS[1]


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def model_of(counts: list[float], seed: int = 0, dim: int = 8, **settings) -> SSLModel:
    """A word2vec encoder over :data:`WORDS` with ``counts`` and the objective of ``settings``."""
    torch.manual_seed(seed)
    encoder = Word2VecEncoder(WORDS, dim, [0, 1, 2], torch.tensor(counts, dtype=torch.float64))
    return SSLModel(encoder, Word2Vec(Word2VecConfig(**settings), encoder))


COUNTS = [0, 0, 0, *[100.0] * 10]


def topic_batch(seed: int, rows: int = 16, length: int = 12) -> Batch:
    """Rows of words of one topic each (alternating), in random order, some rows padded after 8 units."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([3 + 5 * (r % 2) + torch.randint(0, 5, (length,), generator=g) for r in range(rows)])
    padding = torch.zeros(rows, length, dtype=torch.bool)
    padding[::3, 8:] = True
    return Batch(units=ids.masked_fill(padding, 0), padding_mask=padding)


# ---------------------------------------------------------------------------- the loss, written out


def test_negative_sampling_loss_is_the_papers_formula() -> None:
    g = torch.Generator().manual_seed(0)
    v, u, neg = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g), torch.randn(4, 2, 3, generator=g)
    mask = torch.tensor([[True, True], [True, False], [False, False], [True, True]])
    expected = []
    for n in range(4):
        total = math.log(sigmoid(float(u[n] @ v[n])))
        total += sum(math.log(sigmoid(-float(neg[n, k] @ v[n]))) for k in range(2) if mask[n, k])
        expected.append(-total)
    torch.testing.assert_close(negative_sampling_loss(v, u, neg, mask), torch.tensor(expected), rtol=1e-6, atol=1e-6)


def fixed_negatives(model: SSLModel, ids: list[list[int]]) -> None:
    """Make the objective draw ``ids`` (``[n, K]``, cut to the pairs asked for) instead of random noise words."""
    table = torch.tensor(ids)
    model.objective.draw_negatives = lambda n: table[:n]


def test_skipgram_objective_equals_the_formula_over_its_pairs() -> None:
    """Window 1 (every centre's window is 1), no subsampling: the pairs are the neighbours, the noise words fixed."""
    model = model_of(COUNTS, model="skipgram", window=1, negatives=2, sample=0.0, output_init="uniform")
    units = torch.tensor([[3, 4, 1, 5, 0], [8, 9, 10, 11, 12]])  # [UNK] (id 1) is dropped, then 4 and 5 are neighbours
    padding = torch.tensor([[False, False, False, False, True], [False] * 5])
    noise = [[6, 7], [8, 4], [12, 12], [3, 9], [5, 6], [7, 10], [11, 3], [4, 4], [9, 10], [6, 12], [3, 3], [8, 8]]
    fixed_negatives(model, noise)
    loss = model(Batch(units=units, padding_mask=padding)).loss
    v, u = model.encoder.embeddings.weight.detach(), model.objective.output.weight.detach()
    rows = [[3, 4, 5], [8, 9, 10, 11, 12]]
    # skipgram_pairs lists offset -1 first, then +1, each in row-major order of the centres
    pairs = [(r[t], r[t + j]) for j in (-1, 1) for r in rows for t in range(len(r)) if 0 <= t + j < len(r)]
    assert len(pairs) == 12
    total = 0.0
    for (centre, context), negs in zip(pairs, noise):
        total -= math.log(sigmoid(float(u[context] @ v[centre])))
        total -= sum(math.log(sigmoid(-float(u[k] @ v[centre]))) for k in negs if k != context)
    torch.testing.assert_close(loss, torch.tensor(total / 12, dtype=loss.dtype), rtol=1e-5, atol=1e-6)


def test_cbow_objective_equals_the_formula_with_the_context_mean() -> None:
    model = model_of(COUNTS, model="cbow", window=1, negatives=2, sample=0.0, output_init="uniform")
    units = torch.tensor([[3, 4, 5, 6]])
    noise = [[9, 10], [11, 12], [4, 8], [3, 3]]
    fixed_negatives(model, noise)
    loss = model(Batch(units=units, padding_mask=torch.zeros(1, 4, dtype=torch.bool))).loss
    v, u = model.encoder.embeddings.weight.detach(), model.objective.output.weight.detach()
    row, total = [3, 4, 5, 6], 0.0
    for t, negs in zip(range(4), noise):
        context = [row[s] for s in (t - 1, t + 1) if 0 <= s < 4]
        h = torch.stack([v[c] for c in context]).mean(0)
        total -= math.log(sigmoid(float(u[row[t]] @ h)))
        total -= sum(math.log(sigmoid(-float(u[k] @ h))) for k in negs if k != row[t])
    torch.testing.assert_close(loss, torch.tensor(total / 4, dtype=loss.dtype), rtol=1e-5, atol=1e-6)


def test_cbow_inputs_average_each_centres_dynamic_window() -> None:
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(2, 6, 4, generator=g)
    valid = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    reduced = torch.randint(1, 4, (2, 6), generator=g)
    h, centre = cbow_inputs(hidden, valid, reduced, window=3)
    expected, centres = [], []
    for b in range(2):
        for t in range(6):
            ctx = [s for s in range(6) if s != t and abs(s - t) <= reduced[b, t] and valid[b, s] and valid[b, t]]
            if ctx:
                expected.append(hidden[b, ctx].mean(0))
                centres.append(b * 6 + t)
    torch.testing.assert_close(h, torch.stack(expected))
    assert centre.tolist() == centres


# ---------------------------------------------------------------------------- subsampling and noise


def test_keep_probability_formulas() -> None:
    counts = torch.tensor([0.0, 5000.0, 400.0, 100.0, 1.0])
    total, t = float(counts.sum()), 1e-3
    f = [c / total for c in counts.tolist()]
    paper = keep_probabilities(counts, t, "paper")
    code = keep_probabilities(counts, t, "code")
    for i in range(1, 5):
        assert paper[i].item() == pytest.approx(min(1.0, math.sqrt(t / f[i])))
        assert code[i].item() == pytest.approx(min(1.0, math.sqrt(t / f[i]) + t / f[i]))
    assert paper[0] == code[0] == 0 and paper[1] < 0.5 and paper[4] == 1
    assert keep_probabilities(counts, 0.0, "paper").tolist() == [0.0, 1.0, 1.0, 1.0, 1.0]


def test_units_survive_subsampling_at_their_keep_probability() -> None:
    model = model_of([0, 0, 0, 8000, 1000, 500, 200, 100, 50, 20, 10, 5, 1], sample=1e-2)
    units = torch.arange(3, 13).repeat(2000, 1)
    torch.manual_seed(0)
    kept = model.objective.kept_units(Batch(units=units, padding_mask=torch.zeros_like(units, dtype=torch.bool)))
    torch.testing.assert_close(kept.double().mean(0), model.objective.keep_probs[3:13], atol=0.03, rtol=0)


def test_noise_distribution_is_unigram_to_the_three_quarters() -> None:
    counts = torch.tensor([0.0, 0.0, 16.0, 81.0, 1.0, 256.0])
    probs = noise_distribution(counts, 0.75)
    weights = [0.0, 0.0, 8.0, 27.0, 1.0, 64.0]  # c ** 0.75
    torch.testing.assert_close(probs, torch.tensor(weights, dtype=torch.float64) / 100.0)
    model = model_of([0, 0, 0, *[float(4**k) for k in range(10)]])
    torch.manual_seed(0)
    draws = model.objective.draw_negatives(40_000).flatten()  # K = 5 each
    freq = torch.bincount(draws, minlength=len(WORDS)).double() / draws.numel()
    torch.testing.assert_close(freq, model.objective.noise_probs, atol=4e-3, rtol=0)
    assert freq[:3].sum() == 0  # special ids are never noise


# ---------------------------------------------------------------------------- the dynamic window


def test_skipgram_pairs_are_every_context_word_within_each_centres_window() -> None:
    g = torch.Generator().manual_seed(1)
    valid = torch.tensor([[True] * 7, [True] * 5 + [False] * 2])
    reduced = torch.randint(1, 4, (2, 7), generator=g)
    centre, context = skipgram_pairs(valid, reduced, window=3)
    brute = {
        (b * 7 + t, b * 7 + s)
        for b in range(2)
        for t in range(7)
        for s in range(7)
        if s != t and valid[b, t] and valid[b, s] and abs(s - t) <= reduced[b, t]
    }
    assert sorted(zip(centre.tolist(), context.tolist())) == sorted(brute)


def test_dynamic_window_gives_offset_d_with_probability_falling_linearly() -> None:
    """word2vec.c draws r uniformly in 1..c, so offset d is a pair with probability (c - d + 1) / c per side."""
    window, length, rows = 5, 400, 50
    torch.manual_seed(0)
    valid = torch.ones(rows, length, dtype=torch.bool)
    reduced = torch.randint(1, window + 1, valid.shape)
    centre, context = skipgram_pairs(valid, reduced, window)
    offsets = (context - centre).abs()
    centres = rows * (length - 2 * window)  # centres far from both ends
    interior = (centre % length >= window) & (centre % length < length - window)
    for d in range(1, window + 1):
        share = float(((offsets == d) & interior).sum()) / (2 * centres)
        assert share == pytest.approx((window - d + 1) / window, abs=0.02)
    assert int(interior.sum()) / centres == pytest.approx(window + 1, rel=0.02)  # 2 E[r] = c + 1 pairs per centre


# ---------------------------------------------------------------------------- training


def train(model: SSLModel, steps: range, opt: torch.optim.Optimizer) -> list[float]:
    losses = []
    for step in steps:
        torch.manual_seed(step)  # the trainer re-seeds before every micro-batch
        loss = model(topic_batch(step)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("kind", ["skipgram", "cbow"])
def test_loss_decreases_and_co_occurring_words_move_together(kind: str) -> None:
    model = model_of(COUNTS, dim=16, model=kind, window=3, negatives=5, sample=0.0)
    vectors = model.encoder.embeddings.weight

    def cosine(a: str, b: str) -> float:
        x, y = vectors[WORDS.index(a)].detach(), vectors[WORDS.index(b)].detach()
        return float(torch.cosine_similarity(x, y, dim=0))

    before = cosine("red", "blue"), cosine("red", "cat")
    losses = train(model, range(150), torch.optim.Adam(model.parameters(), lr=0.02))
    assert sum(losses[-10:]) / 10 < 0.8 * sum(losses[:10]) / 10, losses[::15]
    same, other = cosine("red", "blue"), cosine("red", "cat")
    assert same > before[0] + 0.3 and same > 0.5 and same > other + 0.5, (before, same, other)
    neighbours = torch.cosine_similarity(vectors[WORDS.index("cat")].detach(), vectors[3:].detach(), dim=1).argsort(
        descending=True
    )
    assert {WORDS[3 + int(i)] for i in neighbours[1:5]} == set(TOPICS[1]) - {"cat"}


def test_resumes_exactly_with_the_saved_noise_and_subsampling() -> None:
    """The checkpoint holds the noise and keep probabilities: a model built from other counts, resumed, takes the
    same steps as the uninterrupted run."""
    counts = [0, 0, 0, 900, 500, 300, 100, 60, 30, 10, 6, 3, 1]
    model = model_of(counts, sample=1e-2, negatives=3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    train(model, range(3), opt)
    state, opt_state = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    assert {"objective.noise_probs", "objective.keep_probs", "objective.output.weight"} <= set(state)
    uninterrupted = train(model, range(3, 6), opt)

    resumed = model_of(list(reversed(counts[3:])) + [0, 0, 0], seed=7, sample=1e-2, negatives=3)
    resumed.load_state_dict(state)
    resumed_opt = torch.optim.AdamW(resumed.parameters(), lr=1e-2)
    resumed_opt.load_state_dict(opt_state)
    assert train(resumed, range(3, 6), resumed_opt) == uninterrupted
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), resumed.state_dict().values()))


# ---------------------------------------------------------------------------- settings refused at load


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("objective.window=0", "objective.window must be >= 1"),
        ("objective.negatives=0", "objective.negatives must be >= 1"),
        ("objective.sample=-1e-5", "objective.sample must be in [0, 1)"),
        ("objective.noise_power=1.5", "objective.noise_power must be in [0, 1]"),
        ("encoder.arch=bert", "encoder.arch=bert carries no corpus counts of its units; set encoder.arch=word2vec"),
    ],
)
def test_bad_settings_are_refused_at_recipe_load(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(key)) as error:
        load_recipe("word2vec", [override])
    assert "word2vec.yaml" in str(error.value)


def test_an_encoder_without_counts_is_refused() -> None:
    encoder = Word2VecEncoder(WORDS, 4, [0, 1, 2], None)
    with pytest.raises(ValueError, match="corpus counts.*encoder.arch=word2vec"):
        Word2Vec(Word2VecConfig(), encoder)
