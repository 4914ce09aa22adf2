"""Graph building blocks of AnchorRec: propagation backends, LightGCN, modality convolutions and
the projection domain."""
from anchorrec_pyg.nn.fast_csr import CSROperator, CSRSpMM, FastCSRBackend
from anchorrec_pyg.nn.feature_grad import (
    BufferedGradLinear,
    BufferedRowGather,
    GradBuffer,
    buffered_linear,
    buffered_rows,
)
from anchorrec_pyg.nn.hypergraph import HypergraphPropagation, soft_membership
from anchorrec_pyg.nn.latent_graph import LatentItemGraph
from anchorrec_pyg.nn.lightgcn import (
    LightGCNConv,
    LightGCNEncoder,
    user_item_adjacency,
    user_item_edges,
)
from anchorrec_pyg.nn.modality_conv import ModalityConv, ModalityGate, propagate_item_views
from anchorrec_pyg.nn.projection import ProjectionDomain, ProjectionHead
from anchorrec_pyg.nn.propagation import (
    BACKENDS,
    Adjacency,
    PropagationBackend,
    PyGBackend,
    TensorCache,
    TorchCSRBackend,
    WeightedAggregation,
    get_backend,
    propagate_many,
    register_backend,
)
from anchorrec_pyg.nn.spectral import SpectralFusion

__all__ = [
    'Adjacency',
    'PropagationBackend',
    'PyGBackend',
    'TorchCSRBackend',
    'FastCSRBackend',
    'CSROperator',
    'CSRSpMM',
    'WeightedAggregation',
    'BACKENDS',
    'register_backend',
    'get_backend',
    'propagate_many',
    'TensorCache',
    'LightGCNConv',
    'LightGCNEncoder',
    'user_item_edges',
    'user_item_adjacency',
    'BufferedGradLinear',
    'BufferedRowGather',
    'GradBuffer',
    'buffered_linear',
    'buffered_rows',
    'ModalityGate',
    'ModalityConv',
    'propagate_item_views',
    'ProjectionHead',
    'ProjectionDomain',
    'LatentItemGraph',
    'SpectralFusion',
    'HypergraphPropagation',
    'soft_membership',
]
