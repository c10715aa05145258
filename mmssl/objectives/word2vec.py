"""word2vec: skip-gram or CBOW with negative sampling (Mikolov et al. 2013, "Distributed Representations of Words and
Phrases and their Compositionality"; CBOW: Mikolov et al. 2013, "Efficient Estimation of Word Representations in
Vector Space").

Each step, per row of units (a sentence or a block of text), as the reference C code ``word2vec.c`` reads a sentence:

1. **Drop** units that are never trained (count 0: padding, special and unknown words) and, with ``sample = t > 0``,
   subsample frequent words: a word of corpus frequency ``f`` is kept with probability ``min(1, sqrt(t / f))``
   (the paper's eq. 5, ``subsample_formula=paper``) or ``min(1, sqrt(t / f) + t / f)`` (word2vec.c and gensim,
   ``subsample_formula=code``). The kept units close up, so windows reach past the dropped ones.
2. **Windows**: every kept unit draws its own window ``r`` uniformly from ``1 .. window`` (word2vec.c's
   ``b = rand % window``, ``r = window - b``), so near words are context more often than far ones.
3. **Loss** of negative sampling (the paper's eq. 4), with the input vectors ``v`` from the encoder
   (:meth:`Encoder.encode`: the text domain's ``encoder.arch=word2vec`` is a table of them) and the output vectors
   ``v'`` of this objective::

       skip-gram: for each centre w_I and each context word w_O within r of it
           -[log s(v'_{w_O} . v_{w_I}) + sum_k log s(-v'_{n_k} . v_{w_I})]
       CBOW: for each centre w_O, with h the mean of the input vectors of its context words within r
           -[log s(v'_{w_O} . h) + sum_k log s(-v'_{n_k} . h)]

   where ``s`` is the logistic sigmoid and the ``k = negatives`` noise words ``n_k`` are drawn from the unigram
   distribution raised to ``noise_power = 3/4`` and normalised (sec. 2.2); a noise word equal to the positive one is
   skipped, as word2vec.c does. The loss is the mean over the global number of (centre, context) pairs.

The counts behind subsampling and noise are the encoder's (:meth:`Encoder.unit_counts`: the text domain's word-level
tokenizer counts the corpus once); the objective turns them into its buffers ``keep_probs`` and ``noise_probs`` at
construction, and both are saved in every checkpoint, so a resumed run draws from exactly the same distributions.
Randomness (subsampling, windows, noise words) comes from the global torch RNG, which the trainer seeds per step.

Differences from word2vec.c, for a batched autograd trainer: the optimiser is the trainer's (AdamW with its
schedule, not SGD with a linearly decaying rate 0.025); skip-gram scores the centre's input vector against the
context word's output vector as the paper writes it (word2vec.c swaps the two; the pairs are the same set in
expectation); vectors are read from one batch at a time rather than updated after each word.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmssl.distributed import global_mean_normalizer
from mmssl.encoder import CapabilityError, Encoder
from mmssl.objectives.base import Objective
from mmssl.objectives.losses import f32, full_precision
from mmssl.types import Batch, ObjectiveOutput


@dataclass(frozen=True)
class Word2VecConfig:
    """word2vec with negative sampling (Mikolov et al. 2013b); defaults are the paper's unless said otherwise."""

    name: str = "word2vec"
    model: Literal["skipgram", "cbow"] = "skipgram"  # the paper's is skip-gram; CBOW from Mikolov et al. 2013a
    window: int = 5  # largest window c; each centre draws r in 1..c (the training context, eq. 1; word2vec.c -window 5)
    negatives: int = 5  # k: "5-20 for small training datasets, 2-5 for large" (sec. 2.2); word2vec.c -negative 5
    sample: float = 1e-5  # t of the subsampling (sec. 2.3: "typically around 1e-5"); 0 keeps every word
    subsample_formula: Literal["paper", "code"] = "paper"  # keep sqrt(t/f) (eq. 5) or sqrt(t/f) + t/f (word2vec.c)
    noise_power: float = 0.75  # U(w)^{3/4} / Z (sec. 2.2)
    # output vectors at start: zeros as word2vec.c and gensim (so the first step moves only them), or uniform in
    # [-0.5/D, 0.5/D) like the input vectors
    output_init: Literal["zeros", "uniform"] = "zeros"

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(
                f"objective.window must be >= 1 (context words on each side of the centre), got {self.window}"
            )
        if self.negatives < 1:
            raise ValueError(
                f"objective.negatives must be >= 1 (noise words per pair; the paper: 5-20), got {self.negatives}"
            )
        if not 0.0 <= self.sample < 1.0:
            raise ValueError(
                f"objective.sample must be in [0, 1) (0: no subsampling; the paper: 1e-5), got {self.sample}"
            )
        if not 0.0 <= self.noise_power <= 1.0:
            raise ValueError(f"objective.noise_power must be in [0, 1] (the paper: 0.75), got {self.noise_power}")


