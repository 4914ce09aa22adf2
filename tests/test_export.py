"""export and the ranking of recommend: exact top-K against a numpy reference, training items
never listed, short lists when k exceeds the candidates, the faiss index (PyG's MIPSKNNIndex)
equal to the dense product (also past faiss's 2048 cap), and the export folder's files."""
import json
import os
import stat

import numpy as np
import pytest
import torch

from anchorrec_pyg.errors import AnchorRecError
from anchorrec_pyg.train.export import Recommender, export_run, read_manifest


def reference_top_k(user_emb, item_emb, train, users, k):
    """Sort every non-training item by score with numpy (stable, float64 scores)."""
    out = []
    scores = user_emb.double().numpy() @ item_emb.double().numpy().T
    for u in users:
        order = [i for i in np.argsort(-scores[u], kind='stable') if i not in train[u]]
        out.append(order[:k])
    return out


def random_recommender(num_users=30, num_items=50, dim=8, seed=0, heavy=()):
    """Gaussian embeddings (no score ties) and random training items; users in :obj:`heavy`
    own every item but three."""
    gen = torch.Generator().manual_seed(seed)
    user = torch.randn(num_users, dim, generator=gen)
    item = torch.randn(num_items, dim, generator=gen)
    train = []
    for u in range(num_users):
        if u in heavy:
            train.append(set(range(3, num_items)))
        else:
            count = int(torch.randint(1, num_items // 2, (1, ), generator=gen))
            train.append(set(torch.randperm(num_items, generator=gen)[:count].tolist()))
    indptr = torch.tensor([0] + np.cumsum([len(t) for t in train]).tolist())
    items = torch.tensor([i for t in train for i in sorted(t)])
    return Recommender(user, item, indptr, items, batch_size=7), train


def test_dense_ranking_matches_the_reference_and_never_lists_training_items():
    rec, train = random_recommender(heavy=(4, ))
    users = list(range(30))
    lists = rec.top_k(users, 10, use_index=False)
    expected = reference_top_k(rec.user_emb, rec.item_emb, train, users, 10)
    assert [items for items, _ in lists] == [list(map(int, e)) for e in expected]
    assert len(lists[4][0]) == 3  # 50 items minus 47 training items: the list is capped
    for u, (items, scores) in enumerate(lists):
        assert not set(items) & train[u]
        np.testing.assert_allclose(scores, (rec.user_emb[u] @ rec.item_emb[items].T).numpy(),
                                   rtol=1e-5)
    assert rec.candidates(torch.tensor([4])).tolist() == [3]


def test_index_results_equal_the_dense_product():
    pytest.importorskip('faiss')
    from torch_geometric.nn.pool import MIPSKNNIndex
    rec, _ = random_recommender(heavy=(4, 9))
    rec.index = MIPSKNNIndex(rec.item_emb)
    users = list(range(30))
    for k in (1, 5, 20, 60):
        dense = rec.top_k(users, k, use_index=False)
        indexed = rec.top_k(users, k, use_index=True)
        assert [d[0] for d in dense] == [i[0] for i in indexed]
        for (_, sd), (_, si) in zip(dense, indexed):
            np.testing.assert_allclose(sd, si, rtol=1e-5, atol=1e-6)


def test_index_past_faiss_2048_results_falls_back_to_the_dense_product():
    pytest.importorskip('faiss')
    from torch_geometric.nn.pool import MIPSKNNIndex
    rec, train = random_recommender(num_users=4, num_items=2200, heavy=(1, ))
    rec.index = MIPSKNNIndex(rec.item_emb)
    # User 1 owns 2197 items: k + 2197 > 2048 results, so faiss alone would miss its three.
    indexed = rec.top_k([0, 1, 2, 3], 30, use_index=True)
    expected = reference_top_k(rec.user_emb, rec.item_emb, train, [0, 1, 2, 3], 30)
    assert [items for items, _ in indexed] == [list(map(int, e)) for e in expected]
    assert len(indexed[1][0]) == 3


@pytest.fixture(scope='module')
def trained_run(tmp_path_factory):
    from anchorrec_pyg.config import load_config
    from anchorrec_pyg.train.runner import run_experiment
    out = tmp_path_factory.mktemp('export') / 'run'
    config = load_config(None, ['model.name=lightgcn', 'data.name=tiny', 'train.epochs=2',
                                'train.batch_size=128', 'train.device=cpu'])
    run_experiment(config, out=out, progress=False)
    return out


def test_export_writes_embeddings_training_items_and_a_checked_manifest(trained_run, tmp_path):
    from anchorrec_pyg.train.runner import load_trained_model
    out = export_run(trained_run, tmp_path / 'serve', index=False)
    manifest = read_manifest(out)
    assert manifest['model'] == 'lightgcn' and manifest['dataset'] == 'tiny'
    assert manifest['index'] is None and manifest['metric'] == 'recall@20'
    assert set(manifest['metrics']) >= {'valid', 'test', 'best_epoch'}
    model, data, _ = load_trained_model(trained_run, 'cpu')
    with torch.no_grad():
        result = model(data)
    np.testing.assert_array_equal(np.load(out / 'user_emb.npy'), result.user.numpy())
    np.testing.assert_array_equal(np.load(out / 'item_emb.npy'), result.item.numpy())
    indptr, items = np.load(out / 'train_indptr.npy'), np.load(out / 'train_items.npy')
    edges = data['user', 'interacts', 'item'].edge_index
    pairs = {(u, int(i)) for u in range(len(indptr) - 1)
             for i in items[indptr[u]:indptr[u + 1]]}
    assert pairs == set(map(tuple, edges.t().tolist()))

    from_run = Recommender.from_run(trained_run, 'cpu').top_k(range(60), 7)
    assert Recommender.from_export(out).top_k(range(60), 7) == from_run

    with pytest.raises(AnchorRecError, match='already exists'):
        export_run(trained_run, out)
    emb = np.load(out / 'item_emb.npy')
    emb[0, 0] += 1.0
    np.save(out / 'item_emb.npy', emb)
    with pytest.raises(AnchorRecError, match='item_emb.npy: content differs from the md5'):
        Recommender.from_export(out)


def test_export_with_index(trained_run, tmp_path):
    pytest.importorskip('faiss')
    out = export_run(trained_run, tmp_path / 'serve')
    manifest = json.loads((out / 'manifest.json').read_text())
    assert manifest['index']['type'] == 'IndexFlatIP' and manifest['index']['exact']
    rec = Recommender.from_export(out)
    assert rec.index is not None and rec.index.numel == 40
    indexed, dense = rec.top_k(range(60), 45), rec.top_k(range(60), 45, use_index=False)
    assert [i[0] for i in indexed] == [d[0] for d in dense]
    np.testing.assert_allclose([s for i in indexed for s in i[1]],
                               [s for d in dense for s in d[1]], rtol=1e-5, atol=1e-6)


def test_export_folder_and_files_follow_the_umask(trained_run, tmp_path):
    previous = os.umask(0o027)
    try:
        out = export_run(trained_run, tmp_path / 'serve', index=False)
    finally:
        os.umask(previous)
    assert oct(stat.S_IMODE(out.stat().st_mode)) == oct(0o750)  # not mkdtemp's 0700
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in out.iterdir()} == {oct(0o640)}


def test_export_removes_a_killed_exports_staging_folder_and_refuses_a_concurrent_one(
        trained_run, tmp_path):
    from anchorrec_pyg.errors import FolderInUseError
    from anchorrec_pyg.io import lock_file, make_staging_folder
    stale = make_staging_folder(tmp_path, 'serve')
    (stale / 'user_emb.npy').write_bytes(b'half')
    with lock_file(tmp_path / '.serve.export.lock'):
        with pytest.raises(FolderInUseError, match=f'--out {tmp_path / "serve"} is in use'):
            export_run(trained_run, tmp_path / 'serve', index=False)
    assert stale.is_dir() and not (tmp_path / 'serve').exists()
    export_run(trained_run, tmp_path / 'serve', index=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['serve']
