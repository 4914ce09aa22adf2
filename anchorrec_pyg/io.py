r"""Files under faults: atomic writes, checksums, folder locks and default output folders.

The bottom layer of the package (it imports only :mod:`anchorrec_pyg.errors`), used by every
writer above it (data caches, checkpoints, run folders, analysis outputs):

* :func:`atomic_write` writes a temporary file in the target's folder, flushes it to disk and
  moves it into place with :func:`os.replace`, so that a reader (or a run killed mid-write)
  sees either the old file or the new one, never a part. The file gets the mode
  ``0o666 & ~umask``, like any file the user creates (a bare temporary file would be ``0600``).
* With ``checksum=True`` it also records the SHA-256 of the new content in the sidecar
  ``<file>.sha256`` (``sha256sum`` format). The sidecar is written *before* the file is moved
  into place and lists the new digest and the one it replaces, then is rewritten with the new
  digest alone, so that at every instant it names the file's current content:
  :func:`verify_checksum` detects corruption without ever refusing a file that a killed writer
  left behind intact.
* :func:`lock_folder` takes an exclusive OS lock (:func:`fcntl.flock`) on a folder's ``.lock``
  file: a second process is refused with the holder's pid, and a crash releases the lock (the
  OS closes the file), so a lock file left behind never blocks a rerun.
* :func:`make_staging_folder` gives a writer of a whole folder a hidden sibling to build it in;
  under the writer's lock, :func:`remove_staging_folders` clears those a killed writer left.

A failure to write (a read-only folder, a file where a folder is expected, a full disk) raises
:class:`~anchorrec_pyg.errors.OutputError` with one line naming the path.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
import zipfile
from datetime import datetime
from pathlib import Path
from typing import IO, Callable, Iterator, List, Optional, Union

from anchorrec_pyg.errors import FolderInUseError, OutputError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: folder locks are not available
    fcntl = None

PathLike = Union[str, os.PathLike]

#: The suffix of a file's checksum sidecar (``checkpoint.pt`` -> ``checkpoint.pt.sha256``).
CHECKSUM_SUFFIX = '.sha256'
#: The suffix of the temporary files of :func:`atomic_write` (hidden: ``.<name>.<random>.tmp``).
TEMP_SUFFIX = '.tmp'
#: The lock file :func:`lock_folder` keeps inside a locked folder.
LOCK_FILE = '.lock'
HASH_CHUNK_BYTES = 16 * 2**20


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def output_error(path: PathLike, error: OSError) -> OutputError:
    r"""The one-line :class:`OutputError` of an :class:`OSError` met while writing
    :obj:`path`."""
    reason = error.strerror or type(error).__name__
    return OutputError(f'cannot write {path} ({reason})')


def _writable_folder(folder: Path) -> bool:
    r"""Whether the existing folder :obj:`folder` can be written. A folder whose permission
    bits forbid writing for everyone counts as read-only even for root (who could write there
    anyway), as the data layer's read-only dataset folders do."""
    return bool(folder.stat().st_mode & 0o222) and os.access(folder, os.W_OK | os.X_OK)


def check_writable_folder(folder: PathLike) -> Path:
    r"""Checks, before any work and without creating anything, that :obj:`folder` is (or can
    be created as) a writable folder. Returns it as a :class:`Path`.

    Raises:
        OutputError: If it or an ancestor is a file, or its nearest existing folder is
            read-only.
    """
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = '' if existing == folder else f' ({existing} is a file)'
        raise OutputError(f'{folder} is not a folder{where}; choose another output folder')
    if not _writable_folder(existing):
        raise OutputError(f'cannot write in {folder}: {existing} is read-only')
    return folder


