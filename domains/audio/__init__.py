"""Audio domain: waveform and fbank unit streams, wav2vec 2.0 / conformer encoders, KWS and speech builders.

Registered through the ``mmssl.domains`` (:mod:`domains.audio.domain`: the ``audio`` domain and the
``kws`` task) and ``mmssl.datasets`` (:mod:`domains.audio.catalog`: ``kws``, ``speech``) entry points;
this file imports nothing.
"""
