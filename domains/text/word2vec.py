"""word2vec's input vectors (Mikolov et al. 2013) in the text domain: an embedding table behind mmssl's encoder protocol.

``encoder.arch=word2vec`` is one ``nn.Embedding`` of ``V x D`` word vectors, indexed by a word-level tokenizer
(:func:`domains.text.tokenizer.train_tokenizer`): :meth:`Word2VecEncoder.encode` looks each unit up, so
``EncoderOutput.hidden`` is the word vector of every unit and ``pooled()`` the mean of the vectors of a text's words
(a bag of vectors: special and unknown units count as padding, they have no vector). The output (context) vectors and
the loss are the objective's (:mod:`mmssl.objectives.word2vec`), which reads the corpus counts of every word from
:meth:`Word2VecEncoder.unit_counts` (the tokenizer carries them, ``tokenizer.init_kwargs["unit_counts"]``).

The export is the vectors in word2vec's text format (:data:`VECTORS_FILE`: a header ``"V D"``, then one line
``word v1 ... vD`` per token id, in id order, each number printed with 9 significant digits so float32 values read back
exactly), which gensim's ``KeyedVectors.load_word2vec_format`` reads, next to the tokenizer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from mmssl.encoder import Encoder
from mmssl.types import Batch, EncoderOutput

VECTORS_FILE = "word2vec.txt"
COUNTS_KEY = "unit_counts"  # the tokenizer's init kwarg that holds the corpus count of every token id


def init_vectors(table: Tensor) -> Tensor:
    """Fill ``table`` (``[V, D]``) uniformly in ``[-0.5 / D, 0.5 / D)``, as word2vec.c initialises its input vectors."""
    d = table.shape[1]
    with torch.no_grad():
        return table.uniform_(-0.5 / d, 0.5 / d)


def write_word2vec_text(path: Path, words: list[str], vectors: Tensor) -> None:
    """Write ``vectors`` (``[V, D]``) in word2vec's text format: ``"V D"``, then ``word v1 ... vD`` per row.

    Raises:
        ValueError: If a word is empty or holds whitespace (the format separates fields by spaces).
    """
    bad = next((w for w in words if not w or len(w.split()) != 1 or w != w.strip()), None)
    if bad is not None:
        raise ValueError(f"word {bad!r} cannot be written in the word2vec text format (empty or holds whitespace)")
    array = vectors.detach().to("cpu", torch.float32).numpy()
    if array.shape[0] != len(words):
        raise ValueError(f"{len(words)} words for {array.shape[0]} vectors")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(f"{array.shape[0]} {array.shape[1]}\n")
        for word, row in zip(words, array):
            handle.write(word + " " + " ".join(format(float(x), ".9g") for x in row) + "\n")


def read_word2vec_text(path: Path) -> tuple[list[str], Tensor]:
    """The words and ``[V, D]`` float32 vectors of a word2vec text file.

    Raises:
        ValueError: If the header or a line does not fit the format.
    """
    with open(path, encoding="utf-8") as handle:
        header = handle.readline().split()
        if len(header) != 2 or not all(h.isdigit() for h in header):
            raise ValueError(f"{path}: the first line must be 'V D', got {' '.join(header)!r}")
        v, d = int(header[0]), int(header[1])
        words, rows = [], np.empty((v, d), dtype=np.float32)
        for i, line in enumerate(handle):
            fields = line.rstrip("\n").split(" ")
            if i >= v or len(fields) != d + 1:
                raise ValueError(f"{path}: line {i + 2} is not 'word' and {d} numbers, or there are over {v} lines")
            words.append(fields[0])
            rows[i] = np.asarray(fields[1:], dtype=np.float32)
    if len(words) != v:
        raise ValueError(f"{path}: the header promises {v} words, the file holds {len(words)}")
    return words, torch.from_numpy(rows)


class Word2VecEncoder(Encoder):
    """word2vec's input vectors: ``hidden[b, t]`` is the vector of unit ``units[b, t]``.

    Args:
        words: the token of every id (``[V]``, the tokenizer's vocabulary in id order).
        dim: ``D``, the width of a vector.
        special_ids: ids with no word vector (padding, unknown, separators): padding of the output grid.
        counts: ``[V]`` corpus count of every id (0 for special ids), or None when the tokenizer has none.
    """

    pipeline_tag = "feature-extraction"

    def __init__(self, words: list[str], dim: int, special_ids: list[int], counts: Tensor | None) -> None:
        super().__init__()
        self.words = list(words)
        self.hidden_size = dim
        self.vocab_size = len(words)
        self.embeddings = nn.Embedding(len(words), dim)
        init_vectors(self.embeddings.weight)
        special = torch.zeros(len(words), dtype=torch.bool)
        special[list(special_ids)] = True
        self.register_buffer("special", special, persistent=False)
        self.register_buffer("counts", counts, persistent=False)  # from the tokenizer: not weights

    def unit_counts(self) -> Tensor | None:
        """``[V]`` the corpus count of every unit id (the tokenizer's), or None."""
        return self.counts

    def output_padding_mask(self, batch: Batch) -> Tensor:
        """Padding, and every unit with no word vector (special and unknown tokens), so ``pooled()`` skips them."""
        return batch.padding_mask | self.special[batch.units]

    def encode(self, batch: Batch, mask: Tensor | None = None, all_layers: bool = False) -> EncoderOutput:
        """``[B, T, D]`` word vectors of ``batch.units`` (``[B, T]`` ids).

        Raises:
            ValueError: If ``mask`` is given: a table of word vectors has no mask token.
        """
        if mask is not None:
            raise ValueError("encoder.arch=word2vec is a table of word vectors and has no mask token")
        hidden = self.embeddings(batch.units)
        return EncoderOutput(
            hidden=hidden, padding_mask=self.output_padding_mask(batch), layers=(hidden,) if all_layers else None
        )

    def export(self, out_dir: Path) -> None:
        write_word2vec_text(Path(out_dir) / VECTORS_FILE, self.words, self.embeddings.weight)


def tokenizer_counts(tokenizer: PreTrainedTokenizerBase) -> Tensor | None:
    """``[V]`` float64 corpus counts the tokenizer carries (a word-level one trained by mmssl), or None."""
    counts = tokenizer.init_kwargs.get(COUNTS_KEY)
    if counts is None:
        return None
    if len(counts) != len(tokenizer):
        raise ValueError(f"the tokenizer holds {len(tokenizer)} tokens but counts for {len(counts)}")
    return torch.tensor(counts, dtype=torch.float64)


def _encoder(tokenizer: PreTrainedTokenizerBase, dim: int) -> Word2VecEncoder:
    words = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    return Word2VecEncoder(words, dim, tokenizer.all_special_ids, tokenizer_counts(tokenizer))


def is_word2vec_export(path: Path) -> bool:
    """Whether ``path`` holds word vectors in word2vec's text format (an export of ``encoder.arch=word2vec``)."""
    return (Path(path) / VECTORS_FILE).is_file()


def load_word2vec_encoder(path: Path, tokenizer: PreTrainedTokenizerBase, random_init: bool = False) -> Word2VecEncoder:
    """The vectors of ``path/word2vec.txt`` for ``tokenizer`` (``random_init``: the same table shape, fresh values).

    Raises:
        ValueError: If the file's words are not the tokenizer's vocabulary in id order.
    """
    words, vectors = read_word2vec_text(Path(path) / VECTORS_FILE)
    encoder = _encoder(tokenizer, vectors.shape[1])
    if words != encoder.words:
        first = next(
            (i for i, (a, b) in enumerate(zip(words, encoder.words)) if a != b), min(len(words), len(encoder.words))
        )
        raise ValueError(
            f"{path}/{VECTORS_FILE} does not fit the tokenizer: {len(words)} words vs {len(encoder.words)} tokens, "
            f"first difference at id {first}; use the tokenizer saved with these vectors"
        )
    if not random_init:
        with torch.no_grad():
            encoder.embeddings.weight.copy_(vectors)
    return encoder


def build_word2vec_encoder(dim: int, tokenizer: PreTrainedTokenizerBase, init_from: str | None) -> Word2VecEncoder:
    """A fresh ``V x dim`` table for the tokenizer's vocabulary, or the vectors of a word2vec export ``init_from``."""
    if init_from is None:
        return _encoder(tokenizer, dim)
    if not is_word2vec_export(Path(init_from)):
        raise ValueError(
            f"encoder.init_from={init_from!r} holds no {VECTORS_FILE} (an export of encoder.arch=word2vec)"
        )
    return load_word2vec_encoder(Path(init_from), tokenizer)
