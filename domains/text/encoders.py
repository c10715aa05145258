"""transformers' own BERT, GPT-2 and ELECTRA classes behind mmssl's encoder protocol."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import (
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForPreTraining,
    BertConfig,
    BertForMaskedLM,
    ElectraConfig,
    ElectraForMaskedLM,
    ElectraForPreTraining,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.models.bert.modeling_bert import BertLayer

from domains.text.word2vec import build_word2vec_encoder
from mmssl.encoder import Encoder
from mmssl.types import Batch, EncoderOutput, Extra


@dataclass(frozen=True)
class TextEncoderConfig:
    """A recipe's ``encoder:`` section. Defaults are a 4-layer, 256-wide model for 2 CPU cores;
    BERT-base / GPT-2 small are hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072;
    ``electra`` is ELECTRA's discriminator (``ElectraForPreTraining``), ELECTRA-Small 12 x 256 with 4 heads;
    ``t5`` is ``T5ForConditionalGeneration`` with ``num_layers`` in its encoder and in its decoder, ``dropout`` its
    one dropout rate (:mod:`domains.text.t5`; t5-small: 6 + 6 layers x 512, 8 heads, d_ff 2048);
    ``word2vec`` is a table of ``hidden_size``-wide word vectors over a word-level vocabulary (:mod:`domains.text.word2vec`;
    Mikolov et al. 2013: 300), which reads no other size and ``init_from`` a word2vec export."""

    arch: Literal["bert", "gpt2", "electra", "t5", "word2vec"] = "bert"
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 1024
    max_position_embeddings: int = 512
    dropout: float = 0.1
    attention_dropout: float = 0.1
    init_from: str | None = (
        None  # continue from a transformers checkpoint (folder or Hub name); sizes then come from it
    )
    embedding_size: int | None = None  # electra only: factorised embedding width (ELECTRA-Small 128); None: hidden

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"encoder.hidden_size={self.hidden_size} is not divisible by encoder.num_heads={self.num_heads}"
            )
        if self.embedding_size is not None and (self.arch != "electra" or self.embedding_size < 1):
            raise ValueError(
                f"encoder.embedding_size={self.embedding_size}: a positive width, for encoder.arch=electra only"
            )

    def missing_capability(self, need: str) -> str | None:
        """Why this encoder lacks an objective's need (``mlm_generator``: ELECTRA's), or None."""
        if need == "mlm_generator" and self.arch != "electra":
            return f"encoder.arch={self.arch} has none; set encoder.arch=electra"
        if need == "seq2seq" and self.arch != "t5":
            return f"encoder.arch={self.arch} has no decoder; set encoder.arch=t5"
        if need == "unit_counts" and self.arch != "word2vec":
            return f"encoder.arch={self.arch} carries no corpus counts of its units; set encoder.arch=word2vec"
        return None


def _fresh_electra(cfg: TextEncoderConfig, tokenizer: PreTrainedTokenizerBase) -> ElectraForPreTraining:
    """ELECTRA's discriminator: ``ElectraModel`` with its replaced-token-detection head."""
    embedding_size = cfg.embedding_size or cfg.hidden_size
    return ElectraForPreTraining(ElectraConfig(embedding_size=embedding_size, **_bert_sizes(cfg, tokenizer)))


def _bert_sizes(cfg: TextEncoderConfig, tokenizer: PreTrainedTokenizerBase) -> dict[str, int | float]:
    """The ``BertConfig`` / ``ElectraConfig`` keyword arguments both architectures take from ``encoder:``."""
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "intermediate_size": cfg.intermediate_size,
        "max_position_embeddings": cfg.max_position_embeddings,
        "hidden_dropout_prob": cfg.dropout,
        "attention_probs_dropout_prob": cfg.attention_dropout,
        "pad_token_id": tokenizer.pad_token_id,
        "type_vocab_size": 2,
    }


