"""The real Amazon Office copy: text-only loading works, the rest fails naming the files."""
from __future__ import annotations

import pytest

from anchorrec_pyg.data import MMRecDataset
from anchorrec_pyg.errors import DataError


def load_office(office_root, **kwargs):
    return MMRecDataset(office_root.parent, office_root.name, inter_file='office.inter',
                        log=False, **kwargs)


def test_office_text_only(office_root, anchorrec_home):
    ds = load_office(office_root, modalities=('text',))
    # /work/shared is read-only: the processed file goes to the cache home instead.
    assert ds.processed_dir.startswith(str(anchorrec_home))
    assert not (office_root / 'processed').exists()
    data = ds[0]
    assert data['user'].num_nodes == 4905 and data['item'].num_nodes == 2420
    store = data['user', 'interacts', 'item']
    assert store.edge_index.size(1) == 40_877  # counts from the folder's README
    assert store.val_edge_index.size(1) == 5_880
    assert store.test_edge_index.size(1) == 6_501
    assert data['item'].x_text.shape == (2420, 384)
    assert data['item', 'similar_text', 'item'].edge_index.shape == (2, 2420 * 10)
    assert load_office(office_root, modalities=('text',)).processed_paths == ds.processed_paths


@pytest.mark.parametrize('kwargs, missing', [
    (dict(), ['image_feat.npy in ', 'amazon-office_beit3/', 'data.mm_source=concat',
              'data.modalities=[text]']),
    (dict(modalities=('image', 'text')), ['image_feat.npy in ', 'amazon-office/']),
    (dict(modalities=('mm',), mm_source='concat'), ['image_feat.npy in ', 'amazon-office/']),
])
def test_office_missing_modalities_named(office_root, kwargs, missing):
    with pytest.raises(DataError) as e:
        load_office(office_root, **kwargs)
    message = str(e.value)
    for text in missing:
        assert text in message
    assert 'text_feat.npy' not in message.split('put ')[1].split(';')[0]
