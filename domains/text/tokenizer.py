"""Tokenizers: load a pretrained one, or train one on the corpus with the ``tokenizers`` library."""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from itertools import chain, islice
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast, T5Tokenizer

log = logging.getLogger(__name__)

BERT_SPECIALS = {
    "pad_token": "[PAD]",
    "unk_token": "[UNK]",
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "mask_token": "[MASK]",
}
GPT_EOS = "<|endoftext|>"


@dataclass(frozen=True)
class TokenizerConfig:
    """Where the tokenizer comes from."""

    name_or_path: str | None = None  # a local folder or Hub name to load; None trains one on the corpus
    vocab_size: int = 8192  # when training
    min_frequency: int = 2  # when training: drop rarer merges/pieces
    lowercase: bool = True  # when training a WordPiece (BERT) vocabulary, as in bert-base-uncased
    train_texts: int = 100_000  # when training: the first N texts of the corpus are used

    def __post_init__(self) -> None:
        if self.vocab_size < 64:
            raise ValueError("data.tokenizer.vocab_size must be >= 64")


def canonical_ids(tok: Tokenizer, extra_specials: Collection[str] = ()) -> Tokenizer:
    """Renumber a freshly trained vocabulary deterministically.

    The ``tokenizers`` trainers number the initial alphabet in hash-map order, so two trainings
    on the same text give different ids (and so different models and losses). Special tokens
    keep their ids and single characters (and ``##c`` continuations) are sorted. WordPiece
    tokenises by greedy longest match, so only its token *set* matters and learned pieces are
    sorted too (tied merges otherwise swap ids); BPE merges keep their training order.
    ``extra_specials`` were passed to the trainer as special tokens only to fix their ids: they lose their
    added-token status and are numbered as ordinary vocabulary.
    """
    data = json.loads(tok.to_str())
    vocab: dict[str, int] = data["model"]["vocab"]
    extra = set(extra_specials)
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] not in extra]
    specials = {t["content"] for t in data["added_tokens"]}

    def is_alphabet(token: str) -> bool:
        return len(token[2:] if token.startswith("##") else token) == 1

    fixed = sorted((t for t in vocab if t in specials), key=vocab.__getitem__)
    alphabet = sorted(t for t in vocab if t not in specials and is_alphabet(t))
    by_string = data["model"]["type"] == "WordPiece"
    learned = sorted(
        (t for t in vocab if t not in specials and not is_alphabet(t)), key=None if by_string else vocab.__getitem__
    )
    data["model"]["vocab"] = {t: i for i, t in enumerate(fixed + alphabet + learned)}
    return Tokenizer.from_str(json.dumps(data))


def continuation_pieces(tok: Tokenizer, texts: list[str]) -> list[str]:
    """The ``##c`` pieces a WordPiece trainer makes from ``texts`` (one per character that follows another inside
    a pre-tokenized word), sorted: a training pass with no merges (``vocab_size=1``) leaves exactly its alphabet.

    It counts the words a second time, once per run: 0.7 s of 1.5 s on the Austen corpus, 3.7 s of 10 s on
    100,000 GCIDE entries (2 cores). Listing the characters in Python instead is slower and has to re-implement
    the pre-tokenizer's notion of a word."""
    probe = Tokenizer.from_str(tok.to_str())
    probe.train_from_iterator(
        texts, trainer=trainers.WordPieceTrainer(vocab_size=1, special_tokens=["[UNK]"], show_progress=False)
    )
    return sorted(t for t in probe.get_vocab() if t.startswith("##"))


