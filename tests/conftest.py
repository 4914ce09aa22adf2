"""Shared fixtures: the tiny synthetic MMRec folder, its HeteroData, and the real Office copy.

Tests run single-threaded (reproducible timings on a shared 2-core machine) and with
``ANCHORREC_PYG_HOME`` pointing to a per-session temporary folder, so that no test writes to
the user's cache (generated default datasets, processed files of read-only folders).
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch
from torch_geometric.data import HeteroData

from anchorrec_pyg.data import PRESETS, MMRecDataset, generate_synthetic
from anchorrec_pyg.data.mmrec import HOME_ENV

torch.set_num_threads(1)

OFFICE_DIR = Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'amazon-office'
"""The real Amazon Office copy (interactions + text features), beside the project root."""


@pytest.fixture(scope='session', autouse=True)
def anchorrec_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A per-session ``$ANCHORREC_PYG_HOME``."""
    home = tmp_path_factory.mktemp('anchorrec-home')
    previous = os.environ.get(HOME_ENV)
    os.environ[HOME_ENV] = str(home)
    yield home
    if previous is None:
        os.environ.pop(HOME_ENV, None)
    else:
        os.environ[HOME_ENV] = previous


@pytest.fixture(scope='session')
def tiny_mmrec_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """``(root, name)`` of the ``tiny`` synthetic preset (60 users, 40 items, seed 0)."""
    root = tmp_path_factory.mktemp('mmrec')
    generate_synthetic(root, name='tiny', preset='tiny', seed=0)
    return str(root), 'tiny'


@pytest.fixture(scope='session')
def tiny_data(tiny_mmrec_root: tuple[str, str]):
    """The tiny dataset's HeteroData with all three modalities (k = 10). Shared by the whole
    session: tests must not modify it in place (``data.clone()`` first)."""
    root, name = tiny_mmrec_root
    return MMRecDataset(root, name, log=False)[0]


@pytest.fixture(scope='session')
def sparse_knn_data(tmp_path_factory: pytest.TempPathFactory) -> HeteroData:
    """The ``tiny`` preset's shape at 200 users and 300 items, 5 interactions per user, with
    k = 3 kNN neighbours per item and modality: the sampled subgraph of a few triples, and its
    kNN closures, are strict parts of it (on ``tiny``, 40 items with k = 10, they are all of
    it). Shared by the session: do not modify it in place."""
    root = tmp_path_factory.mktemp('sparse-knn')
    preset = dataclasses.replace(PRESETS['tiny'], num_users=200, num_items=300,
                                 mean_interactions=5.0)
    generate_synthetic(root, name='sparse', preset=preset, seed=0)
    return MMRecDataset(root, 'sparse', k=3, log=False)[0]


@pytest.fixture(scope='session')
def office_root() -> Path:
    """The folder of the real Office copy (``office.inter``, ``text_feat.npy``; read-only).
    Load it with ``MMRecDataset(office_root.parent, office_root.name,
    inter_file='office.inter', modalities=('text',))``."""
    if not (OFFICE_DIR / 'office.inter').is_file():
        pytest.skip(f'real Office data not found at {OFFICE_DIR}')
    return OFFICE_DIR


@pytest.fixture
def xavier_inits(monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    r"""The tensors :func:`torch.nn.init.xavier_uniform_` initialises from now on, in order."""
    calls: list[torch.Tensor] = []
    original = torch.nn.init.xavier_uniform_

    def spy(tensor, *args, **kwargs):
        calls.append(tensor)
        return original(tensor, *args, **kwargs)

    monkeypatch.setattr(torch.nn.init, 'xavier_uniform_', spy)
    return calls


@pytest.fixture
def similarity_builds(monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    r"""The tables the models' similarity cache builds a
    :class:`~anchorrec_pyg.losses.PackedCosineSimilarity` for from now on, in order."""
    import anchorrec_pyg.models.similarity as similarity
    from anchorrec_pyg.losses import PackedCosineSimilarity
    built: list[torch.Tensor] = []

    class Counted(PackedCosineSimilarity):
        def __init__(self, table: torch.Tensor) -> None:
            built.append(table)
            super().__init__(table)

    monkeypatch.setattr(similarity, 'PackedCosineSimilarity', Counted)
    return built


@pytest.fixture
def popularity_example():
    r"""The popularity worked example: 3 users, 4 items; training counts item 0: 2, item 1: 1,
    item 2: 1, item 3: 0 (popularity order 0, 1, 2, 3); test user 0 -> {2, 3}, user 1 -> {2};
    valid user 2 -> {0}."""
    data = HeteroData()
    data['user'].num_nodes, data['item'].num_nodes = 3, 4
    store = data['user', 'interacts', 'item']
    store.edge_index = torch.tensor([[0, 1, 1, 2], [0, 0, 1, 2]])
    store.test_edge_index = torch.tensor([[0, 0, 1], [2, 3, 2]])
    store.val_edge_index = torch.tensor([[2], [0]])
    return data
