"""Config loading and validation (Contract 3): defaults = configs/default.yaml, typed keys,
one-line errors naming the dotted key."""
import logging
from pathlib import Path

import pytest
import yaml

from anchorrec_pyg.config import (
    ExperimentConfig,
    config_from_dict,
    config_to_dict,
    dump_config,
    first_difference,
    load_config,
    parse_override,
    resolved_identity,
    run_identity,
    stored_identity,
)
from anchorrec_pyg.errors import ConfigError
from anchorrec_pyg.models import get_model_class

CONFIGS = Path(__file__).resolve().parents[1] / 'configs'


def test_packaged_defaults_equal_default_yaml():
    with open(CONFIGS / 'default.yaml') as f:
        on_disk = yaml.safe_load(f)
    assert config_to_dict(ExperimentConfig()) == on_disk
    assert config_to_dict(load_config()) == on_disk
    assert config_to_dict(load_config(CONFIGS / 'default.yaml')) == on_disk


@pytest.mark.parametrize('name', ['baby', 'sports', 'office', 'games'])
def test_dataset_configs_carry_the_published_grid(name):
    config = load_config(CONFIGS / f'{name}.yaml')
    assert config.model_name == 'anchorrec'
    assert config.data.name == name
    assert config.train.batch_size == 2048
    assert (config.train.lr_decay, config.train.lr_decay_every) == (0.96, 50)
    assert config.eval.ks == [5, 10, 20, 50] and config.eval.metric == 'recall@20'
    assert config.seeds == [999, 777, 555, 333, 111]
    grid = config.grid
    assert grid['model.n_layers'] == [1, 2, 3]
    assert grid['model.lambda_reg'] == [0.001, 0.01, 0.1]
    assert grid['train.lr'] == [0.005, 0.003, 0.001, 0.0007, 0.0005, 0.0003, 0.0001]
    assert grid['model.aal_weight'] == grid['model.amp_weight'] == [0, 1e-4, 1e-3, 1e-2, 0.1, 1]
    assert grid['model.tau'] == [0.05, 0.1, 0.25, 0.5, 1]
    assert len(config.combinations()) == 3 * 3 * 7 * 6 * 6 * 5


def test_overrides_and_round_trip(tmp_path):
    config = load_config(None, ['train.lr=5e-4', 'eval.ks=[10, 20]', 'train.patience=null',
                                'model.n_layers=2', 'seeds=[1,2]', 'grid.model.tau=[0.1,0.5]'])
    assert config.train.lr == 0.0005 and isinstance(config.train.lr, float)
    assert config.eval.ks == [10, 20] and config.train.patience is None
    assert config.model.n_layers == 2 and config.seeds == [1, 2]
    assert config.combinations() == [{'model.tau': 0.1}, {'model.tau': 0.5}]
    path = tmp_path / 'c.yaml'
    path.write_text(dump_config(config))
    assert config_to_dict(load_config(path)) == config_to_dict(config)
    run = config.single_run({'model.tau': 0.5}, seed=2)
    assert run.model.tau == 0.5 and run.grid == {} and run.seeds == [2]


def test_int_accepted_for_float_and_model_switch():
    config = config_from_dict({'train': {'lr': 1}, 'model': {'name': 'lightgcn', 'n_layers': 3}})
    assert config.train.lr == 1.0 and isinstance(config.train.lr, float)
    assert isinstance(config.model, get_model_class('lightgcn').Config)