def _bert_tokenizer(texts: Iterable[str], cfg: TokenizerConfig, max_length: int) -> PreTrainedTokenizerFast:
    """WordPiece with BERT's normaliser and pre-tokeniser (Devlin et al. 2019).

    Training is made deterministic. The ``tokenizers`` trainer creates the ``##c`` continuation pieces in
    hash-map order, so their ids, and with them the choice between merges of equal count, change from process
    to process (huggingface/tokenizers#1794: on the embedded Austen corpus about one training in six gave a
    vocabulary differing in two pieces). Registering the pieces up front, in sorted order, as extra entries of
    the trainer's special tokens fixes their ids; they are ordinary vocabulary afterwards, not added tokens.
    """
    texts = list(texts)
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=cfg.lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = list(BERT_SPECIALS.values())
    pieces = continuation_pieces(tok, texts)
    trainer = trainers.WordPieceTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=specials + pieces,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok = canonical_ids(tok, extra_specials=pieces)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    tok.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=max_length, **BERT_SPECIALS)


def _gpt_tokenizer(texts: Iterable[str], cfg: TokenizerConfig, max_length: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE as in GPT-2 (Radford et al. 2019): no unknown tokens, case preserved."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=[GPT_EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=canonical_ids(tok),
        model_max_length=max_length,
        bos_token=GPT_EOS,
        eos_token=GPT_EOS,
        unk_token=GPT_EOS,
        pad_token=GPT_EOS,
    )


T5_SPECIALS = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2 in T5's vocabulary
T5_EXTRA_IDS = 100  # sentinel tokens <extra_id_0> ... <extra_id_99>, as T5 (Raffel et al. 2020)


def canonical_unigram(trained: list[list]) -> list[tuple[str, float]]:
    """A trained unigram vocabulary (``[piece, log-probability]`` rows) less ``T5_SPECIALS``, made deterministic.

    From process to process ``tokenizers``' ``UnigramTrainer`` gives the same pieces, in another order and with scores
    differing in their last bits (hash-map order of float sums), and appends the characters it must keep but did not
    score in hash-map order, each ``1e-4`` below the one before (below every multi-character piece). Here scores are
    rounded to ``1e-6`` (far below any gap a segmentation turns on), those characters re-scored in sorted order with
    the same steps, and the pieces ordered by score, then text.
    """
    learned = [(str(p), round(float(s), 6)) for p, s in trained if p not in T5_SPECIALS]
    floor = min((s for p, s in learned if len(p) > 1), default=0.0)
    appended = sorted(p for p, s in learned if len(p) == 1 and s < floor)
    if appended:
        top = max(s for p, s in learned if p in set(appended))
        rescored = {p: round(top - 1e-4 * k, 6) for k, p in enumerate(appended)}
        learned = [(p, rescored.get(p, s)) for p, s in learned]
    return sorted(learned, key=lambda ps: (-ps[1], ps[0]))


def _t5_tokenizer(texts: Iterable[str], cfg: TokenizerConfig, max_length: int) -> PreTrainedTokenizerBase:
    """A unigram vocabulary (Kudo 2018) as T5's SentencePiece one (Raffel et al. 2020, sec. 2.2), in transformers'
    ``T5Tokenizer``: words split on whitespace and marked with ``▁``, case kept; ``<pad>``, ``</s>``, ``<unk>`` first,
    then ``cfg.vocab_size`` pieces in all, then the sentinels ``<extra_id_99>`` ... ``<extra_id_0>`` (T5's order: the
    last id is ``<extra_id_0>``); ``</s>`` closes every encoded text.

    The trainer segments words as ``T5Tokenizer`` does (whitespace split, then ``▁`` before each word), so the pieces
    it scores are the ones the tokenizer will cut; :func:`canonical_unigram` makes its output deterministic.
    """
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]
    )
    trainer = trainers.UnigramTrainer(
        vocab_size=cfg.vocab_size, special_tokens=list(T5_SPECIALS), unk_token="<unk>", show_progress=False
    )
    tok.train_from_iterator(texts, trainer=trainer)
    pieces = [(p, 0.0) for p in T5_SPECIALS] + canonical_unigram(json.loads(tok.to_str())["model"]["vocab"])
    pieces += [(f"<extra_id_{k}>", 0.0) for k in reversed(range(T5_EXTRA_IDS))]
    return T5Tokenizer(vocab=pieces, extra_ids=T5_EXTRA_IDS, model_max_length=max_length)


