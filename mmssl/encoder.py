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
    """

    hidden_size: int
    vocab_size: int | None = None
    mask_token_id: int | None = None

    @abc.abstractmethod
    def encode(self, batch: Batch, mask: Tensor | None = None, all_layers: bool = False) -> EncoderOutput:
        """Encode a batch.

        Args:
            batch: units ``[B, T]`` (ids) or ``[B, T, C]`` (features) and masks.
            mask: optional ``[B, T]`` bool; True units are replaced by the encoder's mask
                embedding / mask token before encoding.
            all_layers: also return every layer's output (for data2vec-style targets).
        """

    def prediction_head(self) -> nn.Module | None:
        """The backbone's own pretraining head (e.g. BERT's tied vocabulary projection), if any.

        Objectives call it at forward time instead of registering it, so its weights live
        (and export) in one place only.
        """
        return None

    @abc.abstractmethod
    def export(self, out_dir: Path) -> None:
        """Write the backbone in its library's native format (``save_pretrained``) to ``out_dir``."""
