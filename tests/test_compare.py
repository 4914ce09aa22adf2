"""The model registry, `anchorrec-pyg models`, the published configs and `anchorrec-pyg compare`
end to end on the tiny dataset (table, chart, resume, refusal to mix results)."""
import csv
import io
import json
import re
import shutil
import sys
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import yaml

from anchorrec_pyg import compare
from anchorrec_pyg.cli import main
from anchorrec_pyg.config import load_config
from anchorrec_pyg.data import MMRecDataset, popularity_recall
from anchorrec_pyg.errors import ConfigError
from anchorrec_pyg.models import MODELS, get_model_class
from anchorrec_pyg.train.checkpoint import load_checkpoint, save_checkpoint
from anchorrec_pyg.train.trainer import Trainer

REPOSITORY = Path(__file__).resolve().parents[1]
CONFIGS = compare.CONFIGS_DIR
SEEDS = ['--seeds', '1', '2']


def compare_args(root, name, out, *extra):
    return ['compare', '--models', 'lightgcn', 'vbpr', '--set', f'data.root={root}',
            '--set', f'data.name={name}', '--set', 'train.batch_size=128',
            '--set', 'model.embedding_dim=8', '--set', 'eval.ks=[10,20]', '--budget', '2',
            '--epochs', '2', *SEEDS, '--out', str(out), '--quiet', *extra]


@pytest.fixture(scope='module')
def finished(tiny_mmrec_root, tmp_path_factory):
    """One finished comparison (two models, two seeds) and what it printed."""
    out = tmp_path_factory.mktemp('compare') / 'cmp'
    pytest.importorskip('matplotlib')
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        assert main(compare_args(*tiny_mmrec_root, out)) == 0
    return out, buffer.getvalue()


def _rows(path):
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def test_registry_lists_every_model_with_a_description():
    assert set(MODELS) == {'anchorrec', 'alignrec', 'lightgcn', 'vbpr', 'freedom', 'bm3',
                           'damrs', 'lattice', 'lgmrec', 'smore'}
    for name, cls in MODELS.items():
        assert get_model_class(name.upper()) is cls
        assert cls.description and '\n' not in cls.description
    with pytest.raises(ConfigError, match='must be one of alignrec, anchorrec, bm3'):
        get_model_class('nosuchmodel')


def test_models_command_prints_one_line_per_model(capsys):
    assert main(['models']) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == list(MODELS)
    vbpr = next(line for line in lines if line.startswith('vbpr'))
    assert '[text, image]' in vbpr and MODELS['vbpr'].description in vbpr
    assert '[ids only]' in next(line for line in lines if line.startswith('lightgcn'))


def test_published_configs_carry_the_spec_grids():
    for name in compare.PAPER_DATASETS:
        config = load_config(CONFIGS / 'alignrec' / f'{name}.yaml')
        assert (config.model_name, config.data.name) == ('alignrec', name)
        assert config.grid == {
            'train.lr': [0.005, 0.003, 0.001, 0.0007, 0.0005, 0.0003, 0.0001],
            'model.cl_weight': [1e-4, 1e-3, 5e-3, 0.01, 0.1],
            'model.sim_weight': [0.1, 0.2, 0.3, 0.4, 0.5],
        }
        assert config.train.patience == 30 and config.model.tau == 0.2
        assert config.model.reg_weight == 1e-4 and config.model.n_layers == 1
    grids = {
        'vbpr': {'model.reg_weight': [2, 1, 0.1, 0.01, 1e-3, 1e-4, 1e-5],
                 'train.lr': [0.005, 0.001, 0.0005, 0.0001]},
        'freedom': {'model.edge_dropout': [0.8, 0.85, 0.9], 'model.reg_weight': [0.03, 0.05, 0.07],
                    'train.lr': [0.002, 0.001, 0.0005, 0.0003]},
        'bm3': {'train.lr': [0.005, 0.001, 0.0005, 0.0001], 'model.reg_weight': [0.1, 0.01],
                'model.n_layers': [1, 2], 'model.dropout': [0.3, 0.5]},
        'damrs': {'model.kl_weight': [0, 1e-4, 1e-3, 1e-2, 0.1, 1, 10],
                  'model.neighbor_weight': [0, 1e-4, 1e-3, 1e-2, 0.1, 1],
                  'model.n_mm_layers': [1, 2], 'model.knn_k': [3, 5, 10, 15, 20],
                  'train.lr': [1e-3, 5e-4, 1e-4]},
        'lgmrec': {},
        'smore': {'model.n_ui_layers': [3, 4], 'model.image_knn_k': [10, 15, 20, 40],
                  'model.text_knn_k': [10, 15, 20, 40], 'model.reg_weight': [1e-5, 1e-4],
                  'model.dropout': [0.0, 0.1]},
    }
    for model, grid in grids.items():
        config = load_config(CONFIGS / 'baselines' / f'{model}.yaml')
        assert config.model_name == model and config.grid == grid
        assert config.seeds == [999, 777, 555, 333, 111] and config.train.batch_size == 2048
    assert load_config(CONFIGS / 'baselines' / 'lightgcn.yaml').model_name == 'lightgcn'


