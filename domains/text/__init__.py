"""Text domain: corpora, tokenizers, packed blocks, BERT / GPT-2 encoders and text tasks.

Importing this package registers the ``text`` domain, its offline datasets and its tasks.
"""

from domains.text import builders, domain, tasks  # noqa: F401  (registration side effects)
