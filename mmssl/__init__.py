"""mmssl: self-supervised pretraining across text, images, audio and graphs.

The data flow, stage by stage: ``domains/<m>`` (load, preprocess, collate -> :class:`Batch`) ->
:class:`Encoder` (-> :class:`EncoderOutput`) -> ``mmssl.objectives`` (-> :class:`ObjectiveOutput`) ->
:class:`mmssl.trainer.Trainer` -> :mod:`mmssl.export` -> :mod:`mmssl.hub` / :mod:`mmssl.finetune`.
"""

from mmssl.types import Batch, EncoderOutput, ObjectiveOutput

__version__ = "0.1.0"
__all__ = ["Batch", "EncoderOutput", "ObjectiveOutput", "__version__"]