@pytest.mark.parametrize('raw, message', [
    ({'model': {'lamda_reg': 0.1}},
     r'^unknown key model.lamda_reg \(did you mean model.lambda_reg\?\)$'),
    ({'trian': {}}, r'^unknown key trian \(did you mean train\?\)$'),
    ({'train': {'epoch': 3}}, r'^unknown key train.epoch \(did you mean train.epochs\?\)$'),
    ({'train': {'epochs': True}}, r'^train.epochs must be int, got True$'),
    ({'train': {'epochs': '10'}}, r"^train.epochs must be int, got '10'$"),
    ({'train': {'lr': 'fast'}}, r"^train.lr must be float, got 'fast'$"),
    ({'train': {'epochs': 0}}, r'^train.epochs must be >= 1 \(got 0\)$'),
    ({'train': {'lr': -1}}, r'^train.lr must be > 0'),
    ({'train': {'device': 'gpu'}}, r'^train.device must be'),
    ({'eval': {'ks': [10], 'metric': 'recall@20'}}, r'^eval.metric uses K = 20'),
    ({'eval': {'ks': [10, 'x']}}, r"^eval.ks\[1\] must be int, got 'x'$"),
    ({'model': {'name': 'anchorrek'}}, r'^model.name must be one of'),
    ({'model': {'tau': 0}}, r'^model.tau '),
    ({'model': {'n_layers': 1.5}}, r'^model.n_layers must be int, got 1.5$'),
    ({'grid': {'model.tau': [0.1, -1]}}, r'^grid.model.tau value -1: model.tau '),
    ({'grid': {'model.tua': [0.1]}}, r'^grid.model.tua value 0.1: unknown key model.tua'),
    ({'grid': {'train.lr': 0.1}}, r'^grid.train.lr must be a non-empty list'),
    ({'grid': {'model.name': ['lightgcn']}}, r'^grid.model.name cannot be searched'),
    ({'seeds': [1, 1]}, r'^seeds must not repeat a seed'),
    ({'seeds': 'abc'}, r"^seeds must be list of int, got 'abc'$"),
    ({'data': {'name': 'baby-real'}}, r'^data.name must be a synthetic preset'),
    ({'data': {'modalities': ['audio']}}, r"^data.modalities entries must be"),
    ([1, 2], r'^a config must be a mapping'),
])
def test_validation_errors_name_the_key(raw, message):
    with pytest.raises(ConfigError, match=message) as info:
        config_from_dict(raw)
    assert '\n' not in str(info.value)


def test_file_errors_name_the_file(tmp_path):
    bad = tmp_path / 'bad.yaml'
    bad.write_text('train:\n  lr: [0.1\n')
    with pytest.raises(ConfigError, match=r'bad.yaml: not valid YAML') as info:
        load_config(bad)
    assert '\n' not in str(info.value)
    typo = tmp_path / 'typo.yaml'
    typo.write_text('train:\n  batchsize: 10\n')
    with pytest.raises(ConfigError, match=r'typo.yaml: unknown key train.batchsize \(did you '
                       r'mean train.batch_size\?\)'):
        load_config(typo)
    with pytest.raises(ConfigError, match='config file not found'):
        load_config(tmp_path / 'missing.yaml')