def noise_distribution(counts: Tensor, power: float) -> Tensor:
    """``[V]`` float64 ``counts^power / sum``, 0 where the count is 0 (units that are never trained)."""
    counts = counts.to(torch.float64)
    weights = torch.where(counts > 0, counts.clamp(min=1e-300) ** power, 0.0)
    return weights / weights.sum()


def keep_probabilities(counts: Tensor, sample: float, formula: str) -> Tensor:
    """``[V]`` probability that a unit survives subsampling: ``min(1, sqrt(t/f))`` (``paper``) or
    ``min(1, sqrt(t/f) + t/f)`` (``code``) with ``f = count / total``; 1 for every counted unit when ``sample = 0``;
    0 where the count is 0."""
    counts = counts.to(torch.float64)
    if sample == 0:
        return (counts > 0).to(torch.float64)
    ratio = sample * counts.sum() / counts.clamp(min=1e-300)  # t / f
    keep = ratio.sqrt() if formula == "paper" else ratio.sqrt() + ratio
    return torch.where(counts > 0, keep.clamp(max=1.0), 0.0)


def compact_rows(units: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
    """Move each row's kept units to its front, in order: ``(units [B, T], padding_mask [B, T])``."""
    order = torch.argsort((~keep).to(torch.uint8), dim=1, stable=True)
    lengths = keep.sum(1, keepdim=True)
    return units.gather(1, order), torch.arange(units.shape[1], device=units.device) >= lengths


def shifted(x: Tensor, offset: int, fill: float | bool = 0) -> Tensor:
    """``y[:, t] = x[:, t + offset]`` (``x``: ``[B, T, ...]``), ``fill`` where ``t + offset`` is outside the row."""
    y = torch.full_like(x, fill)
    t = x.shape[1]
    if abs(offset) < t:
        if offset >= 0:
            y[:, : t - offset] = x[:, offset:]
        else:
            y[:, -offset:] = x[:, : t + offset]
    return y


def context_masks(valid: Tensor, reduced: Tensor, window: int) -> dict[int, Tensor]:
    """For each offset ``j`` in ``-window .. window`` but 0, the ``[B, T]`` bool of centres ``t`` whose unit
    ``t + j`` is a context word: both valid, and ``|j| <= reduced[b, t]`` (the centre's dynamic window)."""
    return {j: valid & shifted(valid, j, False) & (reduced >= abs(j)) for j in range(-window, window + 1) if j != 0}


def skipgram_pairs(valid: Tensor, reduced: Tensor, window: int) -> tuple[Tensor, Tensor]:
    """``(centre, context)`` flat indices into the ``[B * T]`` grid of every skip-gram pair, ``[P]`` each."""
    index = torch.arange(valid.numel(), device=valid.device).view(valid.shape)
    pairs = [(index[ok], index[ok] + j) for j, ok in context_masks(valid, reduced, window).items()]
    return torch.cat([c for c, _ in pairs]), torch.cat([o for _, o in pairs])


def cbow_inputs(hidden: Tensor, valid: Tensor, reduced: Tensor, window: int) -> tuple[Tensor, Tensor]:
    """``(h [N, D], centre [N])``: the mean input vector of each centre's context words, and the centre's flat
    index, for every centre with at least one context word (word2vec.c's ``cw > 0``)."""
    total = torch.zeros_like(hidden)
    count = torch.zeros(valid.shape, dtype=hidden.dtype, device=hidden.device)
    for j, ok in context_masks(valid, reduced, window).items():
        total = total + shifted(hidden, j) * ok.unsqueeze(-1)
        count = count + ok
    has = count > 0
    return total[has] / count[has].unsqueeze(-1), has.flatten().nonzero().squeeze(1)


@full_precision
def negative_sampling_loss(inputs: Tensor, positives: Tensor, negatives: Tensor, negative_mask: Tensor) -> Tensor:
    """``[N]`` per-pair loss ``-[log s(u . v) + sum_k m_k log s(-n_k . v)]`` (Mikolov et al. 2013b, eq. 4).

    Args:
        inputs: ``[N, D]`` input vectors ``v`` (skip-gram: the centre's; CBOW: the mean of the context's).
        positives: ``[N, D]`` output vectors ``u`` of the words to predict.
        negatives: ``[N, K, D]`` output vectors of the noise words.
        negative_mask: ``[N, K]`` bool, False for noise words to skip (equal to the positive word).
    """
    v = f32(inputs)
    positive = F.logsigmoid((f32(positives) * v).sum(-1))
    negative = F.logsigmoid(-torch.einsum("nkd,nd->nk", f32(negatives), v))
    return -(positive + (negative * negative_mask).sum(-1))


class Word2Vec(Objective):
    """Skip-gram or CBOW with negative sampling over the encoder's input vectors (see the module docstring).

    Buffers (in every checkpoint): ``noise_probs`` ``[V]`` (unigram^power, normalised) and ``keep_probs`` ``[V]``
    (subsampling). Parameters: ``output`` (``[V, D]`` output vectors).
    """

    noise_probs: Tensor
    keep_probs: Tensor

    def __init__(self, config: Word2VecConfig, encoder: Encoder) -> None:
        super().__init__(config, encoder)
        counts = encoder.unit_counts()
        if counts is None or encoder.vocab_size is None:
            raise CapabilityError(
                f"word2vec draws noise words and subsamples by corpus counts, which {type(encoder).__name__} does not "
                "carry: use the text domain's encoder.arch=word2vec (its word-level tokenizer counts the corpus)"
            )
        self.output = nn.Embedding(encoder.vocab_size, encoder.hidden_size)
        if config.output_init == "zeros":
            nn.init.zeros_(self.output.weight)
        else:
            d = encoder.hidden_size
            nn.init.uniform_(self.output.weight, -0.5 / d, 0.5 / d)
        self.register_buffer("noise_probs", noise_distribution(counts, config.noise_power))
        self.register_buffer("keep_probs", keep_probabilities(counts, config.sample, config.subsample_formula))

    def kept_units(self, batch: Batch) -> Tensor:
        """``[B, T]`` bool: real, trained units that survive this step's subsampling."""
        keep = self.keep_probs[batch.units]
        return ~batch.padding_mask & (torch.rand(keep.shape, device=keep.device, dtype=keep.dtype) < keep)

    def draw_negatives(self, n: int) -> Tensor:
        """``[n, K]`` noise word ids drawn from :attr:`noise_probs` (inverse CDF of uniform draws)."""
        cdf = self.noise_probs.cumsum(0)
        u = torch.rand(n * self.config.negatives, device=cdf.device, dtype=cdf.dtype) * cdf[-1]
        ids = torch.searchsorted(cdf, u, right=True).clamp(max=cdf.shape[0] - 1)
        return ids.view(n, self.config.negatives)

    def forward(self, encoder: Encoder, batch: Batch) -> ObjectiveOutput:
        cfg = self.config
        units, padding = compact_rows(batch.units, self.kept_units(batch))
        hidden = encoder.encode(Batch(units=units, padding_mask=padding)).hidden  # [B, T, D] input vectors
        valid = ~padding
        reduced = torch.randint(1, cfg.window + 1, valid.shape, device=valid.device)  # dynamic window per centre
        if cfg.model == "skipgram":
            centre, context = skipgram_pairs(valid, reduced, cfg.window)
            inputs, targets = hidden.flatten(0, 1)[centre], units.flatten()[context]
        else:
            inputs, centre = cbow_inputs(hidden, valid, reduced, cfg.window)
            targets = units.flatten()[centre]
        noise = self.draw_negatives(targets.shape[0])  # [N, K]
        per_pair = negative_sampling_loss(inputs, self.output(targets), self.output(noise), noise != targets[:, None])
        n = torch.tensor(float(targets.shape[0]), device=per_pair.device)
        loss = per_pair.sum() / global_mean_normalizer(n)
        logs = {"pairs": n, "kept_fraction": valid.sum() / (~batch.padding_mask).sum().clamp(min=1)}
        return ObjectiveOutput(loss=loss, terms={cfg.model: loss}, logs=logs)
