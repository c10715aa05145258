"""Modality adapters for mmssl: one package per modality (``text``, later ``image``, ``audio``, ``graph``).

Each package registers its domain, datasets and tasks in :mod:`mmssl.registry` when imported;
mmssl finds them through the ``mmssl.domains`` entry-point group (see pyproject.toml).
"""