@pytest.mark.parametrize('text, message', [
    ('train.lr', 'malformed override'),
    ('=3', 'malformed override'),
    ('train.lr=[0.1', 'is not valid YAML'),
])
def test_override_parse_errors(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_override(text)


def test_override_errors_name_the_key():
    with pytest.raises(ConfigError, match=r'^unknown key train.lrr \(did you mean train.lr\?\)$'):
        load_config(None, ['train.lrr=0.1'])
    with pytest.raises(ConfigError, match=r'cannot set train.lr.x: train.lr is not a section'):
        load_config(None, {'train.lr': 0.1, 'train.lr.x': 1})


def test_duplicate_keys_are_refused(tmp_path):
    path = tmp_path / 'dup.yaml'
    path.write_text('train:\n  lr: 0.1\n  epochs: 3\n  lr: 0.2\n')
    with pytest.raises(ConfigError, match=r"dup.yaml: not valid YAML \(duplicate key 'lr' "
                       r'\(first on line 2, again on line 4\)') as info:
        load_config(path)
    assert '\n' not in str(info.value)
    path.write_text('train:\n  lr: 0.1\ntrain:\n  epochs: 3\n')
    with pytest.raises(ConfigError, match=r"duplicate key 'train' \(first on line 1, again on "
                       r'line 3\)'):
        load_config(path)
    with pytest.raises(ConfigError, match=r"--set eval: .*duplicate key 'ks'"):
        load_config(None, ['eval={ks: [5], ks: [10]}'])


@pytest.mark.parametrize('text', ['', '\n\n', '# only a comment\n'])
def test_empty_config_says_it_uses_the_defaults(tmp_path, caplog, text):
    path = tmp_path / 'empty.yaml'
    path.write_text(text)
    with caplog.at_level(logging.WARNING, logger='anchorrec_pyg.config'):
        config = load_config(path)
    assert config == load_config(None)
    assert f'{path}: empty config: using the defaults' in caplog.text


@pytest.mark.parametrize('name', ['freedom', 'vbpr', 'bm3', 'lightgcn'])
def test_mmrec_baseline_configs_keep_mmrec_s_constant_learning_rate(name):
    # MMRec's overall.yaml sets learning_rate_scheduler [1.0, 50] and these models' yamls do not
    # override it: no decay (issue 16, checked side by side with the published MMRec code).
    config = load_config(CONFIGS / 'baselines' / f'{name}.yaml')
    assert config.model_name == name
    assert config.train.lr_decay == 1.0


def test_data_parallel_rule_heads_config_yaml():
    one = load_config(None, [])
    assert one.train.data_parallel is None and not dump_config(one).startswith('#')
    two = load_config(None, ['train.nproc=4', 'train.batch_size=2048', 'train.lr=0.001'])
    note = ('data-parallel: 4 processes, global batch 2048 (512 rows per process), learning '
            'rate 0.001 as for one process (no scaling rule: the global batch does not change '
            'with nproc)')
    assert two.train.data_parallel == note
    text = dump_config(two)
    assert text.splitlines()[0] == f'# {note}'
    assert yaml.safe_load(text) == config_to_dict(two)


@pytest.mark.parametrize('model', ['anchorrec', 'alignrec'])
def test_stored_config_without_a_behaviour_key_counts_as_its_old_value(tmp_path, model):
    """A run folder written before ``model.raw_from_files`` existed trained on the file rows:
    its stored config reads as ``raw_from_files: true`` (not the new default), so resuming it
    with today's defaults names the key; a key without a changed meaning still counts as its
    default, and a stored config that states the key keeps its value."""
    current = config_to_dict(config_from_dict({'model': {'name': model}}))
    old = {'model': {k: v for k, v in current['model'].items() if k != 'raw_from_files'},
           'train': {k: v for k, v in current['train'].items() if k != 'mode'}}
    path = tmp_path / 'config.yaml'
    path.write_text(yaml.safe_dump(old))
    stored = stored_identity(path)
    assert stored['model']['raw_from_files'] is True
    assert stored['train']['mode'] == current['train']['mode']
    assert first_difference(stored, run_identity(current)) == (
        'model.raw_from_files: True != False')
    assert first_difference(resolved_identity(current), run_identity(current)) is None
    assert resolved_identity(old)['model']['raw_from_files'] is True


def test_stored_identity_errors_name_the_file(tmp_path):
    path = tmp_path / 'config.yaml'
    path.write_text('model:\n  name: anchorrec\n  tau: -1\n')
    with pytest.raises(ConfigError, match=r'config\.yaml: model\.tau must be > 0'):
        stored_identity(path)


def test_large_catalogue_config_is_sampled_small_batch_with_the_sqrt_scaled_lr():
    """configs/large-catalogue.yaml (docs/scale.md, "Batch size and the subgraph's filling"):
    only train: keys change; the learning rate is the default's times sqrt(B / default B)."""
    config = load_config(CONFIGS / 'large-catalogue.yaml')
    default = ExperimentConfig()
    train = config.train
    assert (train.mode, train.fanout, train.knn_fanout, train.sparse_updates) == (
        'sampled', [5, 2], 3, True)
    assert train.batch_size == 128
    assert train.lr == pytest.approx(default.train.lr * (128 / default.train.batch_size) ** 0.5)
    ours, defaults = config_to_dict(config), config_to_dict(default)
    assert {k: v for k, v in ours.items() if k != 'train'} == {
        k: v for k, v in defaults.items() if k != 'train'}


def test_large_catalogue_config_trains_end_to_end(tmp_path):
    from anchorrec_pyg.cli import main
    out = tmp_path / 'run'
    assert main(['train', '--config', str(CONFIGS / 'large-catalogue.yaml'), '--set',
                 'data.name=tiny', '--set', 'train.epochs=1', '--set', 'eval.ks=[20]',
                 '--device', 'cpu', '--quiet', '--out', str(out)]) == 0
    history = (out / 'history.csv').read_text().splitlines()
    assert len(history) == 2 and 'valid_recall@20' in history[0]
