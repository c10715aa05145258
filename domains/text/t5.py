"""T5 (Raffel et al. 2020) in the text domain: transformers' ``T5ForConditionalGeneration`` behind mmssl's encoder protocol.

The whole encoder-decoder is the run's encoder (``encoder.arch=t5``): :meth:`T5TextEncoder.encode` runs its encoder
stack, so probes, ``mmssl evaluate`` and every encoder-only objective read the T5 encoder's hidden states, and
:meth:`T5TextEncoder.decode` runs its decoder and tied LM head for span corruption
(:mod:`mmssl.objectives.t5_span`). The export is the full ``T5ForConditionalGeneration`` (one shared embedding table,
as T5 ties it), which ``AutoModelForSeq2SeqLM`` loads (and ``generate`` runs: transformers 5 removed the
``text2text-generation`` pipeline), and whose encoder ``T5EncoderModel`` loads alone for features.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import Tensor
from transformers import (
    AutoConfig,
    AutoModelForSeq2SeqLM,
    PreTrainedTokenizerBase,
    T5Config,
    T5ForConditionalGeneration,
)

from domains.text.encoders import TextEncoderConfig, check_vocab
from mmssl.encoder import Encoder
from mmssl.types import Batch, EncoderOutput

SENTINEL = "<extra_id_{}>"  # T5's sentinel tokens, <extra_id_0> marking the first dropped span


def sentinel_ids(tokenizer: PreTrainedTokenizerBase) -> tuple[int, ...]:
    """Ids of ``<extra_id_0>``, ``<extra_id_1>``, ... in the tokenizer, as far as they run without a gap."""
    vocab = tokenizer.get_vocab()
    ids: list[int] = []
    while SENTINEL.format(len(ids)) in vocab:
        ids.append(vocab[SENTINEL.format(len(ids))])
    return tuple(ids)


def t5_config(cfg: TextEncoderConfig, tokenizer: PreTrainedTokenizerBase) -> T5Config:
    """A T5 (v1.0: ReLU feed-forward, tied and scaled output embeddings) of ``cfg``'s sizes, as deep in its decoder
    as in its encoder; positions are T5's relative attention buckets (32 buckets up to distance 128)."""
    return T5Config(
        vocab_size=len(tokenizer),
        d_model=cfg.hidden_size,
        d_kv=cfg.hidden_size // cfg.num_heads,
        d_ff=cfg.intermediate_size,
        num_layers=cfg.num_layers,
        num_decoder_layers=cfg.num_layers,
        num_heads=cfg.num_heads,
        dropout_rate=cfg.dropout,
        feed_forward_proj="relu",
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,  # T5 starts decoding from <pad>
    )


class T5TextEncoder(Encoder):
    """Wraps ``T5ForConditionalGeneration``: encodes with its encoder stack, decodes (teacher forced) with the rest.

    Args:
        model: the encoder-decoder.
        sentinels: ids of ``<extra_id_0>``, ``<extra_id_1>``, ... (:func:`sentinel_ids`).
    """

    pipeline_tag = "text2text-generation"

    def __init__(self, model: T5ForConditionalGeneration, sentinels: Sequence[int]) -> None:
        super().__init__()
        self.model = model
        self.hidden_size = model.config.d_model
        self.vocab_size = model.config.vocab_size
        self.sentinel_ids = tuple(int(i) for i in sentinels)
        self.eos_token_id = model.config.eos_token_id

    def encode(self, batch: Batch, mask: Tensor | None = None, all_layers: bool = False) -> EncoderOutput:
        """The T5 encoder stack's ``[B, T, D]`` output (after its final layer norm); T5 has no mask token.

        Raises:
            ValueError: If ``mask`` is given.
        """
        if mask is not None:
            raise ValueError(
                "t5 has no mask token to encode a masked batch; T5 drops spans instead (t5_span_corruption)"
            )
        attention = (~batch.padding_mask).long()  # all ones for packed rows: the same as none, and no host sync
        out = self.model.encoder(input_ids=batch.units, attention_mask=attention, output_hidden_states=all_layers)
        layers = tuple(out.hidden_states) if all_layers else None
        return EncoderOutput(hidden=out.last_hidden_state, padding_mask=batch.padding_mask, layers=layers)

    def decode(self, memory: EncoderOutput, targets: Tensor) -> Tensor:
        """``[B, S, V]`` logits of the decoder and tied LM head, fed ``targets`` shifted right behind ``<pad>``
        (``T5ForConditionalGeneration.forward`` given the encoder's output, so the scaling of the tied head is its own)."""
        out = self.model(
            encoder_outputs=(memory.hidden,),
            attention_mask=(~memory.padding_mask).long(),
            decoder_input_ids=self.model.prepare_decoder_input_ids_from_labels(targets),
            use_cache=False,
        )
        return out.logits

    def export(self, out_dir: Path) -> None:
        self.model.save_pretrained(str(out_dir))


def build_t5_encoder(cfg: TextEncoderConfig, tokenizer: PreTrainedTokenizerBase) -> T5TextEncoder:
    """A fresh T5 sized by ``cfg`` and the tokenizer, or ``cfg.init_from`` (e.g. ``google-t5/t5-small``).

    Raises:
        ValueError: If the tokenizer has no sentinel tokens, or the checkpoint cannot be loaded or does not fit it.
    """
    sentinels = sentinel_ids(tokenizer)
    if not sentinels or tokenizer.pad_token_id is None:
        raise ValueError(
            f"encoder.arch=t5 needs a tokenizer with a pad token and the sentinel tokens {SENTINEL.format(0)}, "
            f"{SENTINEL.format(1)}, ...; {type(tokenizer).__name__} has none: leave data.tokenizer.name_or_path out "
            "to train one, or point it at a T5 tokenizer"
        )
    if cfg.init_from is None:
        return T5TextEncoder(T5ForConditionalGeneration(t5_config(cfg, tokenizer)), sentinels)
    try:
        model = AutoModelForSeq2SeqLM.from_pretrained(cfg.init_from)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot load encoder.init_from={cfg.init_from!r}: {e}") from e
    if model.config.vocab_size < len(tokenizer):  # Google's T5 checkpoints pad their table to a multiple of 128
        check_vocab(model, tokenizer, f"encoder.init_from={cfg.init_from!r}")
    return T5TextEncoder(model, sentinels)


def load_t5_encoder(export_dir: Path, tokenizer: PreTrainedTokenizerBase, random_init: bool) -> T5TextEncoder:
    """An exported ``T5ForConditionalGeneration`` (``random_init``: its config with fresh weights)."""
    if random_init:
        model = AutoModelForSeq2SeqLM.from_config(AutoConfig.from_pretrained(str(export_dir)))
    else:
        model = AutoModelForSeq2SeqLM.from_pretrained(str(export_dir))
    if model.config.vocab_size < len(tokenizer):
        check_vocab(model, tokenizer, str(export_dir))
    return T5TextEncoder(model, sentinel_ids(tokenizer))
