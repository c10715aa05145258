"""mmssl: self-supervised pretraining across text, images, audio and graphs.

The data flow, stage by stage: ``domains/<m>`` (load, preprocess, collate -> :class:`Batch`) ->
:class:`Encoder` (-> :class:`EncoderOutput`) -> ``mmssl.objectives`` (-> :class:`ObjectiveOutput`) ->
:class:`mmssl.trainer.Trainer` -> :mod:`mmssl.export` -> :mod:`mmssl.hub` / :mod:`mmssl.finetune`.

The contracts are imported on first use, so that ``mmssl --help`` and listings answer without
importing torch.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["Batch", "EncoderOutput", "ObjectiveOutput", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("Batch", "EncoderOutput", "ObjectiveOutput"):
        from mmssl import types

        return getattr(types, name)
    raise AttributeError(f"module 'mmssl' has no attribute {name!r}")