WORD_ARCHS = ("word2vec",)  # encoders that learn one vector per whole word: a word-level vocabulary with counts
WORD_SPECIALS = {"pad_token": "[PAD]", "unk_token": "[UNK]", "eos_token": "</s>"}  # </s>: word2vec.c's line end
WORD_COUNTS_KEY = "unit_counts"  # init kwarg of a word-level tokenizer: the corpus count of every id


def _word_tokenizer(texts: Iterable[str], cfg: TokenizerConfig, max_length: int) -> PreTrainedTokenizerFast:
    """A word-level vocabulary (``tokenizers``' ``WordLevel``) with the corpus count of every word, for word2vec.

    Words are BERT's pre-tokens (split at whitespace and punctuation, lowercased with ``cfg.lowercase``). Every
    word of ``texts`` is counted, the ones seen at least ``cfg.min_frequency`` times (word2vec.c's ``min_count``)
    are kept, at most ``cfg.vocab_size`` in all, numbered by falling count, then alphabetically, after the specials
    :data:`WORD_SPECIALS` (word2vec.c also sorts its vocabulary by count). Rarer words become ``[UNK]``. The counts
    (0 for the specials) travel with the tokenizer as its ``unit_counts`` init kwarg, so ``save_pretrained`` writes
    them into ``tokenizer_config.json`` and a resumed run or an export reads the same ones back.
    """
    texts = list(texts)
    specials = list(WORD_SPECIALS.values())
    counts = word_counts(_word_pipeline(Tokenizer(models.WordLevel(unk_token=specials[1])), cfg), texts)
    kept = sorted(((w, c) for w, c in counts.items() if c >= cfg.min_frequency), key=lambda wc: (-wc[1], wc[0]))
    kept = kept[: max(cfg.vocab_size - len(specials), 0)]
    vocab = {w: i for i, w in enumerate(specials + [w for w, _ in kept])}
    tok = _word_pipeline(Tokenizer(models.WordLevel(vocab=vocab, unk_token=specials[1])), cfg)
    tok.add_special_tokens(specials)
    unit_counts = [0] * len(specials) + [c for _, c in kept]
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, model_max_length=max_length, **WORD_SPECIALS, **{WORD_COUNTS_KEY: unit_counts}
    )


