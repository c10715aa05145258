"""The raw-feature baseline of text tasks: TF-IDF word counts, the text analogue of pixels.

Each text becomes the TF-IDF vector (scikit-learn's ``TfidfVectorizer`` with its defaults: lower-cased
tokens of two or more letters or digits, smoothed IDF, L2-normalised rows) over the ``TFIDF_MAX_WORDS`` words
most frequent in the task's *training* texts; the vocabulary and the IDF weights are fitted on the
training split only, so nothing of the test texts leaks in. ``mmssl evaluate RUN --protocol linear|knn
--task TASK --init raw`` fits the same probe on these vectors as on an encoder's pooled features
(:meth:`domains.text.domain.TextDomain.raw_features`).
"""

from __future__ import annotations

import datasets
import numpy as np
import torch
from torch import Tensor

from mmssl.domain import RawFeatures

# The vocabulary is capped so that the dense [N, F] matrix the probes read stays small
# (Rotten Tomatoes: 10,201 training snippets x 4,096 words, 167 MB in float32).
TFIDF_MAX_WORDS = 4096


def tfidf_features(
    train_texts: list[str], test_texts: list[str], max_words: int = TFIDF_MAX_WORDS
) -> tuple[Tensor, Tensor]:
    """``([N, F], [M, F])`` float32 TF-IDF vectors, ``F <= max_words``, fitted on ``train_texts`` alone."""
    from sklearn.feature_extraction.text import TfidfVectorizer  # the probes' dependency; pretraining needs none

    vectorizer = TfidfVectorizer(max_features=max_words, dtype=np.float32)
    try:
        train = vectorizer.fit_transform(train_texts)
    except ValueError:  # scikit-learn's "empty vocabulary"
        raise ValueError(
            "task.input_column: the training texts hold no word of two or more letters or digits, "
            "so the tf-idf baseline has no vocabulary"
        ) from None
    test = vectorizer.transform(test_texts)
    return torch.from_numpy(train.toarray()), torch.from_numpy(test.toarray())


def tfidf_baseline(train: datasets.Dataset, test: datasets.Dataset) -> RawFeatures:
    """The ``tf-idf`` baseline of a text task's rows ``{"text", "label"}``
    (:func:`domains.text.tasks.text_task_data`)."""
    x_train, x_test = tfidf_features(list(train["text"]), list(test["text"]))
    return RawFeatures(
        "tf-idf",
        (x_train, torch.tensor(train["label"], dtype=torch.long)),
        (x_test, torch.tensor(test["label"], dtype=torch.long)),
    )
