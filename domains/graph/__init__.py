"""The graph domain: PyG graphs as node units, PyG GNN encoders (GCN, GraphSAGE, GAT, GIN), ego-network
mini-batches on large graphs, graph-level batches of small graphs, and the WordNet, NCI molecule and
solubility builders. ``torch_geometric`` is imported only inside this package."""

from domains.graph import builders, domain  # noqa: F401  (register the datasets, the graph domain and its tasks)