def check_writable_file(path: PathLike) -> Path:
    r"""Checks, before any work and without creating anything, that :obj:`path` can be written
    as a file: it is not a folder and its folder is writable (see
    :func:`check_writable_folder`). Returns it as a :class:`Path`."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f'{path} is a folder; name a file to write')
    check_writable_folder(path.parent)
    return path


def file_sha256(path: PathLike) -> str:
    r"""The hexadecimal SHA-256 of the file :obj:`path`."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        while chunk := f.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def checksum_path(path: PathLike) -> Path:
    r"""The checksum sidecar of :obj:`path`: ``<path>.sha256``."""
    path = Path(path)
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def _recorded_digests(path: Path) -> Optional[List[str]]:
    try:
        text = checksum_path(path).read_text(encoding='ascii', errors='replace')
    except FileNotFoundError:
        return None
    return [line.split()[0] for line in text.splitlines() if line.strip()]


def _write_checksum(path: Path, digests: List[str]) -> None:
    atomic_write_text(checksum_path(path), ''.join(f'{d}  {path.name}\n' for d in digests))


def verify_checksum(path: PathLike) -> Optional[bool]:
    r"""Whether the file :obj:`path` has the SHA-256 recorded by :func:`atomic_write`;
    :obj:`None` when no checksum was recorded (a file written before checksums existed)."""
    path = Path(path)
    recorded = _recorded_digests(path)
    if recorded is None:
        return None
    return file_sha256(path) in recorded


def zip_crc_ok(path: PathLike) -> bool:
    r"""Whether the zip container :obj:`path` (what :func:`torch.save` writes) has no member
    failing its CRC-32: a cheap check of a file written without a checksum. A file that is not
    a readable zip container passes (its reader refuses it with its own reason)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except zipfile.BadZipFile:
        return True
    except (OSError, EOFError, ValueError):
        return False


def atomic_write(path: PathLike, write: Callable[[IO[bytes]], object],
                 checksum: bool = False) -> None:
    r"""Calls :obj:`write(file)` on a temporary file next to :obj:`path`, flushes it to disk,
    gives it the mode ``0o666 & ~umask`` and moves it into place with :func:`os.replace`
    (atomic on POSIX and Windows). With :obj:`checksum`, records its SHA-256 in
    ``<path>.sha256`` (see the module docstring for the order that keeps the two consistent).

    Raises:
        OutputError: If :obj:`path` is a folder or cannot be written.
    """
    path = check_writable_file(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix=TEMP_SUFFIX, dir=path.parent)
    except OSError as e:
        raise output_error(path, e) from None
    try:
        with os.fdopen(fd, 'wb') as f:
            write(f)
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            os.fsync(f.fileno())
        if checksum:
            digest = file_sha256(tmp)
            previous = _recorded_digests(path) if path.exists() else None
            _write_checksum(path, [digest, *(previous or [])[:1]])
        os.replace(tmp, path)
        if checksum:
            _write_checksum(path, [digest])
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise output_error(path, e) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: PathLike, text: str, checksum: bool = False) -> None:
    r"""Writes :obj:`text` (UTF-8) to :obj:`path` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda f: f.write(text.encode('utf-8')), checksum=checksum)


def _staging_prefix(name: str) -> str:
    return f'.{name}.tmp-'


def make_staging_folder(parent: PathLike, name: str) -> Path:
    r"""A new hidden folder ``<parent>/.<name>.tmp-<random>`` to build the folder (or folders)
    ``<parent>/<name>`` in, then move into place with :func:`os.replace`; its mode is
    ``0o777 & ~umask`` like any folder the user creates (a bare :func:`tempfile.mkdtemp` folder
    would be ``0700``)."""
    try:
        folder = Path(tempfile.mkdtemp(dir=parent, prefix=_staging_prefix(name)))
        os.chmod(folder, 0o777 & ~_umask())
    except OSError as e:
        raise output_error(parent, e) from None
    return folder


def remove_staging_folders(parent: PathLike, name: str) -> None:
    r"""Removes the staging folders of :func:`make_staging_folder` for ``name`` that killed
    writers left in :obj:`parent` (a writer removes its own on any exception; ``SIGKILL`` gives
    it no chance). Call it only while holding the lock that serialises writers of ``name``."""
    random = re.compile(re.escape(_staging_prefix(name)) + r'[a-z0-9_]{8}')
    for folder in Path(parent).iterdir():
        if random.fullmatch(folder.name) and folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder, ignore_errors=True)


