"""``anchorrec-pyg analyze`` end to end on tiny trained runs: every command writes its JSON/CSV
and PNG, and without matplotlib the numbers plus a hint on how to get the picture."""
import contextlib
import csv
import io
import json
import sys

import pytest

from anchorrec_pyg.analysis.results import NO_MATPLOTLIB
from anchorrec_pyg.cli import main

TINY = ['--set', 'data.name=tiny', '--set', 'train.epochs=2', '--set', 'train.batch_size=128',
        '--set', 'eval.ks=[5,10,20]', '--device', 'cpu', '--quiet']


def run(args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope='session')
def runs(tmp_path_factory, anchorrec_home):
    """A tiny AnchorRec run, its ablation without AAL/AMP, and a LightGCN run (views: C only)."""
    base = tmp_path_factory.mktemp('analysis-runs')
    extra = {'anchorrec': [], 'ablation': ['--set', 'model.aal_weight=0', '--set',
                                           'model.amp_weight=0'],
             'lightgcn': ['--set', 'model.name=lightgcn', '--set', 'train.epochs=1']}
    for name, args in extra.items():
        code, _, err = run(['train', *TINY, *args, '--out', str(base / name)])
        assert code == 0, err
    return base


def read_json(path):
    return json.loads(path.read_text())


