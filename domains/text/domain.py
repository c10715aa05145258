"""The text domain: corpora -> tokenizer -> packed blocks -> BERT / GPT-2, and text tasks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow.compute as pc
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForPreTraining,
    PreTrainedTokenizerBase,
)

from domains.text.baselines import tfidf_baseline
from domains.text.collate import BlockCollator, SentenceOrderTransform, classification_collate
from domains.text.corpus import TextDataConfig, iter_texts, load_texts, pack_blocks
from domains.text.encoders import HFTextEncoder, TextEncoderConfig, build_text_encoder, check_vocab
from domains.text.t5 import build_t5_encoder, load_t5_encoder
from domains.text.tasks import USER_TASKS, sequence_classifier, text_task_data
from domains.text.tokenizer import check_tokenizer, load_tokenizer, train_tokenizer
from domains.text.word2vec import is_word2vec_export, load_word2vec_encoder
from mmssl.domain import PretrainData, RawFeatures, TaskData, needs_overrides
from mmssl.encoder import Encoder
from mmssl.registry import DOMAINS, registered_tasks

TOKENIZER_DIR = "tokenizer"


class TextDomain:
    """Units are tokens; encoders are transformers' ``BertForMaskedLM`` and ``GPT2LMHeadModel``."""

    name = "text"
    unit_name = "tokens"
    unit_kind = "ids"
    data_config = TextDataConfig
    encoder_config = TextEncoderConfig

    def smoke_overrides(self, data: TextDataConfig) -> tuple[str, ...]:
        """``--set`` strings that make a text recipe a seconds-long run (the recipe smoke test, ``tests/recipes``):
        400 paragraphs of its corpus in 32-token blocks, a 300-piece vocabulary, a 32-wide encoder of the
        recipe's depth (so settings that count layers, such as data2vec's ``top_k_layers``, stay valid)."""
        return (
            "data.max_texts=400",
            "data.block_size=32",
            "data.tokenizer.vocab_size=300",
            "encoder.hidden_size=32",
            "encoder.num_heads=2",
            "encoder.intermediate_size=64",
            "encoder.max_position_embeddings=64",
            "train.batch_size=8",
            "train.warmup_steps=2",
            "train.log_every=1",
        )

    def contract_overrides(self, needs: tuple[str, ...]) -> tuple[str, ...] | None:
        """Token ids read by BERT (it has the mask token); ``causal``: GPT-2; ``mlm_generator``: ELECTRA. No views,
        labels or pairs."""
        given = {"causal": ("encoder.arch=gpt2",), "mlm_generator": ("encoder.arch=electra",)}
        given["seq2seq"] = ("encoder.arch=t5",)  # T5's encoder-decoder and sentinel tokens
        given["unit_counts"] = ("encoder.arch=word2vec",)  # word vectors; the word-level tokenizer counts the corpus
        return needs_overrides(needs, given, base=("encoder.arch=bert",))

    # ------------------------------------------------------------------ pretraining
    def _tokenizer(
        self, data: TextDataConfig, arch: str, texts: Any, run_dir: Path, max_length: int
    ) -> PreTrainedTokenizerBase:
        saved = Path(run_dir) / TOKENIZER_DIR
        if (saved / "tokenizer_config.json").is_file():  # resumed run, or a non-main process
            tokenizer, source = load_tokenizer(saved), str(saved)
        elif data.tokenizer.name_or_path:
            tokenizer, source = load_tokenizer(data.tokenizer.name_or_path), data.tokenizer.name_or_path
        else:
            tokenizer, source = (
                train_tokenizer(iter_texts(texts, data.text_column), data.tokenizer, arch, max_length),
                "trained",
            )
        check_tokenizer(tokenizer, arch, source)
        if not saved.exists():
            tokenizer.save_pretrained(str(saved))
        return tokenizer

    def derived_objective_settings(self, data: Any, objective: str) -> dict[str, tuple[Any, str]]:
        """None: no objective setting follows from this domain's data."""
        return {}

    def check_recipe(self, recipe: Any) -> None:
        """A block must fit the encoder's positions; sentence pairs need BERT's segment embeddings."""
        data, enc = recipe.data, recipe.encoder
        if data.block_size > enc.max_position_embeddings:
            raise ValueError(
                f"data.block_size={data.block_size} exceeds encoder.max_position_embeddings={enc.max_position_embeddings}"
            )
        if data.sentence_pairs and enc.arch != "bert":
            raise ValueError(
                "data.sentence_pairs needs encoder.arch=bert (sentence order prediction is a BERT/ALBERT task)"
            )

    def pretrain_data(self, recipe: Any, run_dir: Path, rank: int, world_size: int) -> PretrainData:
        data, enc = recipe.data, recipe.encoder
        texts = load_texts(data)
        tokenizer = self._tokenizer(data, enc.arch, texts, run_dir, enc.max_position_embeddings)
        n_special = 0 if enc.arch in ("gpt2", "t5", "word2vec") else 3 if data.sentence_pairs else 2
        length = data.block_size - n_special
        # an objective that shortens its rows (T5's span corruption: 568 raw tokens -> 512-token inputs) packs
        # raw rows of the length it turns into data.block_size units
        raw_length = getattr(recipe.objective, "raw_length", None)
        if raw_length is not None:
            length = raw_length(data.block_size)
        blocks = pack_blocks(texts, tokenizer, data.text_column, length, data.packing)
        summary: dict[str, Any] = {
            "data_source": data.source,
            "data_name": data.name if data.source != "files" else ",".join(data.paths),
            "block_size": data.block_size,
            "packing": data.packing,
            "vocab_size": len(tokenizer),
        }
        if data.task_texts:
            summary["task_texts"] = f"{data.task_texts} (training split texts, no labels)"
        if raw_length is not None:
            summary["raw_block_size"] = f"{length} (objective.name={recipe.objective.name})"
        if isinstance(blocks, datasets.Dataset):
            if len(blocks) == 0:
                corpus = f"files {', '.join(data.paths)}" if data.source == "files" else repr(data.name)
                need = (
                    f"{data.block_size} tokens (data.block_size)"
                    if raw_length is None
                    else f"{length} tokens (the raw length objective.name={recipe.objective.name} turns into "
                    f"data.block_size={data.block_size} input tokens)"
                )
                raise ValueError(f"data: the {data.source} corpus {corpus} holds less than one block of {need}")
            n_tokens = (
                len(blocks) * (length + n_special)
                if data.packing == "concat"
                else pc.sum(pc.list_value_length(blocks.data.column("input_ids"))).as_py() + n_special * len(blocks)
            )
            summary.update(blocks=len(blocks), tokens=n_tokens)
        transform = (
            SentenceOrderTransform(tokenizer.cls_token_id, tokenizer.sep_token_id) if data.sentence_pairs else None
        )
        return PretrainData(
            blocks, BlockCollator(tokenizer, enc.arch, data.sentence_pairs), tokenizer, transform, summary
        )

    def load_processor(self, path: Path) -> PreTrainedTokenizerBase:
        path = Path(path)  # a run keeps its tokenizer in a subfolder, an export at its root
        return load_tokenizer(path / TOKENIZER_DIR if (path / TOKENIZER_DIR).is_dir() else path)

    def build_encoder(self, encoder_config: TextEncoderConfig, processor: PreTrainedTokenizerBase) -> Encoder:
        if encoder_config.arch == "t5":  # an encoder-decoder: its own module (domains/text/t5.py)
            return build_t5_encoder(encoder_config, processor)
        return build_text_encoder(encoder_config, processor)

    # ------------------------------------------------------------------ downstream
    def task_names(self) -> tuple[str, ...]:
        """The ``--task`` names a text export takes: the text tasks, then ``file`` and ``hub`` (the user's data)."""
        return (*registered_tasks(self.name), *USER_TASKS)

    def task_data(self, task: Any) -> TaskData:
        return text_task_data(task)

    def task_labels(self, rows: datasets.Dataset) -> np.ndarray:
        """The ``label`` column of the rows (no text is read)."""
        return np.asarray(rows.select_columns("label")[:]["label"], dtype=np.int64)

    def task_collate(self, processor: PreTrainedTokenizerBase, task: Any):
        return classification_collate(processor, task.max_length)

    def classifier(self, export_dir: Path, label_names: list[str], init: str):
        return sequence_classifier(export_dir, label_names, init)

    def load_encoder(self, export_dir: Path, random_init: bool = False) -> Encoder:
        tokenizer = load_tokenizer(export_dir)
        if is_word2vec_export(export_dir):  # word vectors in word2vec's text format, no transformers model
            return load_word2vec_encoder(export_dir, tokenizer, random_init)
        config = AutoConfig.from_pretrained(str(export_dir))
        if config.model_type == "t5":  # T5ForConditionalGeneration: features from its encoder stack
            return load_t5_encoder(export_dir, tokenizer, random_init)
        arch = (config.architectures or [""])[0]
        auto = AutoModelForCausalLM if arch.endswith(("LMHeadModel", "ForCausalLM")) else AutoModelForMaskedLM
        if arch == "ElectraForPreTraining":  # ELECTRA's discriminator with its replaced-token head
            auto = AutoModelForPreTraining
        model = auto.from_config(config) if random_init else auto.from_pretrained(str(export_dir))
        check_vocab(model, tokenizer, str(export_dir))
        return HFTextEncoder(model, tokenizer)

    def raw_features(self, data: TaskData, task: Any) -> RawFeatures:
        """The ``tf-idf`` baseline: TF-IDF vectors over the training texts' most frequent words
        (:mod:`domains.text.baselines`)."""
        return tfidf_baseline(data.train, data.test)


DOMAINS.add("text", TextDomain())
