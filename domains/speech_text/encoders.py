"""The speech-text two-tower encoder: the audio domain's encoder and a transformers ``BertModel``.

Both towers are built by their own domains (:func:`domains.audio.encoders.build_audio_encoder`,
:func:`domains.text.encoders.build_text_encoder`) from the recipe's ``encoder.audio`` and
``encoder.text`` sections. The text tower is the bare ``BertModel`` (no MLM head: CLIP reads
pooled outputs only). An export holds ``audio/`` (the audio domain's format: ``AutoModel`` +
``AutoFeatureExtractor``), ``text/`` (``BertModel`` + tokenizer: ``AutoModel`` /
``AutoTokenizer``) and the objective's ``projection_heads.safetensors``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from transformers import BertModel, PreTrainedTokenizerBase

from domains.audio.encoders import AudioEncoderConfig, build_audio_encoder, load_audio_encoder
from domains.speech_text.data import AUDIO_DIR, TEXT_DIR
from domains.text.encoders import HFTextEncoder, TextEncoderConfig, build_text_encoder, check_vocab
from domains.text.tokenizer import load_tokenizer
from mmssl.encoder import Encoder, TwoTowerEncoder

TOWER_CARD = """# {name} tower of a speech-text CLIP model pretrained with mmssl

Load without mmssl: `{load}`. Its pooled output (the mean of `last_hidden_state` over
non-padding positions) times `{head}` of `../projection_heads.safetensors` (a `[P, D]` matrix,
`y = W x`) is the joint embedding; L2-normalise both towers' embeddings and compare them by dot
product to retrieve speech from text and text from speech.
"""


def _conformer() -> AudioEncoderConfig:
    return AudioEncoderConfig(arch="conformer", hidden_size=192, intermediate_size=768)


@dataclass(frozen=True)
class SpeechTextEncoderConfig:
    """A recipe's ``encoder:`` section: one sub-section per tower, each its own domain's config."""

    audio: AudioEncoderConfig = field(default_factory=_conformer)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)

    def __post_init__(self) -> None:
        if self.text.arch != "bert":
            raise ValueError(f"encoder.text.arch must be bert (a bidirectional text tower), got {self.text.arch}")


class SpeechTextEncoder(TwoTowerEncoder):
    """Speech units (main tower, ``batch``) and text tokens (paired tower, ``batch.pair``).

    Args:
        audio: the audio domain's encoder (conformer on fbank units, or wav2vec 2.0 on samples).
        text: a :class:`HFTextEncoder` around a ``BertModel``.
    """

    tower_names = ("speech", "text")
    pipeline_tag = "feature-extraction"

    def __init__(self, audio: Encoder, text: HFTextEncoder) -> None:
        super().__init__(audio, text)

    @property
    def audio(self) -> Encoder:
        return self.main

    @property
    def text(self) -> HFTextEncoder:
        return self.paired

    def export_towers(self, out_dir: Path) -> None:
        """``audio/`` and ``text/`` in their libraries' formats, each with a short model card."""
        self.audio.export(out_dir / AUDIO_DIR)
        self.text.export(out_dir / TEXT_DIR)
        loads = {
            AUDIO_DIR: ("speech", "AutoModel.from_pretrained('audio')", "main_projection.weight"),
            TEXT_DIR: ("text", "AutoModel.from_pretrained('text')", "paired_projection.weight"),
        }
        for folder, (name, load, head) in loads.items():
            (out_dir / folder / "README.md").write_text(TOWER_CARD.format(name=name.capitalize(), load=load, head=head))


def bert_tower(cfg: TextEncoderConfig, tokenizer: PreTrainedTokenizerBase) -> HFTextEncoder:
    """The text domain's BERT (fresh, or ``cfg.init_from``) without its MLM head."""
    return HFTextEncoder(build_text_encoder(cfg, tokenizer).model.base_model, tokenizer)


def build_speech_text_encoder(cfg: SpeechTextEncoderConfig, tokenizer: PreTrainedTokenizerBase) -> SpeechTextEncoder:
    """A freshly initialised two-tower encoder sized by the recipe and the tokenizer."""
    return SpeechTextEncoder(build_audio_encoder(cfg.audio), bert_tower(cfg.text, tokenizer))


def load_speech_text_encoder(export_dir: Path, random_init: bool = False) -> SpeechTextEncoder:
    """The exported towers (``random_init``: same configs, fresh weights).

    Raises:
        FileNotFoundError: If ``export_dir`` has no ``audio/`` or ``text/`` tower.
    """
    export_dir = Path(export_dir)
    for folder in (AUDIO_DIR, TEXT_DIR):
        if not (export_dir / folder / "config.json").is_file():
            raise FileNotFoundError(f"{export_dir} has no {folder}/config.json: not a speech-text export")
    tokenizer = load_tokenizer(export_dir / TEXT_DIR)
    text_dir = str(export_dir / TEXT_DIR)
    if random_init:
        bert = BertModel(BertModel.config_class.from_pretrained(text_dir), add_pooling_layer=False)
    else:
        bert = BertModel.from_pretrained(text_dir, add_pooling_layer=False)
    check_vocab(bert, tokenizer, text_dir)
    return SpeechTextEncoder(load_audio_encoder(export_dir / AUDIO_DIR, random_init), HFTextEncoder(bert, tokenizer))