def _word_pipeline(tok: Tokenizer, cfg: TokenizerConfig) -> Tokenizer:
    """BERT's normaliser (lowercasing with ``cfg.lowercase``) and pre-tokeniser (whitespace and punctuation)."""
    tok.normalizer = normalizers.BertNormalizer(lowercase=cfg.lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return tok


def word_counts(tok: Tokenizer, texts: list[str], chunk: int = 10_000) -> dict[str, int]:
    """How often each word of ``texts`` occurs, words as ``tok``'s pre-tokenizer cuts them.

    A ``WordLevelTrainer`` pass with no minimum count collects every word; the texts are then encoded (in Rust,
    in chunks) and the ids counted: the trainer keeps its counts to itself.
    """
    specials = list(WORD_SPECIALS.values())
    trainer = trainers.WordLevelTrainer(
        vocab_size=2**31 - 1, min_frequency=0, special_tokens=specials, show_progress=False
    )
    tok.train_from_iterator(texts, trainer=trainer)
    counts = np.zeros(tok.get_vocab_size(), dtype=np.int64)
    for start in range(0, len(texts), chunk):
        encoded = tok.encode_batch(texts[start : start + chunk], add_special_tokens=False)
        ids = np.fromiter(chain.from_iterable(e.ids for e in encoded), dtype=np.int64)
        counts += np.bincount(ids, minlength=len(counts))
    return {w: int(counts[i]) for w, i in tok.get_vocab().items() if w not in specials}


def tokenizer_model_type(tokenizer: PreTrainedTokenizerBase) -> str:
    """The ``tokenizers`` model of a fast tokenizer (``WordLevel``, ``WordPiece``, ``BPE``, ``Unigram``), else its class."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return type(tokenizer).__name__
    return json.loads(backend.to_str())["model"]["type"]


WORDPIECE_ARCHS = ("bert", "electra")  # encoders that read [CLS] ... [SEP] blocks of a WordPiece vocabulary


def train_tokenizer(texts: Iterable[str], cfg: TokenizerConfig, arch: str, max_length: int) -> PreTrainedTokenizerFast:
    """Train a tokenizer suited to ``arch`` (``bert``, ``electra``: WordPiece, ``gpt2``: byte-level BPE)."""
    texts = islice(texts, cfg.train_texts)
    if arch in WORD_ARCHS:  # whole words and their corpus counts (word2vec)
        log.info("counting the words of up to %d texts (at most %d kept)", cfg.train_texts, cfg.vocab_size)
        return _word_tokenizer(texts, cfg, max_length)
    if arch == "t5":  # unigram pieces, T5's specials and sentinels
        log.info("training a unigram tokenizer (vocabulary of %d) on up to %d texts", cfg.vocab_size, cfg.train_texts)
        return _t5_tokenizer(texts, cfg, max_length)
    wordpiece = arch in WORDPIECE_ARCHS
    kind = "WordPiece" if wordpiece else "byte-level BPE"
    log.info("training a %s tokenizer (vocabulary of %d) on up to %d texts", kind, cfg.vocab_size, cfg.train_texts)
    tokenizer = _bert_tokenizer(texts, cfg, max_length) if wordpiece else _gpt_tokenizer(texts, cfg, max_length)
    log.info("tokenizer trained: %d entries", len(tokenizer))
    return tokenizer


def load_tokenizer(name_or_path: str | Path) -> PreTrainedTokenizerBase:
    """Load a tokenizer from a folder or the Hub, with an error naming what failed."""
    try:
        return AutoTokenizer.from_pretrained(str(name_or_path))
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot load tokenizer {str(name_or_path)!r} (data.tokenizer.name_or_path): {e}") from e


def check_tokenizer(tokenizer: PreTrainedTokenizerBase, arch: str, source: str) -> None:
    """The special tokens each architecture needs must exist; word2vec needs a word-level vocabulary with counts."""
    if arch in WORD_ARCHS:
        check_word_tokenizer(tokenizer, arch, source)
        return
    needed = ("mask_token", "cls_token", "sep_token", "pad_token") if arch in WORDPIECE_ARCHS else ("eos_token",)
    missing = [name for name in needed if getattr(tokenizer, name, None) is None]
    if missing:
        raise ValueError(f"tokenizer {source} has no {', '.join(missing)}, which a {arch} encoder needs")


def check_word_tokenizer(tokenizer: PreTrainedTokenizerBase, arch: str, source: str) -> None:
    """A word-level vocabulary with a pad and an unknown token and the corpus count of every word.

    Raises:
        ValueError: Naming ``data.tokenizer.name_or_path`` when the tokenizer is subword or carries no counts.
    """
    kind = tokenizer_model_type(tokenizer)
    if kind != "WordLevel":
        raise ValueError(
            f"data.tokenizer.name_or_path: tokenizer {source} is a {kind} (subword) vocabulary, but encoder.arch={arch} "
            "learns one vector per whole word and needs a word-level one: leave data.tokenizer.name_or_path out to "
            "train one on the corpus"
        )
    missing = [name for name in ("pad_token", "unk_token") if getattr(tokenizer, name, None) is None]
    if missing:
        raise ValueError(f"data.tokenizer.name_or_path: tokenizer {source} has no {', '.join(missing)}")
    if WORD_COUNTS_KEY not in tokenizer.init_kwargs:
        raise ValueError(
            f"data.tokenizer.name_or_path: tokenizer {source} carries no corpus counts ({WORD_COUNTS_KEY}), which "
            f"encoder.arch={arch} draws its negatives and subsampling from: leave data.tokenizer.name_or_path out to "
            "train one, or point it at the tokenizer of a word2vec run or export"
        )
