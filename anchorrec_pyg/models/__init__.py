"""Recommenders of the package (Contract 2) and their registry."""
from anchorrec_pyg.models.alignrec import AlignRec
from anchorrec_pyg.models.anchorrec import AnchorRec
from anchorrec_pyg.models.base import (
    ModelConfig,
    RecModel,
    RecOutput,
    SampledView,
    node_ids,
    node_rows,
    require_item_features,
    row_gradient_buffers,
    row_sparse_gradients,
)
from anchorrec_pyg.models.bm3 import BM3
from anchorrec_pyg.models.damrs import DAMRS
from anchorrec_pyg.models.freedom import FREEDOM
from anchorrec_pyg.models.graph import (
    CollaborativeView,
    GraphModelConfig,
    GraphRecModel,
    UserItemGraph,
)
from anchorrec_pyg.models.lattice import LATTICE
from anchorrec_pyg.models.lgmrec import LGMRec
from anchorrec_pyg.models.lightgcn import LightGCN
from anchorrec_pyg.models.registry import MODELS, get_model_class
from anchorrec_pyg.models.smore import SMORE
from anchorrec_pyg.models.vbpr import VBPR

__all__ = [
    'ModelConfig',
    'RecModel',
    'RecOutput',
    'SampledView',
    'GraphModelConfig',
    'GraphRecModel',
    'CollaborativeView',
    'UserItemGraph',
    'node_ids',
    'node_rows',
    'require_item_features',
    'row_gradient_buffers',
    'row_sparse_gradients',
    'AnchorRec',
    'LightGCN',
    'AlignRec',
    'VBPR',
    'FREEDOM',
    'BM3',
    'DAMRS',
    'LATTICE',
    'LGMRec',
    'SMORE',
    'MODELS',
    'get_model_class',
]
