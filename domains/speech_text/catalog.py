"""The speech-text domain's offline dataset (``mmssl data list``); the builder is imported when it runs."""

from mmssl.registry import DATASETS, DatasetBuilder

DATASETS.add(
    "speech-text",
    DatasetBuilder(
        "speech-text",
        "paired speech and text: Austen sentences read by espeak-ng; test sentences and voices unseen "
        "(3000 + 500 pairs)",
        "domains.speech_text.builders:build_speech_text",
        "speech_text",
    ),
)