def test_published_config_lookup():
    path = compare.published_config_path
    assert path('anchorrec', 'sports') == CONFIGS / 'sports.yaml'
    assert path('anchorrec', 'default') == CONFIGS / 'baby.yaml'  # not the packaged defaults
    assert path('alignrec', 'office') == CONFIGS / 'alignrec' / 'office.yaml'
    assert path('alignrec', 'mydata') == CONFIGS / 'alignrec' / 'baby.yaml'
    assert path('bm3', 'games') == CONFIGS / 'baselines' / 'bm3.yaml'
    with pytest.raises(ConfigError, match="no published config for model 'bm3'"):
        path('bm3', 'baby', CONFIGS / 'nowhere')


def test_budget_starts_from_the_published_settings_deterministic_nested_and_bounded():
    for first in (0, 37, 174):
        a = compare.budget_indices(175, 8, first)
        assert a == compare.budget_indices(175, 8, first) == sorted(a) and len(set(a)) == 8
        assert first in a and compare.budget_indices(175, 1, first) == [first]
        assert set(a) <= set(compare.budget_indices(175, 20, first))
        assert set(compare.budget_indices(175, 2, first)) <= set(a)
    assert compare.budget_indices(12, 50, 3) == list(range(12))
    assert compare.budget_indices(12, None, 3) == list(range(12))
    assert compare.budget_indices(175, 8) != list(range(8))  # spread over the grid
    with pytest.raises(ConfigError, match='--budget must be >= 1'):
        compare.budget_indices(12, 0)


def _shipped_configs():
    return sorted(p for p in CONFIGS.rglob('*.yaml'))


def test_every_shipped_config_s_own_settings_are_a_point_of_its_grid():
    """A budget starts from each model's best-known settings, the model:/train: values of its
    file: they must be one of the grid's combinations."""
    for path in _shipped_configs():
        config = load_config(path)
        c = compare.published_combination(config, path)
        for key, value in config.combinations()[c].items():
            section, name = key.split('.')
            assert getattr(getattr(config, section), name) == value, (path, key)


def test_the_published_combination_of_each_model():
    lightgcn = load_config(CONFIGS / 'baselines' / 'lightgcn.yaml')
    # grid train.lr [0.005, 0.001, 0.0005, 0.0001] x model.lambda_reg [0.1, 0.01, 0.001]
    assert (lightgcn.train.lr, lightgcn.model.lambda_reg) == (0.001, 0.001)
    assert compare.published_combination(lightgcn) == 1 * 3 + 2
    moved = load_config(CONFIGS / 'baselines' / 'lightgcn.yaml', ['train.lr=0.002'])
    with pytest.raises(ConfigError, match=r'x.yaml: train.lr is 0.002, not one of the grid '
                                          r'values \[0.005, 0.001, 0.0005, 0.0001\]'):
        compare.published_combination(moved, 'x.yaml')
    assert compare.published_combination(load_config(None)) == 0  # no grid: one combination


