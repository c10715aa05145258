"""The encoder protocol: one ``encode`` for every backbone, HF model or PyG GNN, and its optional capabilities.

Every capability an objective may need beyond ``encode`` is declared here with a default, and
objectives call it directly (never ``hasattr``): a default either gives the behaviour that is
right for any encoder (:meth:`Encoder.encode_at`, :meth:`Encoder.output_padding_mask`), says
"none" (:attr:`Encoder.causal`, :meth:`Encoder.prediction_head`, :meth:`Encoder.unit_decoder`),
or raises :class:`CapabilityError` naming the objective that needs the capability
(:meth:`Encoder.encode_visible`, :meth:`Encoder.encode_with_features`, :meth:`Encoder.quantizer_head`).
Domain encoders override what they have.

:class:`TwoTowerEncoder` puts two encoders of paired inputs (speech and the text it reads)
behind one :class:`Encoder`, for cross-modal objectives (CLIP).
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Protocol

from torch import Tensor, nn

from mmssl.types import Batch, EncoderOutput


class CapabilityError(NotImplementedError, ValueError):
    """An objective needs an optional encoder capability this encoder does not have.

    A ``NotImplementedError`` (the encoder does not implement it) and a ``ValueError`` (the
    recipe paired an objective with an encoder that does not fit), so ``mmssl`` reports it in
    one sentence.
    """


class Encoder(nn.Module, abc.ABC):
    """Adapts a backbone (a transformers model, a PyG GNN, ...) to the objective layer.

    Subclasses wrap the library model as an attribute so that its weights export in the
    library's own format (``save_pretrained``) and load back with no mmssl code.

    Attributes:
        hidden_size: ``D`` of :attr:`EncoderOutput.hidden`.
        vocab_size: number of discrete unit ids for token encoders, else None.
        mask_token_id: id of the mask token for token encoders, else None.
        unit_dim: ``C`` of ``[B, T, C]`` feature units (e.g. ``channels * patch_size**2`` for
            image patches), for objectives that reconstruct units; None for id units.
        feature_dim: ``C`` of the local features :meth:`encode_with_features` returns (CPC's ``z``), or None.
        causal: True when the output at unit ``t`` depends on units ``<= t`` only (a
            unidirectional encoder); APC needs one. Default False.
        pipeline_tag: the Hub task of the export (``feature-extraction``, ``graph-ml``, ...)
            for its model card, or None.
        sentinel_ids: ids of a sequence-to-sequence model's sentinel tokens, ``sentinel_ids[k]`` =
            ``<extra_id_k>`` (T5's span corruption marks its ``k``-th dropped span with it); empty for others.
        eos_token_id: the end-of-sequence id that closes a sequence-to-sequence input and target, or None.
    """

    hidden_size: int
    vocab_size: int | None = None
    mask_token_id: int | None = None
    unit_dim: int | None = None
    feature_dim: int | None = None
    causal: bool = False
    pipeline_tag: str | None = None
    sentinel_ids: tuple[int, ...] = ()
    eos_token_id: int | None = None

    @abc.abstractmethod
    def encode(self, batch: Batch, mask: Tensor | None = None, all_layers: bool = False) -> EncoderOutput:
        """Encode a batch.

        Args:
            batch: units ``[B, T]`` (ids) or ``[B, T, C]`` (features) and masks.
            mask: optional ``[B, T]`` bool; True units are replaced by the encoder's mask
                embedding / mask token before encoding.
            all_layers: also return every layer's output (for data2vec-style targets).
        """

    def encode_at(self, batch: Batch, positions: Tensor, mask: Tensor | None = None) -> Tensor:
        """Last-layer outputs at ``positions`` only, for objectives that read a few units.

        Masked prediction reads the encoder at the masked units alone; an encoder may then
        run its last layer for those queries only (keys and values still come from every
        unit), which gives the same outputs for less compute. This default encodes every
        unit and selects.

        Args:
            batch: as for :meth:`encode`.
            positions: ``[B, T]`` bool, the units whose output is needed.
            mask: as for :meth:`encode`.

        Returns:
            ``[N, D]`` with ``N = positions.sum()``, rows in row-major order of ``positions``
            (the order of ``hidden[positions]``).
        """
        return self.encode(batch, mask).hidden[positions]

    def encode_visible(self, batch: Batch, visible: Tensor) -> EncoderOutput:
        """Encode only the units at ``visible`` (``[B, K]`` indices, the same ``K`` per row), as MAE's encoder does.

        Only encoders that can drop units (transformers) implement it.

        Raises:
            CapabilityError: By default.
        """
        raise CapabilityError(f"{type(self).__name__} cannot encode a subset of units (MAE needs a ViT-style encoder)")

    def output_padding_mask(self, batch: Batch) -> Tensor:
        """``[B, T_out]`` bool, True at padding of the output grid that :meth:`encode` returns.

        The default is ``batch.padding_mask``: the encoder keeps the unit grid (tokens,
        patches, frames, nodes). An encoder that maps units onto another grid (a waveform's
        samples to conv frames) overrides it, so that objectives can mask on the output grid
        before encoding (wav2vec 2.0).
        """
        return batch.padding_mask

    def encode_with_features(
        self, batch: Batch, mask: Tensor | None = None, all_layers: bool = False
    ) -> tuple[EncoderOutput, Tensor]:
        """Encode, and also return the local features ``[B, T_out, C]`` the context network reads (wav2vec 2.0).

        Args:
            batch: as for :meth:`encode`.
            mask: ``[B, T_out]`` bool on the output grid (:meth:`output_padding_mask`).
            all_layers: as for :meth:`encode`.

        Raises:
            CapabilityError: By default.
        """
        raise CapabilityError(
            f"{type(self).__name__} does not return local features beside its output "
            "(wav2vec2 needs them, e.g. the audio domain's encoder.arch=wav2vec2)"
        )

    def quantizer_head(self) -> nn.Module:
        """The module that holds wav2vec 2.0's quantizer and projections, saved with the backbone.

        It has ``quantizer(features, mask_time_indices) -> (codes [B, T, Dq], perplexity)``
        (with ``temperature``, ``num_groups``, ``num_vars``) and the modules ``project_hid``,
        ``project_q`` and ``dropout_features``, as transformers' ``Wav2Vec2ForPreTraining`` does.

        Raises:
            CapabilityError: By default.
        """
        raise CapabilityError(
            f"wav2vec2 needs an encoder with a quantizer head and local features "
            f"(e.g. the audio domain's encoder.arch=wav2vec2), got {type(self).__name__}"
        )

    def prediction_head(self) -> nn.Module | None:
        """The backbone's own pretraining head (e.g. BERT's tied vocabulary projection), if any.

        Objectives call it at forward time instead of registering it, so its weights live
        (and export) in one place only. Default None: the objective builds its own head.
        """
        return None

    def unit_counts(self) -> Tensor | None:
        """``[V]`` how often each unit id occurs in the pretraining corpus (0 for ids that are never trained), for
        objectives that draw units by their frequency (word2vec's noise distribution and subsampling, e.g. the text
        domain's ``encoder.arch=word2vec``, whose word-level tokenizer counts the corpus). Default None: no counts."""
        return None

    def decode(self, memory: EncoderOutput, targets: Tensor) -> Tensor:
        """Teacher-forced logits ``[B, S, V]`` of a sequence-to-sequence model's decoder (T5's span corruption).

        The decoder reads :meth:`encode`'s output ``memory`` (its padding masked) and ``targets`` ``[B, S]`` shifted
        right by one behind its start token, so ``logits[:, s]`` predicts ``targets[:, s]``.

        Raises:
            CapabilityError: By default.
        """
        raise CapabilityError(
            f"{type(self).__name__} has no decoder (t5_span_corruption needs a sequence-to-sequence model, "
            "e.g. the text domain's encoder.arch=t5)"
        )

    def encode_from_start(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Read the units as ids behind a start token: ``(hidden [B, T, D], ids [B, T])`` (ImageGPT).

        ``ids`` are the discrete ids the encoder reads the units as (ImageGPT: palette indices of pixels), and
        ``hidden[:, t]`` has read the start token and ``ids[:, :t]`` only, so it predicts ``ids[:, t]``: every
        unit, the first included, is a next-unit target (Chen et al. 2020).

        Raises:
            CapabilityError: By default.
        """
        raise CapabilityError(
            f"{type(self).__name__} reads no start token (imagegpt needs an encoder that quantises its units and "
            "reads them behind one, e.g. the image domain's encoder.arch=imagegpt)"
        )

    def unit_decoder(self, in_dim: int, out_dim: int) -> nn.Module | None:
        """A fresh one-layer decoder ``(hidden [B, T, in_dim], batch) -> [B, T, out_dim]`` that uses the batch's structure.

        GraphMAE (Hou et al. 2022, sec. 3.3) decodes with one GNN layer over the batch's graph.
        Default None: the objective decodes each unit with a linear map.
        """
        return None

    def replaced_token_head(self) -> nn.Module:
        """The backbone's own replaced-token-detection head, ``[..., D] -> [...]`` logits (ELECTRA's discriminator).

        It lives in the backbone, so it is saved with it (transformers' ``ElectraForPreTraining``).

        Raises:
            CapabilityError: By default.
        """
        raise CapabilityError(
            f"electra needs an encoder with a replaced-token-detection head "
            f"(the text domain's encoder.arch=electra), got {type(self).__name__}"
        )

    def mlm_generator(self, width_fraction: float, num_layers: int | None) -> Encoder:
        """A fresh, smaller masked-LM encoder that shares this encoder's input embeddings (ELECTRA's generator).

        Its hidden size, feed-forward size and attention heads are ``width_fraction`` of this encoder's
        (Clark et al. 2020, Table 6), its depth ``num_layers`` (None: this encoder's). It has a vocabulary
        projection (:meth:`prediction_head`) and the same ``mask_token_id``. Nothing is registered: the
        caller owns the generator (and attaches it to the export with :meth:`attach_export`).

        Raises:
            CapabilityError: By default.
            ValueError: If the generator would be larger than this encoder.
        """
        raise CapabilityError(
            f"electra needs an encoder that builds a masked-LM generator sharing its embeddings "
            f"(the text domain's encoder.arch=electra), got {type(self).__name__}"
        )

    saves_export_extras: bool = False  # export() calls save_export_extras, so attach_export works

    def attach_export(self, name: str, extra: ExportExtra) -> None:
        """Save ``extra`` (owned elsewhere: CLIP's heads, ELECTRA's generator) with every export of this encoder.

        Kept in a plain dict, not registered as a submodule: its owner saves its weights in checkpoints.

        Raises:
            CapabilityError: If this encoder's export does not save attached modules.
        """
        if not self.saves_export_extras:
            raise CapabilityError(f"{type(self).__name__} cannot save other modules with its export ({name})")
        self.__dict__.setdefault("_export_extras", {})[name] = extra

    def save_export_extras(self, out_dir: Path) -> None:
        """Save every module :meth:`attach_export` attached, under ``out_dir`` (called by :meth:`export`)."""
        for extra in self.__dict__.get("_export_extras", {}).values():
            extra.save(Path(out_dir))

    @abc.abstractmethod
    def export(self, out_dir: Path) -> None:
        """Write the backbone in its library's native format (``save_pretrained``) to ``out_dir``."""


class ExportExtra(Protocol):
    """A module saved beside a two-tower export (e.g. CLIP's projection heads)."""

    def save(self, out_dir: Path) -> None: ...


class TwoTowerEncoder(Encoder, abc.ABC):
    """Two encoders of paired inputs behind one :class:`Encoder`.

    ``encode(batch)`` is the main tower's; :attr:`paired` encodes ``batch.pair``.
    Subclasses write both towers in their libraries' formats (:meth:`export_towers`); modules
    attached with :meth:`attach_export` (the objective's projection heads) are saved beside them.

    Attributes:
        main: tower of ``batch`` itself; paired: tower of ``batch.pair``.
        tower_names: names of the two modalities (``("speech", "text")``), for logs and metrics.
    """

    tower_names: tuple[str, str] = ("main", "paired")
    saves_export_extras = True

    def __init__(self, main: Encoder, paired: Encoder) -> None:
        super().__init__()
        self.main = main
        self.paired = paired
        self.hidden_size = main.hidden_size

    def encode(self, batch: Batch, mask: Tensor | None = None, all_layers: bool = False) -> EncoderOutput:
        return self.main.encode(batch, mask, all_layers)

    def encode_pair(self, batch: Batch) -> tuple[EncoderOutput, EncoderOutput]:
        """Both towers' outputs on a paired batch.

        Raises:
            ValueError: If the batch has no paired :class:`Batch` (``batch.pair``).
        """
        if batch.pair is None:
            raise ValueError(
                f"a two-tower encoder needs the paired {self.tower_names[1]} inputs in Batch.pair, "
                "which this data does not give"
            )
        return self.main.encode(batch), self.paired.encode(batch.pair)

    @abc.abstractmethod
    def export_towers(self, out_dir: Path) -> None:
        """Write both towers (and their processors' folders) under ``out_dir``."""

    def export(self, out_dir: Path) -> None:
        self.export_towers(Path(out_dir))
        self.save_export_extras(out_dir)
