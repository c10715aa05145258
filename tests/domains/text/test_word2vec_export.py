"""word2vec in the text domain: the word-level tokenizer and its corpus counts, the export in word2vec's text format
(read back by an independent reader written here, as gensim's ``KeyedVectors.load_word2vec_format`` reads it), the
export loaded by ``mmssl evaluate``'s path, the bag-of-vectors pooling, and the tokenizers refused."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from domains.text.domain import TextDomain
from domains.text.tokenizer import TokenizerConfig, check_tokenizer, load_tokenizer, train_tokenizer
from domains.text.word2vec import VECTORS_FILE, build_word2vec_encoder, read_word2vec_text, write_word2vec_text
from mmssl.export import write_export
from mmssl.objectives.base import SSLModel
from mmssl.objectives.word2vec import Word2Vec, Word2VecConfig
from mmssl.recipe import load_recipe
from mmssl.types import Batch

TEXTS = [
    "The cat sat on the mat.",
    "The dog sat on the log!",
    "A cat, a dog and a cow.",
    "The cow sat; the cat ran.",
    "Zebras are rare.",
]


def word_tokenizer(texts: list[str] = TEXTS, **settings) -> PreTrainedTokenizerFast:
    cfg = TokenizerConfig(**{"vocab_size": 64, "min_frequency": 2, **settings})
    return train_tokenizer(iter(texts), cfg, "word2vec", max_length=64)


def test_word_tokenizer_keeps_frequent_words_by_count_with_their_counts(tmp_path: Path) -> None:
    counted = Counter(w for text in TEXTS for w in re.findall(r"\w+|[^\w\s]", text.lower()))
    kept = sorted(((w, c) for w, c in counted.items() if c >= 2), key=lambda wc: (-wc[1], wc[0]))
    tok = word_tokenizer()
    assert tok.convert_ids_to_tokens(list(range(len(tok)))) == ["[PAD]", "[UNK]", "</s>", *[w for w, _ in kept]]
    assert tok.init_kwargs["unit_counts"] == [0, 0, 0, *[c for _, c in kept]]
    assert tok("Zebras sat")["input_ids"] == [tok.unk_token_id, tok.convert_tokens_to_ids("sat")]
    tok.save_pretrained(str(tmp_path))
    again = load_tokenizer(tmp_path)
    assert again.get_vocab() == tok.get_vocab() and again.init_kwargs["unit_counts"] == tok.init_kwargs["unit_counts"]


def test_word_tokenizer_caps_the_vocabulary_and_breaks_ties_alphabetically() -> None:
    texts = [" ".join(f"w{i}" for i in range(100))] * 2 + ["w7 w42"]
    tok = word_tokenizer(texts, vocab_size=64)
    words = tok.convert_ids_to_tokens(list(range(len(tok))))
    assert len(words) == 64 and words[3:5] == ["w42", "w7"]
    assert words[5:] == sorted(f"w{i}" for i in range(100) if i not in (7, 42))[:59]


def trained_model(tok: PreTrainedTokenizerFast, dim: int = 6) -> SSLModel:
    torch.manual_seed(0)
    encoder = build_word2vec_encoder(dim, tok, None)
    with torch.no_grad():
        encoder.embeddings.weight.normal_()  # values far from the init's, with many digits
    return SSLModel(encoder, Word2Vec(Word2VecConfig(), encoder))


def read_independently(path: Path) -> tuple[int, int, list[str], np.ndarray]:
    """word2vec's text format as gensim reads it: ``count size``, then per line a word and ``size`` numbers."""
    lines = path.read_text(encoding="utf-8").splitlines()
    count, size = (int(x) for x in lines[0].split())
    rows = [line.rstrip().split(" ") for line in lines[1:]]
    assert len(rows) == count and all(len(r) == size + 1 for r in rows)
    return count, size, [r[0] for r in rows], np.array([[float(x) for x in r[1:]] for r in rows], dtype=np.float32)


