"""Text domain: corpora, tokenizers, packed blocks, BERT / GPT-2 encoders and text tasks.

mmssl finds it through two entry points (pyproject.toml): ``mmssl.domains`` imports
:mod:`domains.text.domain` (the ``text`` domain and its tasks), ``mmssl.datasets`` imports
:mod:`domains.text.catalog` (its offline datasets). This file imports nothing, so that listing
datasets does not load the domain.
"""
