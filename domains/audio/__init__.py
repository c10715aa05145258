"""Audio domain: waveform and fbank unit streams, wav2vec 2.0 / conformer encoders, KWS and speech builders.

Importing this package registers the ``audio`` domain, the ``kws`` and ``speech`` datasets,
the ``kws`` task, and the audio-neutral objectives it needs (``wav2vec2``, ``apc``, ``tera``,
``hubert``, ``best-rq``), which live in :mod:`mmssl.objectives` but are not imported by the
core package.
"""

from domains.audio import builders, domain  # noqa: F401  (registration side effects)
from mmssl.objectives import cluster_prediction, predictive_coding, quantized_contrastive  # noqa: F401
