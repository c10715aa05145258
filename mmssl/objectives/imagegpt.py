"""ImageGPT's next-pixel prediction (Chen et al. 2020, "Generative Pretraining from Pixels", sec. 2.1 and 3.2).

The encoder reads its units as discrete ids behind a start token (:meth:`mmssl.encoder.Encoder.encode_from_start`:
the image domain's ``encoder.arch=imagegpt`` quantises pixels to a k-means palette), and every unit, the first
included, is predicted from the start token and the units before it in raster order:
``L_AR = E[-log p(x_t | x_<t)]``, averaged over all ``B * T`` units of the global batch (the loss of
transformers' ``ImageGPTForCausalImageModeling`` with ``labels=input_ids`` on the start token + ids). The
objective knows no images: what an id is, and where the start token comes from, is the encoder's.

This is not ``clm``: GPT's loss predicts unit ``t+1`` from units ``<= t`` of id units, so the first unit is never a
target, and the image domain's units are pixel features that only the encoder turns into ids.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mmssl.encoder import Encoder
from mmssl.objectives.base import Objective
from mmssl.objectives.heads import vocab_head
from mmssl.objectives.losses import unit_classification_loss
from mmssl.types import Batch, ObjectiveOutput


@dataclass(frozen=True)
class ImageGPTObjectiveConfig:
    """Next-pixel prediction (iGPT's autoregressive objective; its BERT objective is ``mlm``-like and not here).

    No settings beyond the name: the palette (512 k-means colours in the paper), the context (32x32 = 1024 tokens
    for iGPT-S/M/L on ImageNet) and the probed layer are the encoder's (``encoder.palette_size``,
    ``encoder.max_positions``, ``encoder.probe_layer``).
    """

    name: str = "imagegpt"


class ImageGPTObjective(Objective):
    """Predict every unit's id from the start token and the units before it (the encoder must read a start token)."""

    def __init__(self, config: ImageGPTObjectiveConfig, encoder: Encoder) -> None:
        super().__init__(config, encoder)
        self.head = vocab_head(encoder)  # None: the encoder's own head (ImageGPT's lm_head over the palette)

    def forward(self, encoder: Encoder, batch: Batch) -> ObjectiveOutput:
        hidden, ids = encoder.encode_from_start(batch)  # [B, T, D], [B, T]
        real = ~batch.padding_mask
        head = self.head if self.head is not None else encoder.prediction_head()
        loss, acc = unit_classification_loss(head(hidden[real]), ids[real])  # [N, V] against [N]
        bits = loss.detach() / math.log(2)  # bits per palette token (the paper's bits/dim are per sub-pixel)
        return ObjectiveOutput(loss=loss, terms={"imagegpt": loss}, logs={"accuracy": acc, "bits_per_unit": bits})
