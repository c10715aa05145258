"""The graph domain: PyG graphs as node units, PyG GNN encoders (GCN, GraphSAGE, GAT, GIN), ego-network
mini-batches on large graphs, graph-level batches of small graphs, and the WordNet, NCI molecule and
solubility builders. ``torch_geometric`` is imported only inside this package.

Registered through the ``mmssl.domains`` (:mod:`domains.graph.domain`) and ``mmssl.datasets``
(:mod:`domains.graph.catalog`) entry points; this file imports nothing.
"""
