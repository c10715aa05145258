"""The audio domain: clips -> waveform samples or fbank units -> wav2vec 2.0 / data2vec / conformer encoders, and KWS.

Data flow: a source (``mmssl data prepare speech|kws``, a folder of audio files, a Hub
dataset) -> :class:`domains.audio.io.AudioClips` -> :class:`domains.audio.data.BucketedClips`
-> :class:`domains.audio.data.AudioCollator` (``Batch``) -> optional SpecAugment -> objective.
The processor saved beside runs and exports is transformers' own feature extractor for the
stream (``Wav2Vec2FeatureExtractor`` or ``SeamlessM4TFeatureExtractor``), so an export is
used without mmssl exactly as it was trained.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor, nn
from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoModelForAudioClassification,
    FeatureExtractionMixin,
    SeamlessM4TFeatureExtractor,
    Wav2Vec2FeatureExtractor,
)

from domains.audio.baselines import mfcc_baseline
from domains.audio.builders import load_split
from domains.audio.data import (
    AudioCollator,
    AudioDataConfig,
    BucketedClips,
    ClipRows,
    MFCCKMeans,
    SpecAugmentTransform,
    max_samples,
)
from domains.audio.encoders import AudioEncoderConfig, ConformerEncoder, build_audio_encoder, load_audio_encoder
from domains.audio.features import spec_augment
from domains.audio.io import AudioClips, load_folder, load_hf_audio
from domains.audio.views import AudioViewTransform
from mmssl.domain import ClassifierModule, PretrainData, RawFeatures, TaskData, needs_overrides, save_classifier_head
from mmssl.encoder import Encoder
from mmssl.registry import DOMAINS, TASKS, TaskSpec, registered_tasks
from mmssl.types import Batch

PROCESSOR_DIR = "processor"
KMEANS_FILE = "kmeans_centroids.npy"
TASK_MAX_SECONDS = 30.0  # task clips are cut to their first 30 s


def load_clips(cfg: AudioDataConfig) -> AudioClips:
    """The configured pretraining clips (corrupt and too-short files are logged, skipped and counted)."""
    min_samples = int(cfg.min_seconds * cfg.sampling_rate)
    if cfg.source == "prepared":
        from mmssl.datasets import prepare

        split_dir = prepare(cfg.name) / cfg.split
        if not split_dir.is_dir():
            raise FileNotFoundError(
                f"data.split: prepared dataset {cfg.name!r} has no split {cfg.split!r} ({split_dir})"
            )
        clips = load_split(split_dir, cfg.sampling_rate)
        keep = [i for i, w in enumerate(clips.waves) if len(w) >= min_samples]
        clips = clips.subset(keep[: cfg.max_clips] if cfg.max_clips else keep)
    elif cfg.source == "folder":
        clips = load_folder(cfg.path, cfg.sampling_rate, min_samples, limit=cfg.max_clips)
    else:
        clips = load_hf_audio(
            cfg.name, cfg.split, cfg.sampling_rate, cfg.audio_column, None, min_samples, cfg.max_clips
        )
    if not len(clips):
        raise ValueError(f"data: no clip of at least data.min_seconds={cfg.min_seconds} s in {cfg.source} {cfg.name!r}")
    return clips


def make_processor(cfg: AudioDataConfig) -> FeatureExtractionMixin:
    """transformers' feature extractor computing the recipe's stream from raw audio."""
    if cfg.stream == "waveform":
        return Wav2Vec2FeatureExtractor(
            feature_size=1,
            sampling_rate=cfg.sampling_rate,
            padding_value=0.0,
            do_normalize=True,
            return_attention_mask=True,
        )
    return SeamlessM4TFeatureExtractor(
        feature_size=cfg.num_mel_bins,
        num_mel_bins=cfg.num_mel_bins,
        sampling_rate=cfg.sampling_rate,
        stride=cfg.frame_stride,
    )


def collator(
    processor: FeatureExtractionMixin, with_labels: bool, kmeans: MFCCKMeans | None = None, keep_waves: bool = False
) -> AudioCollator:
    """The collator that computes what ``processor`` computes (and keeps the raw clips for views when asked)."""
    if isinstance(processor, SeamlessM4TFeatureExtractor):
        return AudioCollator(
            "fbank", processor.sampling_rate, processor.num_mel_bins, processor.stride, with_labels, kmeans, keep_waves
        )
    return AudioCollator("waveform", processor.sampling_rate, with_labels=with_labels)


def _kmeans(cfg: AudioDataConfig, clips: AudioClips, run_dir: Path, seed: int) -> MFCCKMeans | None:
    if cfg.targets == "none":
        return None
    path = Path(run_dir) / KMEANS_FILE
    if path.is_file():  # resumed run, or a non-main process after the main one fitted it
        return MFCCKMeans(np.load(path), cfg.sampling_rate)
    kmeans = MFCCKMeans.fit(clips, cfg.num_clusters, cfg.kmeans_clips, seed)
    np.save(path, kmeans.centroids.numpy())
    return kmeans


# ---------------------------------------------------------------------------- downstream
class AudioClassifier(ClassifierModule):
    """``AutoModelForAudioClassification`` on waveforms (wav2vec2 and data2vec-audio exports), or a conformer encoder with a
    mean-pooled linear head on fbank units (SpecAugment while training)."""

    def __init__(
        self,
        model: nn.Module,
        head: nn.Linear | None = None,
        mel_bins: int | None = None,
        label_names: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.head = head
        self.mel_bins = mel_bins  # fbank bins per stacked frame, so a SpecAugment band covers the same bins in each
        self.label_names = list(label_names or [])  # the head's classes (transformers models keep them in the config)

    def logits(self, batch: Batch) -> Tensor:
        if self.head is None:
            attention = (~batch.padding_mask).long() if batch.padding_mask.any() else None
            return self.model(input_values=batch.units, attention_mask=attention).logits
        if self.training:
            batch = batch.replace(
                units=spec_augment(
                    batch.units, batch.padding_mask, time_width=5, freq_width=8, features_per_frame=self.mel_bins
                )
            )
        return self.head(self.model.encode(batch).pooled())

    def export(self, out_dir: Path) -> None:
        if self.head is None:
            self.model.save_pretrained(str(out_dir))
            return
        self.model.export(out_dir)
        save_classifier_head(self.head, self.label_names, out_dir)


def _kws_task() -> tuple[AudioClips, AudioClips]:
    from mmssl.datasets import prepare

    root = prepare("kws")
    return load_split(root / "train"), load_split(root / "test")


TASKS.add("kws", TaskSpec(_kws_task, domain="audio"))  # 10 keywords, test voices never seen in training


class AudioDomain:
    """Audio as waveform samples or fbank units (registered as ``audio``).

    ``unit_name`` is ``units``: samples for the waveform stream, fbank units for the other.
    """

    name = "audio"
    unit_name = "units"
    unit_kind = "features"
    data_config = AudioDataConfig
    encoder_config = AudioEncoderConfig

    def smoke_overrides(self, data: AudioDataConfig) -> tuple[str, ...]:
        """``--set`` strings that make an audio recipe a seconds-long run (the recipe smoke test, ``tests/recipes``):
        1 s crops of the synthetic clips of the test fixture ``audio_folder`` (``{audio_folder}`` is its path),
        k-means on 20 clips, every architecture 32 wide at the recipe's depth (narrow conv stacks, small codebooks)."""
        return (
            "data.source=folder",
            "data.path={audio_folder}",
            "data.max_seconds=1.0",
            "data.bucket_batches=2",
            "data.kmeans_clips=20",
            "encoder.hidden_size=32",
            "encoder.num_heads=2",
            "encoder.intermediate_size=64",
            "encoder.conv_dim=[16,16,16,16,16,16,16]",
            "encoder.num_conv_pos_embeddings=16",
            "encoder.num_conv_pos_embedding_groups=2",
            "encoder.num_conv_pos_layers=2",
            "encoder.conv_pos_kernel_size=5",
            "encoder.num_codevectors_per_group=8",
            "encoder.codevector_dim=16",
            "encoder.proj_codevector_dim=16",
            "encoder.conv_depthwise_kernel_size=3",
            "train.batch_size=4",
            "train.warmup_steps=2",
            "train.log_every=1",
        )

    def contract_overrides(self, needs: tuple[str, ...]) -> tuple[str, ...] | None:
        """Fbank units read by a conformer; ``causal``: its causal variant, ``targets``: MFCC k-means ids per
        unit, ``quantizer_head``: wav2vec 2.0 on the waveform (whose conv frames are then the feature units), ``views``: two augmented
        fbank views of each clip (``data.views=2``)."""
        given = {
            "causal": ("encoder.causal=true",),
            "targets": ("data.targets=mfcc-kmeans",),
            "quantizer_head": ("data.stream=waveform", "encoder.arch=wav2vec2"),
            "views": ("data.views=2",),  # Speech SimCLR's augmentations (domains/audio/views.py)
        }
        return needs_overrides(needs, given, base=("data.stream=fbank", "encoder.arch=conformer"))

    def derived_objective_settings(self, data: AudioDataConfig, objective: str) -> dict[str, tuple[Any, str]]:
        """HuBERT predicts the cluster ids of the data's offline targets (``objective.num_classes``)."""
        if objective != "hubert" or data.targets != "mfcc-kmeans":
            return {}
        return {"num_classes": (data.num_clusters, f"data.num_clusters={data.num_clusters}")}

    def check_recipe(self, recipe: Any) -> None:
        """The encoder reads the stream the data computes: waveform samples, or stacked fbank frames of its width."""
        data, enc = recipe.data, recipe.encoder
        wants = "fbank" if enc.arch == "conformer" else "waveform"
        if data.stream != wants:
            raise ValueError(f"encoder.arch={enc.arch} reads data.stream={wants}, got data.stream={data.stream}")
        if enc.arch == "conformer" and enc.input_dim != data.num_mel_bins * data.frame_stride:
            raise ValueError(
                f"encoder.input_dim={enc.input_dim} must be data.num_mel_bins * data.frame_stride = "
                f"{data.num_mel_bins * data.frame_stride}"
            )

    def pretrain_data(self, recipe: Any, run_dir: Path, rank: int, world_size: int) -> PretrainData:
        data = recipe.data
        clips = load_clips(data)
        processor = make_processor(data)
        if rank == 0:
            processor.save_pretrained(str(Path(run_dir) / PROCESSOR_DIR))
        kmeans = _kmeans(data, clips, run_dir, recipe.train.seed)
        global_batch = recipe.train.batch_size * world_size
        if data.bucket_batches:
            dataset: Any = BucketedClips(clips, global_batch, max_samples(data), recipe.train.seed, data.bucket_batches)
        else:
            dataset = ClipRows(clips, max_samples(data))
        summary = {
            "data_source": data.source,
            "data_name": data.path or data.name,
            "clips": len(clips),
            "hours": round(clips.seconds / 3600, 3),
            "skipped_clips": len(clips.skipped),
            "stream": data.stream,
            "sampling_rate": data.sampling_rate,
        }
        transform = SpecAugmentTransform(data) if data.spec_augment else None
        if data.views:
            summary["views"] = data.views
            transform = AudioViewTransform(
                data.augment, data.views, data.sampling_rate, data.num_mel_bins, data.frame_stride
            )
        keep_waves = data.views > 0
        return PretrainData(dataset, collator(processor, False, kmeans, keep_waves), processor, transform, summary)

    def load_processor(self, path: Path) -> FeatureExtractionMixin:
        path = Path(path)
        return AutoFeatureExtractor.from_pretrained(
            str(path / PROCESSOR_DIR if (path / PROCESSOR_DIR).is_dir() else path)
        )

    def build_encoder(self, encoder_config: AudioEncoderConfig, processor: FeatureExtractionMixin) -> Encoder:
        return build_audio_encoder(encoder_config)

    # ------------------------------------------------------------------ downstream
    def task_names(self) -> tuple[str, ...]:
        """The ``--task`` names an audio export takes: the audio tasks, then ``hub`` and ``folder`` (with task.path)."""
        return (*registered_tasks(self.name), "hub", "folder")

    def task_data(self, task: Any) -> TaskData:
        if task.name in ("hub", "folder"):
            if not task.path:
                raise ValueError(f"task.path is required with --task {task.name}")
            if task.name == "hub":
                load = lambda split: load_hf_audio(
                    task.path,
                    split,
                    16000,
                    task.input_column or "audio",  # noqa: E731
                    task.label_column,
                )
            else:  # task.path/train/<label>/*.wav and task.path/test/<label>/*.wav
                load = lambda split: load_folder(Path(task.path) / split, 16000, labelled=True, key="task.path")  # noqa: E731
            train, test = load("train"), load(task.test_split or "test")
        else:
            train, test = TASKS.get(task.name)()
        if train.labels is None or test.labels is None:
            raise ValueError(f"task {task.name}: the clips have no labels")
        if task.max_train_samples:
            train = train.subset(range(min(task.max_train_samples, len(train))))
        names = train.label_names or [str(i) for i in range(max(train.labels) + 1)]
        limit = int(TASK_MAX_SECONDS * train.sampling_rate)
        skipped = len(train.skipped) + len(test.skipped)  # undecodable or too short, each logged by the loader
        return TaskData(
            ClipRows(train, limit), ClipRows(test, limit), list(names), {"unreadable_clip": skipped} if skipped else {}
        )

    def task_labels(self, rows: ClipRows) -> np.ndarray:
        """The labels the rows' :class:`AudioClips` hold (no clip is cropped)."""
        if rows.clips.labels is None:
            raise ValueError("the clips have no labels")
        return np.asarray(rows.clips.labels, dtype=np.int64)

    def task_collate(self, processor: FeatureExtractionMixin, task: Any) -> Callable[[list[Any]], Batch]:
        return collator(processor, with_labels=True)

    def classifier(self, export_dir: Path, label_names: list[str], init: str) -> AudioClassifier:
        config = AutoConfig.from_pretrained(str(export_dir))
        if config.model_type in ("wav2vec2", "data2vec-audio"):
            config = AutoConfig.from_pretrained(
                str(export_dir),
                id2label=dict(enumerate(label_names)),
                label2id={name: i for i, name in enumerate(label_names)},
            )
            model = (
                AutoModelForAudioClassification.from_config(config)
                if init == "random"
                else AutoModelForAudioClassification.from_pretrained(str(export_dir), config=config)
            )
            model.freeze_feature_encoder()  # standard wav2vec 2.0 fine-tuning: the conv encoder stays fixed
            return AudioClassifier(model)
        encoder = load_audio_encoder(export_dir, random_init=init == "random")
        if not isinstance(encoder, ConformerEncoder):
            raise ValueError(f"{export_dir} holds no audio classifier backbone")
        mel_bins = getattr(self.load_processor(export_dir), "num_mel_bins", None)
        return AudioClassifier(encoder, nn.Linear(encoder.hidden_size, len(label_names)), mel_bins, label_names)

    def load_encoder(self, export_dir: Path, random_init: bool = False) -> Encoder:
        return load_audio_encoder(export_dir, random_init)

    def raw_features(self, data: TaskData, task: Any) -> RawFeatures:
        """The ``mfcc-statistics`` baseline: mean and std of each clip's 39-dim MFCCs
        (:mod:`domains.audio.baselines`)."""
        return mfcc_baseline(data.train, data.test)


DOMAINS.add("audio", AudioDomain())