def test_overlap_writes_matrix_of_all_spaces(runs, tmp_path):
    code, out, err = run(['analyze', 'overlap', str(runs / 'anchorrec'), '--k', '5',
                          '--out', str(tmp_path), '--quiet'])
    assert code == 0, err
    result = read_json(tmp_path / 'overlap.json')
    names = [s['name'] for s in result['spaces']]
    assert names[:3] == ['raw_mm', 'raw_text', 'raw_image'] and names[-1] == 'Z'
    for space in ('C', 'H_mm', 'H_text', 'H_image', 'h_id', 'h_mm', 'h_text', 'h_image'):
        assert space in names
    matrix = result['matrix']
    assert all(matrix[i][i] == 1.0 for i in range(len(names)))
    assert all(matrix[i][j] == matrix[j][i] for i in range(len(names)) for j in range(i))
    assert result['k'] == 5 and result['num_items'] == 40
    rows = list(csv.DictReader((tmp_path / 'overlap.csv').open()))
    assert [r['space'] for r in rows] == names
    assert (tmp_path / 'overlap.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert 'wrote' in out and 'raw_mm' in out


def test_overlap_of_a_model_without_modality_views(runs, tmp_path):
    code, _, err = run(['analyze', 'overlap', str(runs / 'lightgcn'), '--out', str(tmp_path),
                        '--quiet'])
    assert code == 0, err
    result = read_json(tmp_path / 'overlap.json')
    names = [s['name'] for s in result['spaces']]
    # LightGCN: the raw tables of its dataset, C and Z (which equal each other)
    assert names == ['raw_mm', 'raw_text', 'raw_image', 'C', 'Z']
    assert result['matrix'][3][4] == 1.0


def test_neighbours_compares_runs_on_the_same_targets(runs, tmp_path):
    code, out, err = run(['analyze', 'neighbours', str(runs / 'anchorrec'),
                          str(runs / 'ablation'), '--labels', 'AnchorRec', 'ablation',
                          '--num-targets', '15', '--out', str(tmp_path), '--quiet'])
    assert code == 0, err
    result = read_json(tmp_path / 'neighbours.json')
    assert [r['run'] for r in result['rows']] == ['AnchorRec', 'ablation', 'random']
    assert len(result['targets']) == 15
    assert all(len(n) == 3 for n in result['neighbours']['AnchorRec'])
    assert result['measures'] == ['paths', 'paths_norm', 'sim_mm', 'sim_text', 'sim_image']
    for row in result['rows']:
        assert row['paths_mean'] >= 0 and -1 <= row['sim_text_mean'] <= 1
    assert (tmp_path / 'neighbours.png').is_file() and (tmp_path / 'neighbours.csv').is_file()
    assert 'AnchorRec' in out and '±' in out


def test_collapse_numbers_and_picture(runs, tmp_path):
    code, out, err = run(['analyze', 'collapse', str(runs / 'anchorrec'), '--method', 'pca',
                          '--num-items', '20', '--out', str(tmp_path), '--quiet'])
    assert code == 0, err
    result = read_json(tmp_path / 'collapse.json')
    by = {r['name']: r for r in result['spaces']}
    assert 1.0 <= by['H_mm']['effective_rank'] <= 40 and -1 <= by['H_mm']['mean_cosine'] <= 1
    assert result['plot']['panels'] == [['H_mm', 'H_text', 'H_image'],
                                        ['h_mm', 'h_text', 'h_image']]
    assert {(p['a'], p['b']) for p in result['paired_cosine']} >= {('H_mm', 'H_text')}
    points = list(csv.DictReader((tmp_path / 'collapse_points.csv').open()))
    assert len(points) == 2 * 3 * 20
    assert (tmp_path / 'collapse.png').is_file() and 'effective rank' in out


def test_features_of_a_folder_and_masking_of_a_run(runs, tmp_path, tiny_mmrec_root):
    root, name = tiny_mmrec_root
    code, out, err = run(['analyze', 'features', f'{root}/{name}', '--ks', '5', '10',
                          '--mask-modality', str(runs / 'anchorrec'), '--out', str(tmp_path),
                          '--quiet'])
    assert code == 0, err
    rows = read_json(tmp_path / 'features.json')['rows']
    assert {(r['features'], r['method']) for r in rows} == {
        (m, method) for m in ('mm', 'text', 'image') for method in ('zero-shot', 'item-cf')
    } | {('random', 'random')}
    assert all(0 <= r['recall@10'] <= 1 for r in rows)
    masking = read_json(tmp_path / 'masking.json')
    assert [r['masked'] for r in masking['rows']] == ['none', 'none', 'mm', 'mm', 'text', 'text',
                                                      'image', 'image']
    for stem in ('features', 'masking'):
        assert (tmp_path / f'{stem}.png').is_file() and (tmp_path / f'{stem}.csv').is_file()
    assert 'zero-shot' in out and 'modality masking' in out


def test_long_tail_buckets_across_runs(runs, tmp_path):
    code, out, err = run(['analyze', 'long-tail', str(runs / 'anchorrec'), str(runs / 'lightgcn'),
                          '--buckets', '4', '--out', str(tmp_path), '--quiet'])
    assert code == 0, err
    result = read_json(tmp_path / 'long_tail.json')
    rows = result['rows']
    assert [r['bucket'] for r in rows if r['run'] == 'anchorrec'] == ['0', '1', '2', '3', 'all']
    assert sum(r['items'] for r in rows if r['run'] == 'lightgcn' and r['bucket'] != 'all') == 40
    summary = read_json(runs / 'anchorrec' / 'summary.json')
    overall = next(r for r in rows if r['run'] == 'anchorrec' and r['bucket'] == 'all')
    assert overall['recall@20'] == pytest.approx(summary['test']['recall@20'], abs=1e-6)
    assert (tmp_path / 'long_tail.png').is_file()


def test_without_matplotlib_numbers_are_written_and_the_hint_printed(runs, tmp_path,
                                                                     monkeypatch):
    monkeypatch.setitem(sys.modules, 'matplotlib', None)
    monkeypatch.setitem(sys.modules, 'matplotlib.figure', None)
    code, out, err = run(['analyze', 'overlap', str(runs / 'anchorrec'), '--out', str(tmp_path),
                          '--quiet'])
    assert code == 0, err
    assert (tmp_path / 'overlap.json').is_file() and not (tmp_path / 'overlap.png').exists()
    assert NO_MATPLOTLIB in out and "pip install 'anchorrec-pyg[plots]'" in out
    code, out, err = run(['analyze', 'long-tail', str(runs / 'anchorrec'), '--out',
                          str(tmp_path), '--quiet'])
    assert code == 0 and NO_MATPLOTLIB in out and not (tmp_path / 'long_tail.png').exists()


@pytest.mark.parametrize('args, message', [
    (['overlap', '{run}', '--spaces', 'H_nope'], "no space 'H_nope'"),
    (['neighbours', '{run}', '{run}'], "both labelled 'anchorrec'"),
    (['neighbours', '{run}', '--labels', 'a', 'b'], '--labels: got 2 labels for 1 runs'),
    (['features'], 'needs a DATASET_DIR'),
    (['overlap', '{missing}'], 'no such run folder'),
])
def test_user_errors_are_one_line(runs, tmp_path, args, message):
    args = [a.format(run=runs / 'anchorrec', missing=tmp_path / 'missing') for a in args]
    code, _, err = run(['analyze', *args, '--out', str(tmp_path), '--quiet'])
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