def generator_config(config: ElectraConfig, width_fraction: float, num_layers: int | None) -> ElectraConfig:
    """ELECTRA's generator config: ``width_fraction`` of the discriminator's heads (at least one, of the same
    size), hidden and feed-forward sizes, ``num_layers`` deep (None: as deep), the same embeddings (Clark et al.
    2020, sec. 3.2 and Table 6: 1/4 for Small, 1/3 for Base and Large).

    Raises:
        ValueError: If the generator would be wider or deeper than the discriminator.
    """
    layers = config.num_hidden_layers if num_layers is None else num_layers
    if not 0 < width_fraction <= 1 or not 0 < layers <= config.num_hidden_layers:
        raise ValueError(
            f"the generator must not be larger than the discriminator: objective.generator_size_fraction="
            f"{width_fraction} must be in (0, 1] and objective.generator_num_layers={layers} at most "
            f"{config.num_hidden_layers}"
        )
    heads = max(1, round(config.num_attention_heads * width_fraction))
    hidden = heads * (config.hidden_size // config.num_attention_heads)
    generator = copy.deepcopy(config)
    generator.hidden_size, generator.num_attention_heads, generator.num_hidden_layers = hidden, heads, layers
    generator.intermediate_size = max(1, round(config.intermediate_size * hidden / config.hidden_size))
    generator.architectures = None
    return generator


def _fresh_model(cfg: TextEncoderConfig, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    if cfg.arch == "electra":
        return _fresh_electra(cfg, tokenizer)
    if cfg.arch == "bert":
        return BertForMaskedLM(BertConfig(**_bert_sizes(cfg, tokenizer)))
    eos = tokenizer.eos_token_id
    return GPT2LMHeadModel(
        GPT2Config(
            vocab_size=len(tokenizer),
            n_positions=cfg.max_position_embeddings,
            n_embd=cfg.hidden_size,
            n_layer=cfg.num_layers,
            n_head=cfg.num_heads,
            n_inner=cfg.intermediate_size,
            resid_pdrop=cfg.dropout,
            embd_pdrop=cfg.dropout,
            attn_pdrop=cfg.attention_dropout,
            bos_token_id=eos,
            eos_token_id=eos,
            pad_token_id=eos,
        )
    )


def check_vocab(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, source: str) -> None:
    """A tokenizer must index the model's embedding table exactly."""
    if model.config.vocab_size != len(tokenizer):
        raise ValueError(
            f"tokenizer/vocabulary mismatch: the tokenizer has {len(tokenizer)} tokens but {source} has "
            f"config.vocab_size={model.config.vocab_size}; use the checkpoint's own tokenizer "
            "(data.tokenizer.name_or_path) or retrain the model"
        )


def attention_core(q: Tensor, k: Tensor, v: Tensor, keep: Tensor | None, dropout_p: float, scale: float) -> Tensor:
    """``scaled_dot_product_attention``, in float32 when it would run in bfloat16 on a CPU.

    torch's CPU flash-attention kernel takes about twice as long in bfloat16 as in float32 for a
    forward + backward pass at the recipe's shapes (32 x 4 heads x 128 x 64: 46-48 ms vs 23-25 ms on
    2 cores; docs/benchmarks.md, text MLM), so under CPU autocast the attention core alone runs in float32
    (more precise, too); the projections around it stay in bfloat16. Elsewhere it runs as given.
    """
    if q.device.type == "cpu" and q.dtype == torch.bfloat16:
        with torch.autocast("cpu", enabled=False):
            return F.scaled_dot_product_attention(
                q.float(), k.float(), v.float(), attn_mask=keep, dropout_p=dropout_p, scale=scale
            )
    return F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=dropout_p, scale=scale)


def bert_layer_at(layer: BertLayer, hidden: Tensor, positions: Tensor | None, padding_mask: Tensor) -> Tensor:
    """One BERT layer (post-LN, self-attention + FFN), evaluated only for the queries at ``positions``.

    Keys and values come from every unit of ``hidden``, so each selected output equals the
    full layer's output at that position. The layer's own modules do all the work; only
    the attention core is called here (:func:`attention_core`), on a ``[B, M]`` grid of
    queries (``M`` = most selected units in a row, short rows padded and dropped).

    Args:
        layer: a ``transformers`` ``BertLayer`` (no cross-attention).
        hidden: ``[B, T, D]`` input of the layer.
        positions: ``[B, T]`` bool, the queries to evaluate; None evaluates every position.
        padding_mask: ``[B, T]`` bool, True at padding (never attended to).

    Returns:
        ``[N, D]`` outputs, rows in row-major order of ``positions``; ``[B, T, D]`` if ``positions`` is None.
    """
    attn = layer.attention.self
    b, t, d = hidden.shape
    heads, head_dim = attn.num_attention_heads, attn.attention_head_size
    if positions is None:
        m, queries_in, valid = t, hidden, None
    else:
        counts = positions.sum(1)
        m = int(counts.max()) if counts.numel() else 0
        # indices of each row's selected positions, in increasing order, first m columns
        index = torch.argsort((~positions).to(torch.uint8), dim=1, stable=True)[:, :m]
        valid = torch.arange(m, device=hidden.device) < counts[:, None]  # [B, M]
        queries_in = hidden.gather(1, index[..., None].expand(b, m, d))  # [B, M, D]

    def split(x: Tensor) -> Tensor:
        return x.view(b, -1, heads, head_dim).transpose(1, 2)

    keep = None if not padding_mask.any() else (~padding_mask)[:, None, None, :]
    context = attention_core(
        split(attn.query(queries_in)),
        split(attn.key(hidden)),
        split(attn.value(hidden)),
        keep,
        attn.dropout.p if attn.training else 0.0,
        attn.scaling,
    )
    context = context.transpose(1, 2).reshape(b, m, d)
    if valid is not None:
        context, queries_in = context[valid], queries_in[valid]  # [N, D]
    attention_output = layer.attention.output(context, queries_in)
    return layer.feed_forward_chunk(attention_output)


class HFTextEncoder(Encoder):
    """Wraps ``BertForMaskedLM``, ``GPT2LMHeadModel`` or ELECTRA's ``ElectraForPreTraining`` (discriminator) /
    ``ElectraForMaskedLM`` (generator); encodes with the base model, exposes the pretraining heads."""

    saves_export_extras = True  # ELECTRA's generator goes into the export's generator/ folder

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
        super().__init__()
        self.model = model
        self.hidden_size = model.config.hidden_size
        self.vocab_size = model.config.vocab_size
        self.mask_token_id = tokenizer.mask_token_id  # None for GPT-2
        self.causal = model.can_generate()  # GPT-2 attends to the past only; BERT to both sides

    @property
    def pipeline_tag(self) -> str:
        """The transformers pipeline the export serves (written into the model card)."""
        if isinstance(self.model, ElectraForPreTraining):
            return "feature-extraction"  # a discriminator: fine-tuned, never asked to fill masks
        return "fill-mask" if self.mask_token_id is not None else "text-generation"

    @property
    def backbone(self) -> nn.Module:
        return self.model.base_model  # BertModel / GPT2Model

    def _inputs(self, batch: Batch, mask: Tensor | None) -> dict[str, Tensor]:
        ids = batch.units
        if mask is not None:
            if self.mask_token_id is None:
                raise ValueError(f"{self.model.config.model_type} has no mask token to encode a masked batch")
            ids = ids.masked_fill(mask, self.mask_token_id)
        kwargs = {"input_ids": ids}
        if batch.padding_mask.any():
            kwargs["attention_mask"] = (~batch.padding_mask).long()
        if "token_type_ids" in batch.extras and self.model.config.model_type == "bert":
            kwargs["token_type_ids"] = batch.extras[Extra.TOKEN_TYPE_IDS]
        return kwargs

    def encode(self, batch: Batch, mask: Tensor | None = None, all_layers: bool = False) -> EncoderOutput:
        out = self.backbone(**self._inputs(batch, mask), output_hidden_states=all_layers)
        layers = tuple(out.hidden_states) if all_layers else None
        return EncoderOutput(hidden=out.last_hidden_state, padding_mask=batch.padding_mask, layers=layers)

    def encode_at(self, batch: Batch, positions: Tensor, mask: Tensor | None = None) -> Tensor:
        """BERT runs its last layer for the queries at ``positions`` only (see :func:`bert_layer_at`).

        With 15% of units read, the last layer costs about 30% of a full one. Every layer is driven
        through :func:`bert_layer_at` (the layer's own modules around :func:`attention_core`), so
        under CPU autocast attention runs in float32, its fast kernel there. GPT-2 (whose objective
        reads every position) and attention implementations other than SDPA/eager (e.g. flash
        attention 2 on GPUs) fall back to the full pass.
        """
        config = self.model.config
        if config.model_type != "bert" or config._attn_implementation not in ("sdpa", "eager"):
            return super().encode_at(batch, positions, mask)
        bert = self.backbone
        inputs = self._inputs(batch, mask)
        hidden = bert.embeddings(input_ids=inputs["input_ids"], token_type_ids=inputs.get("token_type_ids"))
        for layer in bert.encoder.layer[:-1]:
            hidden = bert_layer_at(layer, hidden, None, batch.padding_mask)
        return bert_layer_at(bert.encoder.layer[-1], hidden, positions, batch.padding_mask)

    def prediction_head(self) -> nn.Module | None:
        """The vocabulary projection: BERT's ``cls``, GPT-2's tied ``lm_head``, ELECTRA's generator head; None for
        ELECTRA's discriminator, whose head is :meth:`replaced_token_head`."""
        if isinstance(self.model, ElectraForMaskedLM):
            return nn.Sequential(self.model.generator_predictions, self.model.generator_lm_head)
        if isinstance(self.model, ElectraForPreTraining):
            return None
        return self.model.get_output_embeddings() if self.model.config.model_type != "bert" else self.model.cls

    def replaced_token_head(self) -> nn.Module:
        """ELECTRA's ``discriminator_predictions`` (dense, GELU, dense to one logit per unit)."""
        if not isinstance(self.model, ElectraForPreTraining):
            return super().replaced_token_head()
        return self.model.discriminator_predictions

    def mlm_generator(self, width_fraction: float, num_layers: int | None) -> HFTextEncoder:
        """An ``ElectraForMaskedLM`` sized by :func:`generator_config` whose ``ElectraEmbeddings`` (word, position
        and token-type tables, LayerNorm) are this discriminator's module, and whose output projection is tied to
        the shared word embeddings, as in ELECTRA's code (``untied_generator_embeddings=False``)."""
        if not isinstance(self.model, ElectraForPreTraining):
            return super().mlm_generator(width_fraction, num_layers)
        generator = ElectraForMaskedLM(generator_config(self.model.config, width_fraction, num_layers))
        generator.electra.embeddings = self.model.electra.embeddings
        generator.generator_lm_head.weight = self.model.electra.embeddings.word_embeddings.weight
        return HFTextEncoder(generator, SimpleNamespace(mask_token_id=self.mask_token_id))  # the id is all it reads

    def export(self, out_dir: Path) -> None:
        self.model.save_pretrained(str(out_dir))
        self.save_export_extras(out_dir)


def build_text_encoder(cfg: TextEncoderConfig, tokenizer: PreTrainedTokenizerBase) -> Encoder:
    """A fresh BERT/GPT-2 sized by ``cfg`` and the tokenizer, or ``cfg.init_from`` checked against the tokenizer;
    ``word2vec``: a table of word vectors (:func:`domains.text.word2vec.build_word2vec_encoder`)."""
    if cfg.arch == "word2vec":
        return build_word2vec_encoder(cfg.hidden_size, tokenizer, cfg.init_from)
    if cfg.init_from is None:
        return HFTextEncoder(_fresh_model(cfg, tokenizer), tokenizer)
    auto = {"bert": AutoModelForMaskedLM, "gpt2": AutoModelForCausalLM, "electra": AutoModelForPreTraining}[cfg.arch]
    try:
        model = auto.from_pretrained(cfg.init_from)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot load encoder.init_from={cfg.init_from!r}: {e}") from e
    check_vocab(model, tokenizer, f"encoder.init_from={cfg.init_from!r}")
    return HFTextEncoder(model, tokenizer)
