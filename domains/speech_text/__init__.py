"""Speech-text domain: paired speech and text (espeak-ng reading Austen) for CLIP-style pretraining.

Importing this package registers the ``speech_text`` domain, the ``speech-text`` dataset and
retrieval task; the ``clip`` objective lives in :mod:`mmssl.objectives.cross_modal`.
"""

from domains.speech_text import builders, domain  # noqa: F401  (registration side effects)