def test_compare_writes_the_table_csv_and_chart(finished):
    out, printed = finished
    table = (out / 'comparison.md').read_text()
    assert table in printed and 'comparison.png' in printed
    rows = _rows(out / 'comparison.csv')
    assert sorted(r['model'] for r in rows) == ['lightgcn', 'popularity', 'vbpr']
    assert [r['rank'] for r in rows] == ['1', '2', '3']
    recalls = [float(r['test_recall@20']) for r in rows]
    assert recalls == sorted(recalls, reverse=True)
    for row in (r for r in rows if r['status'] == 'ok'):
        summary = json.loads((out / row['model'] / 'summary.json').read_text())
        for key in ('recall@10', 'recall@20', 'ndcg@10', 'ndcg@20'):
            assert float(row[f'test_{key}']) == pytest.approx(summary['test'][key])
            assert float(row[f'test_{key}_std']) == pytest.approx(summary['test'][f'{key}_std'])
            cell = f"{summary['test'][key]:.4f} ± {summary['test'][f'{key}_std']:.4f}"
            assert cell in table
        assert json.loads(row['selected']) == summary['selected']['params']
        assert json.loads(row['seeds']) == [1, 2] == summary['selected']['seeds']
        runs = _rows(out / row['model'] / 'runs.csv')
        assert len(runs) == 2 * 2 and {r['seed'] for r in runs} == {'1', '2'}  # budget x seeds
        assert float(row['epoch_time_s']) > 0
        # the published settings are among the two combinations trained
        published = compare.published_combination(load_config(
            CONFIGS / 'baselines' / f"{row['model']}.yaml"))
        assert f'c{published:03d}' in {r['combination'] for r in runs}
        assert json.loads(row['epochs_run']) == [2, 2]  # the cap: published patience is 20
        assert json.loads(row['best_epochs']) == summary['selected']['best_epochs']
        stopped = ', '.join(f'2 ({b})' for b in summary['selected']['best_epochs'])
        assert f'| {stopped} |' in table
        assert 'epoch cap 2 reached (2/2 runs)' in json.loads(row['flags'])
    assert '| 2/12 x 2 |' in table and '| 2/28 x 2 |' in table
    png = (out / 'comparison.png').read_bytes()
    assert png[:8] == b'\x89PNG\r\n\x1a\n' and len(png) > 5000


def test_the_popularity_row_is_the_evaluator_s_and_what_ranks_below_it_is_flagged(
        finished, tiny_mmrec_root):
    out, printed = finished
    rows = {r['model']: r for r in _rows(out / 'comparison.csv')}
    reference = rows['popularity']
    assert reference['status'] == 'reference' and reference['seeds'] == ''
    data = MMRecDataset(*tiny_mmrec_root, modalities=(), log=False)[0]
    for split in ('valid', 'test'):
        assert float(reference[f'{split}_recall@20']) == pytest.approx(
            popularity_recall(data, 20, split), abs=1e-6)
        assert float(reference[f'{split}_recall@20_std']) == 0.0
    table = (out / 'comparison.md').read_text()
    line = next(r for r in table.splitlines() if '*popularity*' in r)
    assert line.startswith(f"| {reference['rank']} | *popularity* |")
    assert 'reference, not trained' in line
    for model in ('lightgcn', 'vbpr'):
        row = rows[model]
        below = (float(row['test_recall@20']) <= float(reference['test_recall@20'])
                 or float(row['valid_recall@20']) <= float(reference['valid_recall@20']))
        flagged = any(f.startswith('not above popularity') for f in json.loads(row['flags']))
        assert flagged == below
        if int(row['rank']) > int(reference['rank']):
            assert flagged
    assert len(json.loads((out / 'compare.json').read_text())['rows']) == 3


def _row(model, test, valid, epochs_run=(5, 7), stopped=(True, True)):
    metrics = lambda r: {**{m: r for m in compare.TABLE_METRICS},  # noqa: E731
                         **{f'{m}_std': 0.0 for m in compare.TABLE_METRICS}}
    return {'model': model, 'status': 'ok', 'combinations': 1, 'grid_size': 12,
            'seeds': [1, 2], 'epoch_cap': 7, 'selected': {'train.lr': 0.001}, 'published': True,
            'valid': metrics(valid), 'test': metrics(test), 'best_epochs': [3, 4],
            'epochs_run': list(epochs_run), 'stopped_early': list(stopped),
            'epoch_time_s': 1.0}


def test_flags_name_a_model_below_popularity_and_one_stopped_by_the_cap(caplog):
    base = load_config(None, ['eval.ks=[10,20]'])
    reference = {'model': 'popularity', 'status': 'reference',
                 'valid': _row('p', 0.2, 0.2)['valid'], 'test': _row('p', 0.2, 0.2)['test']}
    rows = [_row('good', 0.3, 0.3), _row('weak', 0.1, 0.15), _row('lucky', 0.25, 0.2),
            _row('short', 0.4, 0.4, epochs_run=(7, 6), stopped=(False, True))]
    with caplog.at_level('WARNING', logger='anchorrec_pyg.compare'):
        for row in rows:
            row['flags'] = compare._check_against(row, reference, 7, 'recall@20')
    assert [r['flags'] for r in rows] == [
        [], ['not above popularity (test, valid)'], ['not above popularity (valid)'],
        ['epoch cap 7 reached (1/2 runs)']]
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith('weak: its selected run does not beat the popularity reference '
                            '(test recall@20 0.1000 vs 0.2000') for m in messages)
    assert any(m.startswith('short: 1 of its 2 selected runs reached the epoch cap (7)')
               for m in messages)
    ranked = compare.rank_rows([*rows, reference])
    assert [r['model'] for r in ranked] == ['short', 'good', 'lucky', 'popularity', 'weak']
    lines = compare.format_table(ranked, base).splitlines()
    assert lines[2].startswith('| 1 | short |') and lines[2].endswith(
        '| 7 (3), 6 (4) | 1.00 | 1/12 x 2 | lr=0.001 (published) | ⚠ epoch cap 7 reached '
        '(1/2 runs) |')
    assert lines[5].startswith('| 4 | *popularity* | 0.2000 ± 0.0000 |')
    assert lines[6].endswith('| ⚠ not above popularity (test, valid) |')


