"""anchorrec_pyg.io: atomic writes (modes, errors), checksums consistent at every step of a
write, folder locks, default output folders."""
from __future__ import annotations

import os
import stat
import zipfile

import pytest

from anchorrec_pyg import io
from anchorrec_pyg.errors import FolderInUseError, OutputError


@pytest.fixture
def umask():
    """Sets the process umask for one test and restores it."""
    previous = os.umask(0o022)
    yield os.umask
    os.umask(previous)


@pytest.mark.parametrize('mask, mode', [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_respect_the_umask(tmp_path, umask, mask, mode):
    umask(mask)
    io.atomic_write_text(tmp_path / 'a.txt', 'x', checksum=True)
    assert stat.S_IMODE((tmp_path / 'a.txt').stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / 'a.txt.sha256').stat().st_mode) == mode


def test_atomic_write_replaces_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / 'sub' / 'a.txt'
    io.atomic_write_text(path, 'one')
    io.atomic_write_text(path, 'two')
    assert path.read_text() == 'two'

    def fail(f):
        f.write(b'half')
        raise RuntimeError('killed')

    with pytest.raises(RuntimeError):
        io.atomic_write(path, fail)
    assert path.read_text() == 'two' and os.listdir(path.parent) == ['a.txt']


def test_unwritable_targets_are_one_line_errors(tmp_path):
    with pytest.raises(OutputError, match=r'is a folder; name a file to write'):
        io.atomic_write_text(tmp_path, 'x')
    (tmp_path / 'file').write_text('x')
    with pytest.raises(OutputError, match=r'file is not a folder; choose another'):
        io.atomic_write_text(tmp_path / 'file' / 'a.txt', 'x')
    with pytest.raises(OutputError, match=r'file/run is not a folder \(.*file is a file\)'):
        io.check_writable_folder(tmp_path / 'file' / 'run')
    read_only = tmp_path / 'ro'
    read_only.mkdir()
    read_only.chmod(0o555)
    try:
        with pytest.raises(OutputError, match=r'cannot write in .*ro/new: .*ro is read-only'):
            io.check_writable_folder(read_only / 'new')
        with pytest.raises(OutputError, match=r'ro is read-only'):
            io.atomic_write_text(read_only / 'a.txt', 'x')
    finally:
        read_only.chmod(0o755)
    assert not (read_only / 'new').exists() and not any(read_only.iterdir())


def test_checksum_detects_a_flipped_bit(tmp_path):
    path = tmp_path / 'a.bin'
    assert io.verify_checksum(path) is None
    io.atomic_write(path, lambda f: f.write(bytes(range(256)) * 10), checksum=True)
    assert io.verify_checksum(path) is True
    assert io.checksum_path(path).read_text().split() == [io.file_sha256(path), 'a.bin']
    raw = bytearray(path.read_bytes())
    raw[1000] ^= 1
    path.write_bytes(bytes(raw))
    assert io.verify_checksum(path) is False
    io.remove_file(path)
    assert not path.exists() and not io.checksum_path(path).exists()


@pytest.mark.parametrize('crash_at', [1, 2, 3])
def test_checksum_names_the_content_after_a_crash_at_any_step(tmp_path, monkeypatch, crash_at):
    """A writer that dies at any of the three renames of a checksummed write (sidecar with both
    digests, the file, sidecar with the new digest) leaves a file that verifies."""
    path = tmp_path / 'a.bin'
    io.atomic_write_text(path, 'old', checksum=True)
    calls = []
    original = os.replace

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == crash_at:
            raise KeyboardInterrupt  # not an OSError: nothing is reported or rolled back
        original(src, dst)

    monkeypatch.setattr(os, 'replace', replace)
    with pytest.raises(KeyboardInterrupt):
        io.atomic_write_text(path, 'new', checksum=True)
    monkeypatch.undo()
    assert path.read_text() == ('old' if crash_at <= 2 else 'new')
    assert io.verify_checksum(path) is True
    io.atomic_write_text(path, 'newer', checksum=True)
    assert io.verify_checksum(path) is True
    assert len(io.checksum_path(path).read_text().splitlines()) == 1


def test_zip_crc_check(tmp_path):
    path = tmp_path / 'a.zip'
    with zipfile.ZipFile(path, 'w') as archive:
        archive.writestr('data', b'0123456789' * 100)
    assert io.zip_crc_ok(path)
    raw = bytearray(path.read_bytes())
    raw[raw.find(b'0123456789') + 500] ^= 1
    path.write_bytes(bytes(raw))
    assert not io.zip_crc_ok(path)
    (tmp_path / 'b.txt').write_text('not a zip')
    assert io.zip_crc_ok(tmp_path / 'b.txt')  # left to the reader, which says what it is


def test_folder_lock_refuses_a_second_holder_and_survives_a_stale_file(tmp_path):
    out = tmp_path / 'run'
    with io.lock_folder(out) as lock:
        assert lock.read_text() == f'{os.getpid()}\n'
        with pytest.raises(FolderInUseError, match=rf'output folder {out} is in use by another '
                           rf'process \(pid {os.getpid()}\)'):
            with io.lock_folder(out):
                pass
    assert not (out / io.LOCK_FILE).exists()
    (out / io.LOCK_FILE).write_text('4194999\n')  # left by a killed process: no lock held
    with io.lock_folder(out):
        assert (out / io.LOCK_FILE).read_text() == f'{os.getpid()}\n'
    assert os.listdir(out) == []


def test_remove_staging_folders_takes_only_the_named_writers_folders(tmp_path, umask):
    umask(0o027)
    staged = [io.make_staging_folder(tmp_path, 'shop') for _ in range(2)]
    assert all(p.name.startswith('.shop.tmp-') for p in staged)
    assert oct(stat.S_IMODE(staged[0].stat().st_mode)) == oct(0o750)  # not mkdtemp's 0700
    (staged[0] / 'half.npy').write_bytes(b'x')
    keep = [io.make_staging_folder(tmp_path, 'shop2'), tmp_path / 'shop',
            tmp_path / '.shop.tmp-x.tmp-abcd1234', tmp_path / '.shop.tmp-abc']
    for p in keep[1:]:
        p.mkdir()
    (tmp_path / '.shop.tmp-abcd1234').write_text('a file, not a staging folder')
    keep.append(tmp_path / '.shop.tmp-abcd1234')
    io.remove_staging_folders(tmp_path, 'shop')
    assert not any(p.exists() for p in staged)
    assert all(p.exists() for p in keep)


def test_remove_empty_folders_stops_at_content(tmp_path):
    deep = tmp_path / 'a' / 'b' / 'c'
    deep.mkdir(parents=True)
    (tmp_path / 'a' / 'keep').write_text('x')
    io.remove_empty_folders(deep, tmp_path / 'a')
    assert not (tmp_path / 'a' / 'b').exists() and (tmp_path / 'a' / 'keep').exists()


def test_default_out_dir_is_new_and_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = io.default_out_dir('lightgcn-tiny')
    assert first.parent.name == 'runs' and first.name.startswith('lightgcn-tiny-')
    assert not first.exists()
    first.mkdir(parents=True)
    second = io.default_out_dir('lightgcn-tiny')
    assert second != first and not second.exists()