def remove_file(path: PathLike) -> None:
    r"""Removes :obj:`path` and its checksum sidecar (either may be missing)."""
    Path(path).unlink(missing_ok=True)
    checksum_path(path).unlink(missing_ok=True)


def is_temporary(path: PathLike) -> bool:
    r"""Whether :obj:`path` is named like a temporary file of :func:`atomic_write`."""
    name = Path(path).name
    return name.startswith('.') and name.endswith(TEMP_SUFFIX) and Path(path).is_file()


def remove_temporary_files(folder: PathLike) -> None:
    r"""Removes the temporary files that killed writers left under :obj:`folder`; call it only
    while holding the folder's lock (no other writer is running)."""
    for tmp in Path(folder).rglob(f'.*{TEMP_SUFFIX}'):
        if is_temporary(tmp):
            tmp.unlink(missing_ok=True)


def remove_empty_folders(folder: PathLike, up_to: PathLike) -> None:
    r"""Removes :obj:`folder` and its ancestors up to :obj:`up_to` (included) while they are
    empty: the folders a failed command created, never anything with content."""
    folder, up_to = Path(folder), Path(up_to)
    for current in [folder, *folder.parents]:
        try:
            current.rmdir()
        except OSError:
            return
        if current == up_to:
            return


def _holder(path: Path) -> str:
    try:
        pid = path.read_text(encoding='ascii', errors='replace').strip()
    except OSError:
        pid = ''
    return f'pid {pid}' if pid.isdigit() else 'a process that is starting'


@contextlib.contextmanager
def lock_file(path: PathLike, blocking: bool = False,
              what: Optional[str] = None) -> Iterator[Path]:
    r"""Holds an exclusive :func:`fcntl.flock` lock on the file :obj:`path` (created, holding
    the holder's pid) for the ``with`` block, then removes the file.

    The OS releases the lock when the process ends, however it ends; a lock file left by a
    killed process is therefore free, and the next caller takes it over.

    Args:
        blocking: Wait for the holder instead of failing.
        what: How to name the locked thing in the error (default: the file).

    Raises:
        FolderInUseError: Without :obj:`blocking`, if another process holds the lock (the
            message names its pid).
        OutputError: If the lock file cannot be created.
    """
    path = Path(path)
    if fcntl is None:  # pragma: no cover - Windows
        yield path
        return
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise output_error(path, e) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            raise FolderInUseError(f'{what or path} is in use by another process '
                                   f'({_holder(path)}); wait for it to end or use another '
                                   f'folder') from None
        # the holder removes the file before it lets go: retry if ours is no longer the file
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        if current is not None and os.path.samestat(current, os.fstat(fd)):
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f'{os.getpid()}\n'.encode(), 0)
        yield path
    finally:
        Path(path).unlink(missing_ok=True)
        os.close(fd)


def lock_folder(folder: PathLike) -> contextlib.AbstractContextManager:
    r"""Creates :obj:`folder` if needed and holds its lock (:data:`LOCK_FILE` inside it, see
    :func:`lock_file`) for a ``with`` block: one process at a time writes a run folder."""
    folder = check_writable_folder(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise output_error(folder, e) from None
    return lock_file(folder / LOCK_FILE, what=f'output folder {folder}')


def default_out_dir(prefix: str) -> Path:
    r"""``runs/<prefix>-<timestamp>`` under the current folder (``-2``, ``-3``, ... appended
    when that folder exists). Nothing is created."""
    stamp = datetime.now().strftime('%Y%m%d-%H%M%S')
    base = Path('runs') / f'{prefix}-{stamp}'
    out, n = base, 1
    while out.exists():
        n += 1
        out = base.with_name(f'{base.name}-{n}')
    return out