def test_patience_ends_runs_before_the_epoch_cap(tiny_mmrec_root, tmp_path):
    base = load_config(None, [f'data.root={tiny_mmrec_root[0]}', 'data.name=tiny'])
    configs = compare.compare_configs(['lightgcn', 'vbpr'], base, epochs=60, patience=1)
    assert all(c.train.patience == 1 and c.train.epochs == 60 for c in configs.values())
    out = tmp_path / 'cmp'
    args = compare_args(*tiny_mmrec_root, out)
    args[args.index('--models') + 1:args.index('--models') + 3] = ['lightgcn']
    args[args.index('--seeds') + 1:args.index('--seeds') + 3] = ['1']
    args[args.index('--epochs') + 1] = '60'
    args[args.index('--budget') + 1] = '1'
    assert main([*args, '--patience', '1']) == 0
    (row, ) = [r for r in _rows(out / 'comparison.csv') if r['model'] == 'lightgcn']
    (epochs_run, ) = json.loads(row['epochs_run'])
    (best, ) = json.loads(row['best_epochs'])
    assert json.loads(row['stopped_early']) == [True]
    assert epochs_run == best + 1 < 60  # one validation without improvement ends it
    assert not any(f.startswith('epoch cap') for f in json.loads(row['flags']))
    assert main([*args, '--patience', '0']) == 2


def test_rerun_resumes_without_training(finished, tiny_mmrec_root, monkeypatch, capsys):
    out, _ = finished
    before = (out / 'comparison.csv').read_text()

    def no_training(self, epoch):
        raise AssertionError('a finished run was trained again')

    monkeypatch.setattr(Trainer, '_train_epoch', no_training)
    assert main(compare_args(*tiny_mmrec_root, out)) == 0
    after = _rows(out / 'comparison.csv')
    assert [(r['model'], r['test_recall@20']) for r in after] == [
        (r['model'], r['test_recall@20']) for r in _rows_text(before)]
    # a larger budget trains only the new combinations
    calls = []
    monkeypatch.setattr(Trainer, '_train_epoch',
                        lambda self, epoch: calls.append(epoch) or {'loss': 0.5})
    args = compare_args(*tiny_mmrec_root, out)
    args[args.index('--budget') + 1] = '3'
    assert main(args) == 0
    assert len(calls) == 2 * 2 * 2  # (one new combination x 2 seeds x 2 epochs) per model
    assert '| 3/12 x 2 |' in capsys.readouterr().out


def test_a_folder_written_before_a_key_existed_resumes(finished, tiny_mmrec_root, tmp_path,
                                                       monkeypatch, capsys):
    """compare.json, config.yaml and checkpoints without train.mode (a key added later, at its
    default) are the same runs: nothing is trained again; a changed value is still refused."""
    out = tmp_path / 'cmp'
    shutil.copytree(finished[0], out)

    def no_training(self, epoch):
        raise AssertionError('a finished run was trained again')

    monkeypatch.setattr(Trainer, '_train_epoch', no_training)
    assert main(compare_args(*tiny_mmrec_root, out)) == 0
    before = _rows(out / 'comparison.csv')
    identity = json.loads((out / compare.IDENTITY_FILE).read_text())
    for config in identity['identity']['models'].values():
        assert config['train'].pop('mode') == 'full'
    (out / compare.IDENTITY_FILE).write_text(json.dumps(identity))
    for path in out.rglob('config.yaml'):
        raw = yaml.safe_load(path.read_text())
        raw['train'].pop('mode')
        path.write_text(yaml.safe_dump(raw))
    for path in out.rglob('checkpoint.pt'):
        state = {k: v for k, v in load_checkpoint(path).items() if k not in ('format', 'version')}
        state['config']['train'].pop('mode')
        save_checkpoint(path, state)
    assert main(compare_args(*tiny_mmrec_root, out)) == 0
    assert [(r['model'], r['test_recall@20']) for r in _rows(out / 'comparison.csv')] == [
        (r['model'], r['test_recall@20']) for r in before]
    capsys.readouterr()
    assert main(compare_args(*tiny_mmrec_root, out, '--set', 'train.mode=sampled')) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and "(train.mode: 'full' != 'sampled')" in err, err


