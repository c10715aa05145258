"""Speech-text domain: paired speech and text (espeak-ng reading Austen) for CLIP-style pretraining.

Registered through the ``mmssl.domains`` (:mod:`domains.speech_text.domain`: the ``speech_text``
domain and the retrieval task) and ``mmssl.datasets`` (:mod:`domains.speech_text.catalog`) entry
points; the ``clip`` objective lives in :mod:`mmssl.objectives`. This file imports nothing.
"""
