r"""Safe, atomic checkpoints.

A checkpoint is a ``dict`` holding only tensors and Python primitives (model, optimizer and
scheduler state dicts, the epoch, the best-so-far record, the RNG states as ``uint8`` tensors and
the resolved configuration as plain YAML types), so that it loads with
``torch.load(..., weights_only=True)``: a file holding any other Python object (a pickle with a
``__reduce__`` payload, for instance) is refused with
:class:`~anchorrec_pyg.errors.CheckpointError` before any of its code can run.

Writes go through :func:`anchorrec_pyg.io.atomic_write` (a temporary file in the same folder,
then :func:`os.replace`), so a run killed mid-write leaves the previous checkpoint intact, and
record the file's SHA-256 in ``<file>.sha256``. Loading verifies it first (or, for a file
written without one, the zip container's CRC-32s): a corrupt file is refused with a one-line
error naming it and how to recover, before :func:`torch.load` reads it.
"""
import os
import pickle
import re
from pathlib import Path
from typing import Any, Dict, Union

import torch

from anchorrec_pyg.errors import CheckpointError
from anchorrec_pyg.io import atomic_write, checksum_path, verify_checksum, zip_crc_ok

FORMAT = 'anchorrec-pyg/checkpoint'
VERSION = 1
REQUIRED_KEYS = ('format', 'version', 'config', 'model', 'epoch', 'finished')


def save_checkpoint(path: Union[str, os.PathLike], state: Dict[str, Any]) -> None:
    r"""Writes :obj:`state` (tensors and primitives only) atomically, tagged with the format
    name and version."""
    payload = {'format': FORMAT, 'version': VERSION, **state}
    atomic_write(path, lambda f: torch.save(payload, f), checksum=True)


_ANSI = re.compile(r'\x1b\[[0-9;]*[A-Za-z]')
_REASONS = ('Unsupported global', 'Unsupported operand', 'Trying to load', 'Unsupported')


def _reason(error: Exception) -> str:
    r"""The informative line of a (often multi-paragraph) torch loading error, without its
    terminal escape codes (``WeightsUnpickler error: Unsupported global: ...``)."""
    lines = [line.strip() for line in _ANSI.sub('', str(error)).splitlines() if line.strip()]
    for marker in _REASONS:
        for line in lines:
            if marker in line:
                sentence = line[line.index(marker):].split('. ')[0]
                return sentence.rstrip('.')[:200]
    return lines[0][:200] if lines else type(error).__name__


def _check_integrity(path: Path, what: str) -> None:
    r"""Refuses a file whose SHA-256 differs from the one recorded when it was written (or,
    without a record, whose zip container fails its CRC-32 check)."""
    recorded = verify_checksum(path)
    if recorded is None and zip_crc_ok(path):
        return
    if recorded is None:
        reason = 'its zip container fails the CRC check'
    elif recorded:
        return
    else:
        reason = f'its SHA-256 differs from the one recorded in {checksum_path(path).name}'
    raise CheckpointError(f'{path}: corrupt {what} ({reason}); delete it and its '
                          f'{checksum_path(path).name}, then rerun train --resume on its run '
                          f'folder to retrain that run')


def _safe_load(path: Path, what: str) -> Any:
    r"""``torch.load(path, weights_only=True)`` onto the CPU, every failure a one-line
    :class:`CheckpointError` naming the file (:obj:`what` names its kind)."""
    if not path.is_file():
        raise CheckpointError(f'{what} not found: {path}')
    _check_integrity(path, what)
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f'{path}: refused to load: not a file of tensors and primitives '
                              f'only ({_reason(e)})') from None
    except Exception as e:  # noqa: BLE001 (torch raises many types for a corrupt file)
        raise CheckpointError(f'{path}: not a readable {what} ({_reason(e)})') from None


def load_checkpoint(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    r"""Loads a checkpoint with ``weights_only=True`` onto the CPU.

    Raises:
        CheckpointError: If the file is missing, unreadable, holds anything but tensors and
            primitives (refused without running it), or is not an anchorrec-pyg checkpoint.
    """
    path = Path(path)
    state = _safe_load(path, 'checkpoint')
    if not isinstance(state, dict) or state.get('format') != FORMAT:
        raise CheckpointError(f'{path}: not an anchorrec-pyg checkpoint')
    if state.get('version') != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {state.get('version')!r} is not "
                              f'supported (expected {VERSION})')
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise CheckpointError(f'{path}: checkpoint lacks the key {missing[0]!r}')
    return state


def best_weights_path(path: Union[str, os.PathLike]) -> Path:
    r"""Where a run writes the best-so-far weights next to its checkpoint :obj:`path`
    (``<name>.best<suffix>``; present only while the run is unfinished)."""
    path = Path(path)
    return path.with_name(f'{path.stem}.best{path.suffix}')


def save_weights(path: Union[str, os.PathLike], weights: Dict[str, Any], epoch: int) -> None:
    r"""Writes the state dict of :obj:`epoch` atomically, tagged like a checkpoint."""
    atomic_write(path, lambda f: torch.save({'format': FORMAT, 'version': VERSION,
                                             'epoch': int(epoch), 'weights': weights}, f),
                 checksum=True)


def load_weights(path: Union[str, os.PathLike], epoch: int) -> Dict[str, Any]:
    r"""Loads the state dict of :obj:`epoch` written by :func:`save_weights`
    (``weights_only=True``).

    Raises:
        CheckpointError: If the file is missing, unsafe, not such a file or of another epoch.
    """
    path = Path(path)
    state = _safe_load(path, 'weights file')
    if not isinstance(state, dict) or state.get('format') != FORMAT or 'weights' not in state:
        raise CheckpointError(f'{path}: not an anchorrec-pyg weights file')
    if state.get('epoch') != epoch:
        raise CheckpointError(f"{path}: holds the weights of epoch {state.get('epoch')!r}, "
                              f'expected epoch {epoch}')
    return state['weights']