def test_export_round_trip_in_word2vec_text_format(tmp_path: Path) -> None:
    tok = word_tokenizer()
    model = trained_model(tok)
    export = write_export(model, tok, load_recipe("word2vec"), tmp_path / "export", None, 0, {})
    count, size, words, vectors = read_independently(export / VECTORS_FILE)
    assert (count, size) == (len(tok), 6)
    assert words == tok.convert_ids_to_tokens(list(range(len(tok))))  # row i is token id i
    assert np.array_equal(vectors, model.encoder.embeddings.weight.detach().numpy())  # 9 digits: float32 exact
    assert (export / "tokenizer_config.json").is_file() and (export / "mmssl.json").is_file()

    loaded = TextDomain().load_encoder(export)  # what mmssl evaluate loads
    assert torch.equal(loaded.embeddings.weight, model.encoder.embeddings.weight)
    assert torch.equal(loaded.unit_counts(), model.encoder.unit_counts())
    fresh = TextDomain().load_encoder(export, random_init=True)  # --baseline's random vectors
    assert fresh.embeddings.weight.shape == loaded.embeddings.weight.shape
    assert not torch.allclose(fresh.embeddings.weight, loaded.embeddings.weight)


def test_pooled_features_are_the_mean_of_the_known_words_vectors() -> None:
    tok = word_tokenizer()
    encoder = trained_model(tok).encoder
    ids = tok(["the cat zebras", "the"], padding=True, return_tensors="pt")
    batch = Batch(units=ids["input_ids"], padding_mask=ids["attention_mask"] == 0)  # zebras is [UNK]
    pooled = encoder.encode(batch).pooled()
    table = encoder.embeddings.weight
    the, cat = tok.convert_tokens_to_ids(["the", "cat"])
    torch.testing.assert_close(pooled, torch.stack([(table[the] + table[cat]) / 2, table[the]]))


def test_reader_refuses_files_that_break_the_format(tmp_path: Path) -> None:
    path = tmp_path / "v.txt"
    write_word2vec_text(path, ["a", "b"], torch.ones(2, 3))
    assert read_word2vec_text(path)[0] == ["a", "b"]
    path.write_text("2 3\na 1 2 3\n")
    with pytest.raises(ValueError, match="promises 2 words"):
        read_word2vec_text(path)
    with pytest.raises(ValueError, match="whitespace"):
        write_word2vec_text(path, ["a b", "c"], torch.ones(2, 3))


def test_vectors_of_another_vocabulary_are_refused(tmp_path: Path) -> None:
    tok = word_tokenizer()
    export = write_export(trained_model(tok), tok, load_recipe("word2vec"), tmp_path, None, 0, {})
    text = (export / VECTORS_FILE).read_text().replace("\nthe ", "\nthy ", 1)
    (export / VECTORS_FILE).write_text(text)
    with pytest.raises(ValueError, match="does not fit the tokenizer.*first difference at id 3"):
        TextDomain().load_encoder(export)


def test_subword_and_countless_tokenizers_are_refused(tmp_path: Path) -> None:
    wordpiece = train_tokenizer(iter(TEXTS * 4), TokenizerConfig(vocab_size=64, min_frequency=1), "bert", 64)
    with pytest.raises(ValueError, match="data.tokenizer.name_or_path: .*WordPiece \\(subword\\).*word-level"):
        check_tokenizer(wordpiece, "word2vec", "bert-like")
    plain = Tokenizer(models.WordLevel({"[PAD]": 0, "[UNK]": 1, "cat": 2}, unk_token="[UNK]"))
    plain.pre_tokenizer = pre_tokenizers.Whitespace()
    countless = PreTrainedTokenizerFast(tokenizer_object=plain, pad_token="[PAD]", unk_token="[UNK]")
    with pytest.raises(ValueError, match="carries no corpus counts"):
        check_tokenizer(countless, "word2vec", "plain")
    check_tokenizer(word_tokenizer(), "word2vec", "trained")  # the word-level tokenizer with counts passes

    # through the pipeline: a run given the subword tokenizer stops before it builds a model
    wordpiece.save_pretrained(str(tmp_path / "wordpiece"))
    recipe = load_recipe("word2vec", [f"data.tokenizer.name_or_path={tmp_path / 'wordpiece'}", "data.max_texts=20"])
    with pytest.raises(ValueError, match="WordPiece \\(subword\\)"):
        TextDomain().pretrain_data(recipe, tmp_path / "run", 0, 1)
