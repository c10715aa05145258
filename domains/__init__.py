"""Modality adapters for mmssl: one package per modality (``text``, ``image``, ``audio``, ``graph``, and
``speech_text`` pairing two of them).

Each package registers its domain and tasks from ``<m>/domain.py`` and its offline datasets from
``<m>/catalog.py``; mmssl finds them through the ``mmssl.domains`` and ``mmssl.datasets`` entry-point
groups (see pyproject.toml).
"""
