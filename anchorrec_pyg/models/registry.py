"""The model registry: ``model.name`` in a config -> :class:`~anchorrec_pyg.models.base.RecModel`.

A model becomes available to the config, the trainer and the command line by one line in
:data:`MODELS`; ``anchorrec-pyg`` lists the names with each class's one-line ``description``.
"""
from __future__ import annotations

from anchorrec_pyg.errors import ConfigError
from anchorrec_pyg.models.alignrec import AlignRec
from anchorrec_pyg.models.anchorrec import AnchorRec
from anchorrec_pyg.models.base import RecModel
from anchorrec_pyg.models.bm3 import BM3
from anchorrec_pyg.models.damrs import DAMRS
from anchorrec_pyg.models.freedom import FREEDOM
from anchorrec_pyg.models.lattice import LATTICE
from anchorrec_pyg.models.lgmrec import LGMRec
from anchorrec_pyg.models.lightgcn import LightGCN
from anchorrec_pyg.models.smore import SMORE
from anchorrec_pyg.models.vbpr import VBPR

__all__ = ['MODELS', 'get_model_class']

MODELS: dict[str, type[RecModel]] = {
    'anchorrec': AnchorRec,
    'alignrec': AlignRec,
    'lightgcn': LightGCN,
    'vbpr': VBPR,
    'freedom': FREEDOM,
    'bm3': BM3,
    'damrs': DAMRS,
    'lattice': LATTICE,
    'lgmrec': LGMRec,
    'smore': SMORE,
}


def get_model_class(name: str) -> type[RecModel]:
    """Returns the model class registered as ``name`` (case-insensitive).

    Raises:
        ConfigError: naming ``model.name`` and the valid names if ``name`` is unknown.
    """
    cls = MODELS.get(name.lower()) if isinstance(name, str) else None
    if cls is None:
        raise ConfigError(f"model.name must be one of {', '.join(sorted(MODELS))}, got {name!r}")
    return cls
