"""The speech_text domain: paired speech and text for cross-modal (CLIP-style) pretraining.

It composes the audio and text domains: the audio domain's bucketing, collator, feature
extractor and encoders for the speech, the text domain's tokenizer training and BERT for the
sentences. A batch is the speech :class:`Batch` with the text :class:`Batch` in
``Batch.pair``; the encoder is a :class:`mmssl.encoder.TwoTowerEncoder`.
Downstream, the ``speech-text`` task is retrieval between held-out pairs
(``mmssl evaluate RUN --protocol retrieval --task speech-text``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from domains.audio.data import BucketedClips, SpecAugmentTransform
from domains.audio.domain import collator as audio_collator
from domains.audio.domain import make_processor
from domains.speech_text.data import (
    PairedRows,
    PairedStream,
    SpeechTextCollator,
    SpeechTextDataConfig,
    SpeechTextPairs,
    SpeechTextProcessor,
    load_pairs,
)
from domains.speech_text.encoders import (
    SpeechTextEncoder,
    SpeechTextEncoderConfig,
    build_speech_text_encoder,
    load_speech_text_encoder,
)
from domains.text.tokenizer import check_tokenizer, load_tokenizer, train_tokenizer
from mmssl.domain import PretrainData, RawFeatures, TaskData, needs_overrides
from mmssl.registry import DOMAINS, TASKS, TaskSpec, registered_tasks
from mmssl.types import Batch

PROCESSOR_DIR = "processor"  # in a run directory; an export holds text/ and audio/ at its root
TASK_MAX_TOKENS = 64


def _speech_text_task() -> tuple[SpeechTextPairs, SpeechTextPairs]:
    cfg = SpeechTextDataConfig(max_seconds=30.0)  # every pair; evaluation never crops
    return load_pairs(cfg, "train"), load_pairs(cfg, "test")


# retrieval: held-out sentences read by held-out voices
TASKS.add("speech-text", TaskSpec(_speech_text_task, domain="speech_text"))


class SpeechTextDomain:
    """Paired speech and text (registered as ``speech_text``); ``unit_name`` counts speech units."""

    name = "speech_text"
    unit_name = "units"
    unit_kind = "features"  # the speech; its sentences are in Batch.pair
    data_config = SpeechTextDataConfig
    encoder_config = SpeechTextEncoderConfig

    def smoke_overrides(self, data: SpeechTextDataConfig) -> tuple[str, ...]:
        """``--set`` strings that make a speech-text recipe a seconds-long run (the recipe smoke test,
        ``tests/recipes``): the 16 synthetic pairs of the test fixture ``pairs_folder`` (``{pairs_folder}`` is its
        path), a 100-piece vocabulary, both towers 32 wide at the recipe's depth."""
        return (
            "data.source=folder",
            "data.path={pairs_folder}",
            "data.max_seconds=2.0",
            "data.bucket_batches=1",
            "data.spec_augment=false",
            "data.tokenizer.vocab_size=100",
            "data.max_text_tokens=16",
            "encoder.audio.hidden_size=32",
            "encoder.audio.num_heads=2",
            "encoder.audio.intermediate_size=64",
            "encoder.audio.conv_depthwise_kernel_size=3",
            "encoder.text.hidden_size=32",
            "encoder.text.num_heads=2",
            "encoder.text.intermediate_size=64",
            "train.batch_size=4",
            "train.warmup_steps=2",
            "train.log_every=1",
        )

    def contract_overrides(self, needs: tuple[str, ...]) -> tuple[str, ...] | None:
        """Fbank units of speech with the sentence each clip reads in ``Batch.pair``, for objectives that need the
        ``pair`` (the audio domain gives speech alone); None for any other need, or without ``pair``."""
        if "pair" not in needs:
            return None
        return needs_overrides(needs, {"pair": ()}, base=("data.stream=fbank", "encoder.audio.arch=conformer"))

    def _processor(self, recipe: Any, pairs: SpeechTextPairs, run_dir: Path) -> SpeechTextProcessor:
        data, text = recipe.data, recipe.encoder.text
        saved = Path(run_dir) / PROCESSOR_DIR
        if (saved / "text" / "tokenizer_config.json").is_file():  # resumed run, or a non-main process
            return SpeechTextProcessor.from_pretrained(saved)
        if data.tokenizer.name_or_path:
            tokenizer, source = load_tokenizer(data.tokenizer.name_or_path), data.tokenizer.name_or_path
        else:  # the training sentences only: held-out sentences stay unseen
            tokenizer, source = (
                train_tokenizer(iter(pairs.texts), data.tokenizer, "bert", text.max_position_embeddings),
                "trained",
            )
        check_tokenizer(tokenizer, "bert", source)
        processor = SpeechTextProcessor(tokenizer, make_processor(data.audio()))
        processor.save_pretrained(saved)
        return processor

    def derived_objective_settings(self, data: Any, objective: str) -> dict[str, tuple[Any, str]]:
        """None: no objective setting follows from this domain's data."""
        return {}

    def check_recipe(self, recipe: Any) -> None:
        """The speech tower reads the stream the data computes (as in the audio domain)."""
        data, enc = recipe.data, recipe.encoder
        wants = "waveform" if enc.audio.arch == "wav2vec2" else "fbank"
        if data.stream != wants:
            raise ValueError(
                f"encoder.audio.arch={enc.audio.arch} reads data.stream={wants}, got data.stream={data.stream}"
            )
        if enc.audio.arch == "conformer" and enc.audio.input_dim != data.num_mel_bins * data.frame_stride:
            raise ValueError(
                f"encoder.audio.input_dim={enc.audio.input_dim} must be data.num_mel_bins * "
                f"data.frame_stride = {data.num_mel_bins * data.frame_stride}"
            )

    def pretrain_data(self, recipe: Any, run_dir: Path, rank: int, world_size: int) -> PretrainData:
        data = recipe.data
        pairs = load_pairs(data, data.split)
        processor = self._processor(recipe, pairs, run_dir)
        audio = data.audio()
        max_samples = int(data.max_seconds * data.sampling_rate)  # kept pairs are never longer: no crop
        global_batch = recipe.train.batch_size * world_size
        stream = BucketedClips(pairs.clips, global_batch, max_samples, recipe.train.seed, data.bucket_batches)
        collate = SpeechTextCollator(
            audio_collator(processor.feature_extractor, False), processor.tokenizer, data.max_text_tokens
        )
        summary = {
            "data_source": data.source,
            "data_name": data.path or data.name,
            "pairs": len(pairs),
            "hours": round(pairs.clips.seconds / 3600, 3),
            "dropped_pairs": pairs.dropped,
            "stream": data.stream,
            "sampling_rate": data.sampling_rate,
            "vocab_size": len(processor.tokenizer),
        }
        transform = SpecAugmentTransform(audio) if data.spec_augment else None
        return PretrainData(PairedStream(stream, pairs.texts), collate, processor, transform, summary)

    def load_processor(self, path: Path) -> SpeechTextProcessor:
        path = Path(path)  # a run keeps it in processor/, an export at its root
        return SpeechTextProcessor.from_pretrained(path / PROCESSOR_DIR if (path / PROCESSOR_DIR).is_dir() else path)

    def build_encoder(
        self, encoder_config: SpeechTextEncoderConfig, processor: SpeechTextProcessor
    ) -> SpeechTextEncoder:
        return build_speech_text_encoder(encoder_config, processor.tokenizer)

    # ------------------------------------------------------------------ downstream
    def task_names(self) -> tuple[str, ...]:
        """The ``--task`` names a speech-text export takes: the paired tasks (with task.path, a folder of pairs
        in the builder's format is read under such a name)."""
        return registered_tasks(self.name)

    def task_data(self, task: Any) -> TaskData:
        """Paired rows of ``speech-text`` (or of the folder ``task.path``); ``label_names`` is empty (no classes)."""
        if task.path:  # a folder in the builder's format: train/ and test/ (or task.test_split)
            cfg = SpeechTextDataConfig(
                source="folder", path=task.path, text_column=task.input_column or "text", max_seconds=30.0
            )
            train, test = load_pairs(cfg, "train"), load_pairs(cfg, task.test_split or "test")
        else:
            train, test = TASKS.get(task.name)()
        if not isinstance(test, SpeechTextPairs):
            raise ValueError(f"task {task.name!r} is not a paired speech-text task (try --task speech-text)")
        if task.max_train_samples:
            train.texts = train.texts[: task.max_train_samples]
        return TaskData(PairedRows(train), PairedRows(test), [])

    def task_labels(self, rows: PairedRows) -> Any:
        """Refused with a ``ValueError``: paired rows have no classes, so no label budget applies."""
        raise ValueError(
            "task.labels_per_class / task.label_fraction: the speech_text tasks pair speech with text and "
            "have no classes to budget; evaluate them with --protocol retrieval without a label budget"
        )

    def task_collate(self, processor: SpeechTextProcessor, task: Any) -> Callable[[list[Any]], Batch]:
        return SpeechTextCollator(
            audio_collator(processor.feature_extractor, False),
            processor.tokenizer,
            min(task.max_length, TASK_MAX_TOKENS),
        )

    def classifier(self, export_dir: Path, label_names: list[str], init: str) -> Any:
        raise ValueError(
            "a speech-text export is evaluated with --protocol retrieval; to fine-tune one tower, pass "
            f"{Path(export_dir) / 'text'} with --domain text, or {Path(export_dir) / 'audio'} with --domain audio"
        )

    def load_encoder(self, export_dir: Path, random_init: bool = False) -> SpeechTextEncoder:
        return load_speech_text_encoder(export_dir, random_init)

    def raw_features(self, data: TaskData, task: Any) -> RawFeatures:
        """Refused with a ``ValueError``: the paired tasks have no classes for a probe (retrieval compares
        against random init instead)."""
        raise ValueError(
            f"the speech_text domain has no raw-feature baseline (init=raw): task {task.name!r} pairs "
            "speech with text and has no labels to probe; evaluate it with --protocol retrieval, "
            "against --set init=random"
        )


DOMAINS.add("speech_text", SpeechTextDomain())
