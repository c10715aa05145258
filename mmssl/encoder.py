"""The encoder protocol: one ``encode`` for every backbone, HF model or PyG GNN."""

from __future__ import annotations

import abc
from pathlib import Path

from torch import Tensor, nn

from mmssl.types import Batch, EncoderOutput


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
    """

    hidden_size: int
    vocab_size: int | None = None
    mask_token_id: int | None = None
    unit_dim: int | None = None

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
        """
        raise NotImplementedError(f"{type(self).__name__} cannot encode a subset of units (MAE needs a ViT-style encoder)")

    def prediction_head(self) -> nn.Module | None:
        """The backbone's own pretraining head (e.g. BERT's tied vocabulary projection), if any.

        Objectives call it at forward time instead of registering it, so its weights live
        (and export) in one place only.
        """
        return None

    @abc.abstractmethod
    def export(self, out_dir: Path) -> None:
        """Write the backbone in its library's native format (``save_pretrained``) to ``out_dir``."""
