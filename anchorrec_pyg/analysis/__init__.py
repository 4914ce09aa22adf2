r"""Expressiveness analyses of trained runs (SPEC §6) and feature-quality evaluations without
training (SPEC §8); ``anchorrec-pyg analyze <what>`` runs them (:mod:`.cli`)."""
from anchorrec_pyg.analysis.collapse import (
    collapse_numbers,
    effective_rank,
    mean_pairwise_cosine,
    paired_cosine,
)
from anchorrec_pyg.analysis.features import (
    evaluate_features,
    item_cf_scorer,
    load_feature_folder,
    masked_metrics,
    masked_modality,
    zero_shot_scorer,
)
from anchorrec_pyg.analysis.long_tail import long_tail_metrics, popularity_buckets
from anchorrec_pyg.analysis.neighbours import compare_neighbours, two_hop
from anchorrec_pyg.analysis.overlap import neighbour_lists, overlap, overlap_matrix
from anchorrec_pyg.analysis.spaces import LoadedRun, Space, item_spaces, load_run

__all__ = [
    'Space',
    'LoadedRun',
    'load_run',
    'item_spaces',
    'neighbour_lists',
    'overlap',
    'overlap_matrix',
    'compare_neighbours',
    'two_hop',
    'mean_pairwise_cosine',
    'effective_rank',
    'paired_cosine',
    'collapse_numbers',
    'zero_shot_scorer',
    'item_cf_scorer',
    'evaluate_features',
    'load_feature_folder',
    'masked_modality',
    'masked_metrics',
    'popularity_buckets',
    'long_tail_metrics',
]
