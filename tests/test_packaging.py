"""The published configurations ship with the package: ``anchorrec_pyg/configs`` is a link to the
repository's ``configs/`` (one copy), a built wheel carries every file of it, and `compare`
resolves them from the installed package, not from a source checkout."""
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from anchorrec_pyg import compare
from anchorrec_pyg.models import MODELS

REPOSITORY = Path(__file__).resolve().parents[1]
SOURCES = ('pyproject.toml', 'setup.cfg', 'README.md', 'anchorrec_pyg', 'configs')


def _repository_configs():
    root = REPOSITORY / 'configs'
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob('*.yaml'))}


def test_compare_reads_the_repository_configs_through_the_package():
    assert compare.CONFIGS_DIR == Path(compare.__file__).resolve().parent / 'configs'
    assert compare.CONFIGS_DIR.resolve() == (REPOSITORY / 'configs').resolve()
    assert (REPOSITORY / 'configs').is_dir() and not (REPOSITORY / 'configs').is_symlink()


def test_the_package_data_globs_cover_every_config():
    tomllib = pytest.importorskip('tomllib')
    from fnmatch import fnmatch
    pyproject = tomllib.loads((REPOSITORY / 'pyproject.toml').read_text())
    globs = pyproject['tool']['setuptools']['package-data']['anchorrec_pyg']
    for name in _repository_configs():
        assert any(fnmatch(f'configs/{name}', g) and g.count('/') == name.count('/') + 1
                   for g in globs), f'configs/{name} would not ship ({globs})'


@pytest.fixture(scope='module')
def wheel(tmp_path_factory):
    """A wheel built from a copy of the sources, as `pip install .` builds it."""
    setuptools = pytest.importorskip('setuptools')
    major, minor = (int(v) for v in setuptools.__version__.split('.')[:2])
    if (major, minor) < (64, 0):
        pytest.skip(f'setuptools {setuptools.__version__} cannot build this project')
    if (major, minor) < (70, 1):
        pytest.importorskip('wheel')
    source = tmp_path_factory.mktemp('source')
    for name in SOURCES:
        path = REPOSITORY / name
        if path.is_dir():
            shutil.copytree(path, source / name, symlinks=True,
                            ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))
        else:
            shutil.copy2(path, source / name)
    dist = tmp_path_factory.mktemp('dist')
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation',
                    '--no-index', '-q', '-w', str(dist), str(source)], check=True,
                   capture_output=True)
    (path, ) = dist.glob('anchorrec_pyg-*.whl')
    return path


def test_the_wheel_ships_exactly_the_repository_configs(wheel):
    with zipfile.ZipFile(wheel) as archive:
        shipped = {name[len('anchorrec_pyg/configs/'):]: archive.read(name)
                   for name in archive.namelist()
                   if name.startswith('anchorrec_pyg/configs/')}
    assert shipped == _repository_configs()


def test_compare_finds_the_configs_of_an_installed_package(wheel, tmp_path):
    site = tmp_path / 'site'
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    script = (
        'import json; from anchorrec_pyg import compare; from anchorrec_pyg.config import '
        'load_config; from anchorrec_pyg.models import MODELS; '
        'paths = {f"{m}/{d}": str(compare.published_config_path(m, d)) '
        'for m in MODELS for d in ("default", "sports")}; '
        '[load_config(p) for p in paths.values()]; '
        'print(json.dumps({"module": compare.__file__, "dir": str(compare.CONFIGS_DIR), '
        '"paths": paths}))')
    env = {**os.environ, 'PYTHONPATH': str(site)}
    done = subprocess.run([sys.executable, '-c', script], cwd=tmp_path, env=env, check=True,
                          capture_output=True, text=True)
    found = json.loads(done.stdout)
    assert Path(found['module']).is_relative_to(site)  # the installed copy, not the checkout
    assert Path(found['dir']) == site / 'anchorrec_pyg' / 'configs'
    assert set(found['paths']) == {f'{m}/{d}' for m in MODELS for d in ('default', 'sports')}
    for key, path in found['paths'].items():
        assert Path(path).is_relative_to(site / 'anchorrec_pyg' / 'configs'), key
    assert found['paths']['anchorrec/sports'].endswith('configs/sports.yaml')