def _rows_text(text):
    return list(csv.DictReader(text.splitlines()))


@pytest.mark.parametrize('change,match', [
    (['--set', 'data.knn_k=5'], r'other data settings \(data.knn_k: 10 != 5\)'),
    (['--set', 'eval.batch_size=7'], r'other eval settings'),
    (['--epochs', '3'], r'holds lightgcn trained with another configuration '
                        r'\(train.epochs: 2 != 3\)'),
])
def test_a_folder_of_another_dataset_or_config_is_refused(
        finished, tiny_mmrec_root, capsys, change, match):
    out, _ = finished
    assert main(compare_args(*tiny_mmrec_root, out) + change) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1
    assert re.search(match, err), err


def test_without_matplotlib_the_tables_are_written_and_the_hint_printed(
        tiny_mmrec_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, 'matplotlib', None)  # import matplotlib raises ImportError
    out = tmp_path / 'cmp'
    args = compare_args(*tiny_mmrec_root, out)
    args[args.index('--models') + 1:args.index('--models') + 3] = ['lightgcn']
    args[args.index('--seeds') + 1:args.index('--seeds') + 3] = ['1']
    args[args.index('--epochs') + 1] = '1'
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert (out / 'comparison.md').is_file() and (out / 'comparison.csv').is_file()
    assert not (out / 'comparison.png').exists()
    assert "no chart: pip install 'anchorrec-pyg[plots]'" in printed


def test_missing_modality_fails_before_training(tiny_mmrec_root, tmp_path, capsys):
    root, name = tiny_mmrec_root
    copy = tmp_path / 'data'
    shutil.copytree(Path(root) / name, copy / name, ignore=shutil.ignore_patterns('processed'))
    (copy / name / 'image_feat.npy').unlink()
    out = tmp_path / 'cmp'
    assert main(compare_args(copy, name, out)) == 2
    err = capsys.readouterr().err
    assert err.startswith('anchorrec-pyg: error: vbpr needs text, image: ')
    assert 'image_feat.npy' in err and err.count('\n') == 1
    assert not (out / 'lightgcn').exists()  # nothing was trained


def test_bad_model_names_and_overrides(tiny_mmrec_root, tmp_path, capsys):
    args = compare_args(*tiny_mmrec_root, tmp_path / 'x')
    args[args.index('--models') + 1] = 'nosuchmodel'
    assert main(args) == 2
    assert ("unknown model 'nosuchmodel'; available: anchorrec, alignrec, lightgcn, vbpr, "
            'freedom, bm3, damrs, lattice, lgmrec, smore') in capsys.readouterr().err
    assert main(compare_args(*tiny_mmrec_root, tmp_path / 'x', '--set', 'model.tau=0.1')) == 2
    assert 'unknown key model.tau for every compared model' in capsys.readouterr().err
    assert main(compare_args(*tiny_mmrec_root, tmp_path / 'x', '--budget', '0')) == 2
    assert '--budget must be >= 1' in capsys.readouterr().err
    assert not (tmp_path / 'x').exists()


def test_model_keys_go_only_to_models_that_have_them(tiny_mmrec_root):
    base = load_config(None, [f'data.root={tiny_mmrec_root[0]}', 'data.name=tiny'])
    configs = compare.compare_configs(['lightgcn', 'bm3'], base, ['model.n_layers=2',
                                                                  'model.dropout=0.3'],
                                      epochs=4, seeds=[5])
    assert configs['lightgcn'].model.n_layers == 2 and configs['bm3'].model.n_layers == 2
    assert configs['bm3'].model.dropout == 0.3
    for config in configs.values():
        assert config.data == base.data and config.eval == base.eval
        assert config.train.epochs == 4 and config.seeds == [5]
    assert configs['bm3'].grid['model.reg_weight'] == [0.1, 0.01]  # the published grid
    # a budget starts from the settings: one outside the grid (which would override it) is refused
    with pytest.raises(ConfigError, match=r'bm3.yaml: model.n_layers is 3, not one of the grid '
                                          r'values \[1, 2\]'):
        compare.compare_configs(['lightgcn', 'bm3'], base, ['model.n_layers=3'])
