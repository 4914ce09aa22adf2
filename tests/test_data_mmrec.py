"""The MMRec on-disk format reader (SPEC §1): columns by name, splits, validation."""
from __future__ import annotations

import logging
import pickle

import numpy as np
import pytest

from anchorrec_pyg.data import concat_anchor, load_features, load_inter
from anchorrec_pyg.errors import DataError


def write_inter(path, header, rows):
    path.write_text('\t'.join(header) + '\n' + ''.join('\t'.join(map(str, r)) + '\n'
                                                       for r in rows))
    return path


def test_reads_columns_by_name_in_any_order(tmp_path):
    # x_label first, an extra column, no rating/timestamp; user 3 has no training row and
    # item 5 occurs only in its test row: U and I still count them (SPEC §1).
    rows = [(0, 1, 0), (0, 2, 0), (0, 3, 1), (1, 0, 0), (1, 2, 1), (1, 4, 2), (3, 5, 2)]
    path = write_inter(tmp_path / 'x.inter', ['x_label', 'note', 'itemID', 'userID'],
                       [(lab, 'n', i, u) for u, i, lab in rows])
    inter = load_inter(path)
    assert (inter.num_users, inter.num_items) == (4, 6)
    np.testing.assert_array_equal(inter.train, [[0, 0, 1], [1, 2, 0]])
    np.testing.assert_array_equal(inter.valid, [[0, 1], [3, 2]])
    np.testing.assert_array_equal(inter.test, [[1], [4]])
    assert inter.num_duplicates == 0 and inter.num_cold_dropped == 1
    assert inter.train.dtype == np.int64


def test_cold_start_users_dropped_and_duplicates_collapsed(tmp_path, caplog):
    header = ['userID', 'itemID', 'rating', 'timestamp', 'x_label']
    rows = [
        (0, 1, 5, 10, 0), (0, 1, 4, 11, 0), (0, 2, 5, 12, 0),   # (0, 1) twice in train
        (0, 3, 5, 13, 1), (0, 3, 5, 14, 1),                     # (0, 3) twice in valid
        (0, 4, 5, 15, 2),
        (3, 0, 5, 16, 1), (3, 6, 5, 17, 2),                     # user 3: no training row
        (1, 2, 5, 18, 0), (1, 2, 5, 19, 2),                     # same pair in train and test
    ]
    with caplog.at_level(logging.INFO, logger='anchorrec_pyg.data.mmrec'):
        inter = load_inter(write_inter(tmp_path / 'y.inter', header, rows))
    assert (inter.num_users, inter.num_items) == (4, 7)
    np.testing.assert_array_equal(inter.train, [[0, 0, 1], [1, 2, 2]])
    np.testing.assert_array_equal(inter.valid, [[0], [3]])
    np.testing.assert_array_equal(inter.test, [[0, 1], [4, 2]])
    assert inter.num_duplicates == 2
    assert inter.num_cold_dropped == 2
    messages = ' '.join(r.getMessage() for r in caplog.records)
    assert 'collapsed 2 repeated' in messages
    assert 'dropped 2 validation/test rows' in messages
    assert '1 validation/test pairs also occur in the training split' in messages


HEADER = ['userID', 'itemID', 'rating', 'timestamp', 'x_label']


@pytest.mark.parametrize('rows, match', [
    ([(0, 1.5, 5, 1, 0)], r"column 'itemID' must hold non-negative integers, got '1.5' on line 2"),
    ([(0, 1, 5, 1, 0), ('u7', 1, 5, 1, 0)], r"column 'userID' .* got 'u7' on line 3"),
    ([(0, -1, 5, 1, 0)], r"column 'itemID' .* got '-1' on line 2"),
    ([(0, 1, 5, 1, 0), (1, 1, 5, 1, 3)], r"column 'x_label' must be 0 .* got 3 on line 3"),
    ([(0, 1, 5, 1, -1)], r"column 'x_label' .* got '-1'"),
    ([(0, 1, 5, 1, 1), (1, 1, 5, 1, 2)], r'training split is empty'),
    ([], r'no interactions below the header'),
    ([(0, 1, 5, 1, 0), (5, 10**18, 5, 1, 0)], r'ids .* are too large'),
    ([(0, 1, 5, 1, 0), (0, 2, 5)], r'malformed row'),
])
def test_bad_inter_rows(tmp_path, rows, match):
    path = write_inter(tmp_path / 'bad.inter', HEADER, rows)
    with pytest.raises(DataError, match=match) as e:
        load_inter(path)
    assert str(path) in str(e.value) and '\n' not in str(e.value)


