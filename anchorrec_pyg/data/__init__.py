r"""Data layer: MMRec-format folders (SPEC §1) as PyG ``HeteroData`` with the graphs of
SPEC §2, memory-bounded exact cosine kNN, and the embedded synthetic datasets."""
from anchorrec_pyg.data.dataset import MMRecDataset, load_mmrec
from anchorrec_pyg.data.knn import (
    cosine_knn,
    knn_graph_normalized,
    max_union_graph,
    normalize_knn,
    normalized_ui_weights,
)
from anchorrec_pyg.data.mmrec import (
    Interactions,
    anchorrec_home,
    concat_anchor,
    load_features,
    load_inter,
)
from anchorrec_pyg.data.synthetic import (
    PRESETS,
    SyntheticPreset,
    ensure_default_dataset,
    generate_arrays,
    generate_synthetic,
    popularity_recall,
)

__all__ = [
    'MMRecDataset',
    'load_mmrec',
    'cosine_knn',
    'knn_graph_normalized',
    'max_union_graph',
    'normalize_knn',
    'normalized_ui_weights',
    'Interactions',
    'anchorrec_home',
    'concat_anchor',
    'load_features',
    'load_inter',
    'PRESETS',
    'SyntheticPreset',
    'ensure_default_dataset',
    'generate_arrays',
    'generate_synthetic',
    'popularity_recall',
]
