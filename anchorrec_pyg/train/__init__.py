r"""Training and evaluation: the triple sampler (SPEC §4), full-ranking evaluation (SPEC §5),
one training run with checkpoints, and the grid x seeds experiment runner."""
from anchorrec_pyg.train.checkpoint import load_checkpoint, save_checkpoint
from anchorrec_pyg.train.evaluator import (
    METRICS,
    Evaluator,
    PopularityScorer,
    evaluate,
    metric_keys,
    rank_topk,
)
from anchorrec_pyg.train.runner import (
    ExperimentRunner,
    build_model,
    load_data,
    load_trained_model,
    resolve_checkpoint,
    run_experiment,
)
from anchorrec_pyg.train.sampler import TripletSampler
from anchorrec_pyg.train.trainer import NonFiniteLossError, Trainer, TrainResult

__all__ = [
    'TripletSampler',
    'Evaluator',
    'PopularityScorer',
    'evaluate',
    'rank_topk',
    'metric_keys',
    'METRICS',
    'Trainer',
    'TrainResult',
    'NonFiniteLossError',
    'save_checkpoint',
    'load_checkpoint',
    'ExperimentRunner',
    'run_experiment',
    'build_model',
    'load_data',
    'load_trained_model',
    'resolve_checkpoint',
]