@pytest.mark.parametrize('column', ['userID', 'itemID', 'x_label'])
def test_missing_required_column(tmp_path, column):
    header = [c for c in HEADER if c != column]
    path = write_inter(tmp_path / 'bad.inter', header, [(0, 1, 0, 0)])
    with pytest.raises(DataError, match=f"missing required column '{column}'"):
        load_inter(path)


def test_missing_inter_file(tmp_path):
    with pytest.raises(DataError, match='interaction file not found'):
        load_inter(tmp_path / 'nope.inter')


def test_features_are_float32_rows(tmp_path):
    a = np.arange(12, dtype=np.float64).reshape(4, 3)
    np.save(tmp_path / 'f.npy', a)
    out = load_features(tmp_path / 'f.npy', num_items=4)
    assert out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, a)


class _Payload:
    """Pickles to a call that creates a file: proves whether a loader executed it."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, 'w'))


@pytest.mark.parametrize('make, match', [
    (lambda p: np.save(p, np.ones(4, np.float32)), 'expected a 2-D float array'),
    (lambda p: np.save(p, np.ones((4, 2, 2), np.float32)), 'expected a 2-D float array'),
    (lambda p: np.save(p, np.ones((4, 3), np.int64)), 'expected a 2-D float array'),
    (lambda p: np.save(p, np.ones((5, 3), np.float32)), 'has 5 rows but .* I = 4'),
    (lambda p: np.save(p, np.ones((4, 0), np.float32)), 'feature dimension is 0'),
    (lambda p: np.save(p, np.array([[1.0, np.nan]] * 4)), 'NaN or inf'),
    (lambda p: np.save(p, np.array([[1.0, 2.0], [np.inf, 0.0]] * 2)), 'NaN or inf'),
    (lambda p: np.save(p, np.full((4, 2), 1e300)), r'NaN or inf .* after conversion to float32'),
    (lambda p: p.write_bytes(b'not an npy file at all'), r'not a .npy file \(no .npy header'),
    (lambda p: p.write_text('0.1\t0.2\n0.3\t0.4\n'), r'not a .npy file \(no .npy header'),
    (lambda p: p.write_bytes(b''), r'not a .npy file \(an empty file\)'),
    (lambda p: p.write_bytes(np.lib.format.MAGIC_PREFIX + b'\x01\x00garbage'),
     'not a readable .npy array'),
])
def test_bad_feature_files(tmp_path, make, match):
    path = tmp_path / 'feat.npy'
    make(path)
    with pytest.raises(DataError, match=match) as e:
        load_features(path, num_items=4)
    assert str(path) in str(e.value)


def test_pickled_object_array_is_refused_without_running_code(tmp_path):
    marker = tmp_path / 'pwned'
    path = tmp_path / 'feat.npy'
    np.save(path, np.array([[_Payload(marker)] * 2] * 4, dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match='refusing to load pickled data'):
        load_features(path, num_items=4)
    plain = tmp_path / 'plain.npy'
    plain.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(DataError, match='refusing to load pickled data'):
        load_features(plain, num_items=4)
    assert not marker.exists()


def test_missing_feature_file(tmp_path):
    with pytest.raises(DataError, match='feature file not found'):
        load_features(tmp_path / 'image_feat.npy', 3)


def test_concat_anchor_cosine_is_mean_of_modalities():
    rng = np.random.default_rng(0)
    image = rng.standard_normal((5, 7)).astype(np.float32)
    text = rng.standard_normal((5, 3)).astype(np.float32)
    image[4] = 0
    mm = concat_anchor(image, text)
    assert mm.shape == (5, 10) and mm.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(mm[:4], axis=1), 1.0, rtol=1e-6)

    def cos(a):
        a = a / np.linalg.norm(a, axis=1, keepdims=True)
        return a @ a.T

    np.testing.assert_allclose(cos(mm[:4]), (cos(image[:4]) + cos(text[:4])) / 2, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(mm[4]), np.sqrt(0.5), rtol=1e-6)


@pytest.mark.parametrize('text', ['', '\n', '  \n\n'])
def test_empty_inter_file_is_called_empty(tmp_path, text):
    path = tmp_path / 'empty.inter'
    path.write_text(text)
    with pytest.raises(DataError, match=r'empty.inter: empty file \(expected a tab-separated '
                       r'header line with the columns userID, itemID, x_label'):
        load_inter(path)
