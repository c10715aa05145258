"""The modality-agnostic objective layer. Importing this package registers every core objective."""

from mmssl.objectives import joint_embedding, language_modeling, masked_modeling  # noqa: F401
from mmssl.objectives import generation, local_global, masked_features, unit_bootstrap  # noqa: F401
from mmssl.objectives import cluster_prediction, data2vec, predictive_coding, quantized_contrastive  # noqa: F401
from mmssl.objectives import cross_modal  # noqa: F401
from mmssl.objectives.base import Objective, SSLModel

__all__ = ["Objective", "SSLModel"]
