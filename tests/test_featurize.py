"""featurize: reading raw files, k-core filtering, the splits, bad input, the written folder; end
to end with tiny encoders built here (no download): featurize -> train -> export -> recommend,
which prints the original ids; a restart reuses the encoded chunks; the real Office text
reproduces the shipped all-MiniLM-L6-v2 table when that model is given as a local folder."""
import contextlib
import csv
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest

from anchorrec_pyg.cli import main
from anchorrec_pyg.data import load_inter
from anchorrec_pyg.data.featurize import (
    FeaturizeOptions,
    build_catalogue,
    featurize,
    kcore,
    read_id_map,
    read_table,
    time_split,
)
from anchorrec_pyg.errors import DataError

MINILM_ENV = 'ANCHORREC_PYG_MINILM'


def run(args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return code, out.getvalue(), err.getvalue()


def write(path, text):
    path.write_text(text, encoding='utf-8')
    return path


def reference_kcore(pairs, min_user, min_item):
    """The k-core by repeated deletion on Python sets."""
    pairs = set(pairs)
    while True:
        users, items = {}, {}
        for u, i in pairs:
            users[u] = users.get(u, 0) + 1
            items[i] = items.get(i, 0) + 1
        kept = {(u, i) for u, i in pairs if users[u] >= min_user and items[i] >= min_item}
        if kept == pairs:
            return kept
        pairs = kept


def test_kcore_reaches_the_fixed_point_of_repeated_deletion():
    rng = np.random.default_rng(3)
    pairs = sorted({(int(u), int(i)) for u, i in zip(rng.integers(0, 40, 400),
                                                     rng.zipf(1.6, 400) % 60)})
    user, item = np.array(pairs).T
    keep, rounds = kcore(user, item, 4, 3)
    assert {pairs[r] for r in np.flatnonzero(keep)} == reference_kcore(pairs, 4, 3)
    assert rounds > 2  # deleting users starved items, and the other way round
    # A worked chain: item 9 has 2 users; dropping it leaves user 0 with 1 item < 2.
    keep, _ = kcore(np.array([0, 0, 1, 1, 2, 2]), np.array([9, 5, 5, 6, 6, 5]), 2, 3)
    assert keep.tolist() == [False, False, False, False, False, False]


def test_time_split_holds_out_the_latest_with_mmrec_counts():
    # user 0: 12 rows -> int(2.4) = 2 held out: 1 validation, 1 test (the latest).
    # user 1: 5 rows -> 1 validation, 1 test.
    user = np.array([0] * 12 + [1] * 5)
    stamp = np.concatenate([np.arange(12)[::-1], [5, 1, 4, 2, 3]]).astype(float)
    label = time_split(user, stamp)
    assert label[:12].tolist() == [2, 1] + [0] * 10
    assert label[12:].tolist() == [2, 0, 1, 0, 0]


def test_read_table_formats_and_one_line_errors(tmp_path):
    rows = {'u': ['a', 'b'], 'i': ['1', '2']}
    csv_file = write(tmp_path / 'x.csv', 'u,i,extra\na,1,"q, r"\nb,2,z\n')
    tsv_file = write(tmp_path / 'x.tsv', 'u\ti\na\t1\nb\t2\n')
    jsonl = write(tmp_path / 'x.jsonl', '{"u": "a", "i": 1}\n\n{"u": "b", "i": 2}\n')
    for path in (csv_file, tsv_file, jsonl):
        columns, lines = read_table(path, ['u', 'i'])
        assert columns == rows
    assert read_table(jsonl, ['u'])[1] == [1, 3]
    cases = [
        (write(tmp_path / 'a.csv', 'u,j\na,1\n'), "missing column 'i' in the header"),
        (write(tmp_path / 'b.csv', 'u,i\na\n'), 'line 2 has 1 fields, expected 2'),
        (write(tmp_path / 'c.jsonl', '{"u": "a"}\n'), "line 1 has no key 'i'"),
        (write(tmp_path / 'd.jsonl', '{"u": \n'), 'line 1 is not valid JSON'),
        (write(tmp_path / 'e.xlsx', ''), "unknown file type '.xlsx'"),
        (write(tmp_path / 'f.csv', ''), 'the file is empty'),
    ]
    bad = tmp_path / 'g.csv'
    bad.write_bytes(b'u,i\na,1\nb\xff,2\n')
    cases.append((bad, 'line 3 is not valid UTF-8 (byte 0xff at column 2)'))
    for path, message in cases:
        with pytest.raises(DataError, match=None) as info:
            read_table(path, ['u', 'i'])
        assert message in str(info.value) and '\n' not in str(info.value)


def interactions_csv(tmp_path, rows, name='ratings.csv'):
    lines = ''.join(f'{u},{i},{t}\n' for u, i, t in rows)
    return write(tmp_path / name, 'user,item,ts\n' + lines)


def items_csv(tmp_path, ids, name='items.csv', text=None):
    text = text or {}
    lines = ''.join(f'{i},{text.get(i, "pen " + i)}\n' for i in ids)
    return write(tmp_path / name, 'item,title\n' + lines)


def dense_rows(num_users=6, num_items=5):
    """Every user with every item: a 5-core of 6 users x 5 items, timestamps increasing."""
    return [(f'u{u}', f'i{i}', 10 * u + i) for u in range(num_users) for i in range(num_items)]


def test_catalogue_cleaning_counts_and_maps(tmp_path, caplog):
    rows = dense_rows() + [('u0', 'i0', 99), ('u9', 'i0', 1), ('u1', 'zz', 5)]
    opts = FeaturizeOptions(interactions=str(interactions_csv(tmp_path, rows)),
                            items=str(items_csv(tmp_path, [f'i{i}' for i in range(5)] + ['i7'])),
                            user_col='user', item_col='item', timestamp_col='ts',
                            text_cols=['title'], split='time')
    cat = build_catalogue(opts)
    stats = cat.stats
    assert stats['duplicate_interactions'] == 1 and stats['unknown_items'] == 1
    assert stats['items_without_interactions'] == 1
    assert cat.users == [f'u{u}' for u in range(6)]  # u9 fell out of the 5-core
    assert cat.items == [f'i{i}' for i in range(5)]
    assert stats['kcore']['before'] == {'users': 7, 'items': 5, 'interactions': 31}
    assert stats['kcore']['after'] == {'users': 6, 'items': 5, 'interactions': 30}
    # The duplicate (u0, i0) keeps its earliest row (ts 0), and the time split holds out the
    # two latest interactions of each user: i3 (validation), i4 (test).
    assert cat.timestamp[[tuple(r[:2]) for r in cat.table.tolist()].index((0, 0))] == '0'
    for u, i, label in cat.table.tolist():
        assert label == {3: 1, 4: 2}.get(i, 0)
    assert 'dropped (the earliest kept)' in caplog.text
    assert 'absent from' in caplog.text and '(first: zz)' in caplog.text


@pytest.mark.parametrize('items, message', [
    ('item,title\ni0,pen\ni0,paper\n', "item 'i0' is listed twice with different content "
                                       '(lines 2 and 3)'),
    ('item,title\n,pen\n', "empty 'item' on line 2"),
    ('item,title\nq,pen\n', 'no interaction has an item listed in'),
])
def test_item_file_errors(tmp_path, items, message):
    opts = FeaturizeOptions(interactions=str(interactions_csv(tmp_path, dense_rows())),
                            items=str(write(tmp_path / 'items.csv', items)), user_col='user',
                            item_col='item', text_cols=['title'])
    with pytest.raises(DataError) as info:
        build_catalogue(opts)
    assert message in str(info.value)


def test_featurize_without_encoders_writes_a_loadable_folder(tmp_path):
    opts = FeaturizeOptions(interactions=str(interactions_csv(tmp_path, dense_rows(12, 6))),
                            items=str(items_csv(tmp_path, [f'i{i}' for i in range(6)])),
                            user_col='user', item_col='item', min_user=3, min_item=3, seed=7)
    folder = featurize(opts, tmp_path / 'data', 'shop', progress=False)
    inter = load_inter(folder / 'shop.inter')
    assert (inter.num_users, inter.num_items) == (12, 6)
    users, items = read_id_map(folder / 'user_map.csv'), read_id_map(folder / 'item_map.csv')
    # Sorted ids (lexicographic: the ids are not all integers).
    assert users == sorted(f'u{u}' for u in range(12)) and items == [f'i{i}' for i in range(6)]
    # MMRec's rule: 6 interactions (< 10) -> one validation and one test row per user.
    for split in (inter.valid, inter.test):
        assert np.bincount(split[0], minlength=12).tolist() == [1] * 12
    manifest = json.loads((folder / 'manifest.json').read_text())
    assert manifest['split'] == {'method': 'mmrec', 'seed': 7, 'train': 48, 'valid': 12,
                                 'test': 12}
    assert manifest['encoders'] == {} and manifest['mm_source'] is None
    from anchorrec_pyg.data.encoders import md5_file
    assert manifest['files'] == {p.name: md5_file(p) for p in folder.iterdir()
                                 if p.name != 'manifest.json'}
    # Same request again: nothing rewritten; another request: refused unless --overwrite.
    stamp = os.stat(folder / 'shop.inter').st_mtime_ns
    featurize(opts, tmp_path / 'data', 'shop', progress=False)
    assert os.stat(folder / 'shop.inter').st_mtime_ns == stamp
    opts.seed = 8
    with pytest.raises(DataError, match='already holds a different dataset'):
        featurize(opts, tmp_path / 'data', 'shop', progress=False)
    featurize(opts, tmp_path / 'data', 'shop', overwrite=True, progress=False)
    assert json.loads((folder / 'manifest.json').read_text())['split']['seed'] == 8
    assert sorted(p.name for p in (tmp_path / 'data').iterdir()) == ['shop']


def test_a_killed_runs_staging_folder_is_removed_and_a_second_writer_refused(tmp_path):
    from anchorrec_pyg.io import lock_file, make_staging_folder
    root = tmp_path / 'data'
    root.mkdir()
    stale = make_staging_folder(root, 'shop')  # what a SIGKILLed featurize leaves
    (stale / 'shop').mkdir()
    (stale / 'shop' / 'text_feat.npy').write_bytes(b'half')
    args = ['featurize', '--interactions', str(interactions_csv(tmp_path, dense_rows(12, 6))),
            '--items', str(items_csv(tmp_path, [f'i{i}' for i in range(6)])), '--out', str(root),
            '--name', 'shop', '--user-col', 'user', '--item-col', 'item', '--min-interactions',
            '3', '3', '--quiet']
    with lock_file(root / '.shop.featurize.lock'):  # another featurize writing this --name
        code, _, stderr = run(args)
    assert code == 2 and stderr.count('\n') == 1
    assert f'--out {root / "shop"} is in use by another process' in stderr
    assert stale.is_dir() and not (root / 'shop').exists()  # the holder's files untouched
    code, _, stderr = run(args)
    assert code == 0, stderr
    assert sorted(p.name for p in root.iterdir()) == ['shop']


# ------------------------------------------------------------------ with the tiny encoders

@pytest.fixture(scope='module')
def catalogue(tmp_path_factory):
    """A raw catalogue (ratings.csv, items.jsonl, images/) and tiny text/image/joint encoders,
    all written to local folders."""
    pytest.importorskip('sentence_transformers')
    pytest.importorskip('transformers')
    from anchorrec_pyg.data.tiny_encoders import (
        tiny_image_encoder,
        tiny_joint_encoder,
        tiny_text_encoder,
        write_demo_catalogue,
    )
    root = tmp_path_factory.mktemp('catalogue')
    ratings, items = write_demo_catalogue(root / 'raw')
    return {'ratings': ratings, 'items': items, 'text': tiny_text_encoder(root / 'text'),
            'image': tiny_image_encoder(root / 'image'),
            'joint': tiny_joint_encoder(root / 'joint'), 'root': root}


def featurize_args(cat, out, *extra):
    return ['featurize', '--interactions', str(cat['ratings']), '--items', str(cat['items']),
            '--out', str(out), '--name', 'shop', '--rating-col', 'rating', '--timestamp-col',
            'ts', '--item-id-col', 'asin', '--text-cols', 'title', 'brand', '--image-col',
            'image', '--text-encoder', str(cat['text']), '--quiet', *extra]


def test_end_to_end_featurize_train_export_recommend(catalogue, tmp_path):
    from anchorrec_pyg.data.encoders import ImageEncoder, TextEncoder
    from anchorrec_pyg.data.mmrec import concat_anchor
    data = tmp_path / 'data'
    code, stdout, stderr = run(featurize_args(catalogue, data, '--image-encoder',
                                              str(catalogue['image']), '--chunk-size', '16'))
    assert code == 0, stderr
    folder = data / 'shop'
    assert f'--set data.root={data} --set data.name=shop' in stdout
    items = read_id_map(folder / 'item_map.csv')
    texts = {}
    with open(catalogue['items'], encoding='utf-8') as f:
        for line in f:
            row = json.loads(line)
            texts[row['asin']] = row
    text = np.load(folder / 'text_feat.npy')
    image = np.load(folder / 'image_feat.npy')
    mm = np.load(data / 'shop_beit3' / 'image_feat.npy')
    assert text.shape == (len(items), 32) and image.shape == (len(items), 24)
    # Row r is item_map's item r, encoded by the encoders themselves (chunking changes nothing).
    sample = [0, 17, len(items) - 1]
    direct = TextEncoder(str(catalogue['text'])).encode(
        [f"{texts[items[r]]['title']} {texts[items[r]]['brand']}" for r in sample])
    np.testing.assert_allclose(text[sample], direct, rtol=1e-5, atol=1e-6)
    from PIL import Image
    pictures = [Image.open(catalogue['items'].parent / texts[items[r]]['image']).convert('RGB')
                for r in sample]
    np.testing.assert_allclose(image[sample], ImageEncoder(str(catalogue['image'])).encode(
        pictures), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(mm, concat_anchor(image, text))
    # The same command again finds the folder complete; a changed image makes it another one.
    stamp = os.stat(folder / 'image_feat.npy').st_mtime_ns
    args = featurize_args(catalogue, data, '--image-encoder', str(catalogue['image']))
    assert run(args)[0] == 0 and os.stat(folder / 'image_feat.npy').st_mtime_ns == stamp
    picture = catalogue['items'].parent / texts[items[0]]['image']
    original = picture.read_bytes()
    try:
        from PIL import Image
        Image.new('RGB', (24, 24), (1, 2, 3)).save(picture)
        code, _, stderr = run(args)
        assert code == 2 and 'already holds a different dataset' in stderr
    finally:
        picture.write_bytes(original)
    manifest = json.loads((folder / 'manifest.json').read_text())
    assert manifest['mm_source'] == 'concat'
    assert manifest['encoders']['text']['dim'] == 32
    assert manifest['encoders']['image']['architecture'] == 'ViTModel'
    assert '../shop_beit3/image_feat.npy' in manifest['files']

    runs = tmp_path / 'runs'
    code, _, stderr = run(['train', '--set', f'data.root={data}', '--set', 'data.name=shop',
                           '--set', 'train.epochs=2', '--set', 'train.batch_size=128',
                           '--out', str(runs), '--quiet', '--device', 'cpu'])
    assert code == 0, stderr
    serve = tmp_path / 'serve'
    code, stdout, stderr = run(['export', str(runs), '--out', str(serve), '--quiet'])
    assert code == 0, stderr
    assert (serve / 'item_map.csv').read_text() == (folder / 'item_map.csv').read_text()

    users = read_id_map(folder / 'user_map.csv')
    inter = load_inter(folder / 'shop.inter')
    train = {(users[u], items[i]) for u, i in inter.train.T.tolist()}
    picks = [users[0], users[5]]
    printed = []
    for source in (serve, runs):
        code, stdout, stderr = run(['recommend', str(source), '--users', *picks, '--k', '5',
                                    '--quiet'])
        assert code == 0, stderr
        printed.append(stdout)
        for line, user in zip(stdout.strip().splitlines(), picks):
            head, listed = line.split(':')
            assert head == f'user {user}'
            listed = listed.split()
            assert len(listed) == 5 and all(i in items for i in listed)
            assert not any((user, i) in train for i in listed)
    assert printed[0] == printed[1]  # the export ranks exactly as the run


def test_restart_reuses_encoded_chunks_and_gives_the_same_files(
        catalogue, tmp_path, monkeypatch):
    from anchorrec_pyg.data import encoders
    calls, killed = [], []
    original = encoders.TextEncoder.encode

    def failing(self, texts):
        calls.append(len(texts))
        if len(calls) == 3 and not killed:
            killed.append(True)
            raise RuntimeError('killed')
        return original(self, texts)

    monkeypatch.setattr(encoders.TextEncoder, 'encode', failing)
    args = featurize_args(catalogue, tmp_path / 'a', '--chunk-size', '8')
    with pytest.raises(RuntimeError, match='killed'):
        main(args)
    assert not (tmp_path / 'a' / 'shop').exists()
    cached = list((tmp_path / 'a' / '.shop.featurize-cache' / 'text').glob('*.npy'))
    assert len(cached) == 2
    calls.clear()
    assert main(args) == 0
    num_chunks = -(-len(read_id_map(tmp_path / 'a' / 'shop' / 'item_map.csv')) // 8)
    assert len(calls) == num_chunks - 2  # the two chunks kept were not encoded again
    assert not (tmp_path / 'a' / '.shop.featurize-cache').exists()
    monkeypatch.setattr(encoders.TextEncoder, 'encode', original)
    assert main(featurize_args(catalogue, tmp_path / 'b', '--chunk-size', '5')) == 0
    for name in ('shop.inter', 'user_map.csv', 'item_map.csv'):
        assert (tmp_path / 'a' / 'shop' / name).read_bytes() == \
            (tmp_path / 'b' / 'shop' / name).read_bytes()
    np.testing.assert_array_equal(np.load(tmp_path / 'a' / 'shop' / 'text_feat.npy'),
                                  np.load(tmp_path / 'b' / 'shop' / 'text_feat.npy'))


def test_missing_images_empty_text_and_the_joint_encoder(catalogue, tmp_path):
    raw = tmp_path / 'raw'
    raw.mkdir()
    lines = catalogue['items'].read_text(encoding='utf-8').splitlines()
    rows = [json.loads(line) for line in lines]
    for row in rows:
        row['image'] = str(catalogue['items'].parent / row['image'])
    rows[0]['image'] = str(raw / 'gone.png')
    (raw / 'broken.png').write_bytes(b'not a png')
    rows[1]['image'] = str(raw / 'broken.png')
    rows[2]['title'], rows[2]['brand'] = '  ', ''
    items = raw / 'items.jsonl'
    items.write_text(''.join(json.dumps(r) + '\n' for r in rows), encoding='utf-8')
    cat = dict(catalogue, items=items)
    args = featurize_args(cat, tmp_path / 'data', '--image-encoder', str(catalogue['image']))
    code, _, stderr = run(args)
    warning, error = stderr.splitlines()  # the counted warning, then the one-line error
    assert code == 2 and warning == '1 items have empty text (zero text rows; first: P0002)'
    # 39 of the 40 listed items are in the 5-core.
    assert error.startswith('anchorrec-pyg: error: 2 of 39 items have a missing or '
                            'unreadable image (first: P0000 (')
    assert 'gone.png not found' in stderr and 'broken.png unreadable' in stderr
    assert '--on-missing-image zero' in stderr
    assert not (tmp_path / 'data' / 'shop').exists()

    code, _, stderr = run([*args, '--on-missing-image', 'zero', '--joint-encoder',
                           str(catalogue['joint'])])
    assert code == 0, stderr
    folder = tmp_path / 'data' / 'shop'
    index = {asin: r for r, asin in enumerate(read_id_map(folder / 'item_map.csv'))}
    image = np.load(folder / 'image_feat.npy')
    text = np.load(folder / 'text_feat.npy')
    mm = np.load(tmp_path / 'data' / 'shop_beit3' / 'image_feat.npy')
    for asin in ('P0000', 'P0001'):
        assert not image[index[asin]].any() and not mm[index[asin], :16].any()
        assert mm[index[asin], 16:].any()
    assert not text[index['P0002']].any() and not mm[index['P0002'], 16:].any()
    manifest = json.loads((folder / 'manifest.json').read_text())
    assert manifest['warnings']['missing_images'] == 2
    assert manifest['warnings']['empty_text'] == 1
    assert manifest['mm_source'] == 'joint'
    assert manifest['encoders']['mm']['architecture'] == 'CLIPModel'
    # Each fused row is [unit image || unit text] / sqrt(2) of the joint model's embeddings.
    norms = np.linalg.norm(mm.reshape(len(mm), 2, 16), axis=2)
    full = [r for r in range(len(mm)) if r not in (index['P0000'], index['P0001'],
                                                   index['P0002'])]
    np.testing.assert_allclose(norms[full], 1 / np.sqrt(2), rtol=1e-5)


def test_missing_extra_says_what_to_install(catalogue, tmp_path, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, 'sentence_transformers', None)  # import raises
    code, _, stderr = run(featurize_args(catalogue, tmp_path))
    assert code == 2
    assert stderr == ('anchorrec-pyg: error: --text-encoder needs the package '
                      'sentence-transformers, which is not installed: pip install '
                      "'anchorrec-pyg[featurize]'\n")


def test_office_text_reproduces_the_shipped_minilm_table(office_root, tmp_path):
    """The real Office text through all-MiniLM-L6-v2 (a local folder named by
    $ANCHORREC_PYG_MINILM) gives the shipped text_feat.npy (per-row cosine ~ 1)."""
    model = os.environ.get(MINILM_ENV)
    if not model or not Path(model).is_dir():
        pytest.skip(f'set {MINILM_ENV} to a local all-MiniLM-L6-v2 folder')
    pytest.importorskip('sentence_transformers')
    from anchorrec_pyg.data.encoders import TextEncoder
    ids = {}
    with open(office_root / 'i_id_mapping.csv', encoding='utf-8') as f:
        for asin, index in list(csv.reader(f, delimiter='\t'))[1:]:
            ids[asin] = int(index)
    columns, _ = read_table(office_root / 'item_text.tsv', ['id', 'text'])
    texts = [''] * len(ids)
    for asin, text in zip(columns['id'], columns['text']):
        texts[ids[asin]] = text
    ours = TextEncoder(model, batch_size=128).encode(texts)
    shipped = np.load(office_root / 'text_feat.npy')
    norms = np.linalg.norm(ours, axis=1) * np.linalg.norm(shipped, axis=1)
    cosine = (ours * shipped).sum(1) / norms
    print(f'Office text_feat.npy reproduced: mean cosine {cosine.mean():.7f}, min '
          f'{cosine.min():.7f}, max |diff| {np.abs(ours - shipped).max():.2e}')
    assert cosine.min() > 0.999
