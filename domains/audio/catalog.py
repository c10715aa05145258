"""The audio domain's offline datasets (``mmssl data list``); the builders are imported when they run.

Both render speech with espeak-ng, flite and sox (Debian packages of those names)."""

from mmssl.registry import DATASETS, DatasetBuilder

DATASETS.add(
    "kws",
    DatasetBuilder(
        "kws",
        "keyword spotting: 10 Speech Commands words, espeak-ng + flite voices, split by voice (~3.7k 1 s clips)",
        "domains.audio.builders:build_kws",
        "audio",
    ),
)
DATASETS.add(
    "speech",
    DatasetBuilder(
        "speech",
        "unlabelled speech: Asterisk + KLettres recordings and espeak-ng-read sentences",
        "domains.audio.builders:build_speech",
        "audio",
    ),
)
