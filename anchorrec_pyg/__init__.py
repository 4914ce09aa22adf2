r"""anchorrec-pyg: AnchorRec ("Anchored Alignment: Preventing Positional Collapse in Multimodal
Recommender Systems"), AlignRec and the baselines of the paper's table on PyTorch Geometric.

The public API, in the order data flows through it::

    from anchorrec_pyg import MMRecDataset, AnchorRec, Trainer, evaluate

    data = MMRecDataset(root, 'baby')[0]           # HeteroData: interactions, kNN graphs, features
    model = AnchorRec(data, AnchorRec.Config())    # or get_model_class('alignrec'), ...
    out = model(data)                              # RecOutput(user, item, views)

See ``docs/ARCHITECTURE.md`` for the contracts between the parts and ``../shared/SPEC.md`` (in
the development tree) for the reference formulas.
"""
from anchorrec_pyg.data import MMRecDataset, ensure_default_dataset, generate_synthetic, load_mmrec
from anchorrec_pyg.errors import AnchorRecError, CheckpointError, ConfigError, DataError
from anchorrec_pyg.models import MODELS, AnchorRec, LightGCN, RecModel, RecOutput, get_model_class
from anchorrec_pyg.train import Evaluator, Trainer, TripletSampler, evaluate, run_experiment

__version__ = '0.1.0'

__all__ = [
    'MMRecDataset',
    'load_mmrec',
    'ensure_default_dataset',
    'generate_synthetic',
    'RecModel',
    'RecOutput',
    'AnchorRec',
    'LightGCN',
    'MODELS',
    'get_model_class',
    'TripletSampler',
    'Trainer',
    'Evaluator',
    'evaluate',
    'run_experiment',
    'AnchorRecError',
    'DataError',
    'ConfigError',
    'CheckpointError',
    '__version__',
]
