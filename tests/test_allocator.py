"""train.keep_freed_memory: glibc's malloc keeps freed blocks for the next step's allocations
(no fresh page faults), the trainer sets it when told to, and elsewhere nothing."""
import subprocess
import sys

import pytest

from anchorrec_pyg.config import TrainConfig, load_config
from anchorrec_pyg.models import LightGCN
from anchorrec_pyg.train import allocator, trainer as trainer_module
from anchorrec_pyg.train.trainer import Trainer

# Minor page faults of allocating and filling 64 MiB, after the same block was freed:
# before the switch, after it (the first allocation after it may still come fresh).
SCRIPT = """
import resource, torch
from anchorrec_pyg.train.allocator import keep_freed_memory

def refill_faults():
    torch.empty(2**24).fill_(1)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(2**24).fill_(1)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

default = refill_faults()
kept = keep_freed_memory()
refill_faults()
print(default, kept, refill_faults())
"""


@pytest.mark.skipif(not allocator.is_glibc(), reason='glibc malloc only')
def test_freed_blocks_are_reused_without_page_faults():
    out = subprocess.run([sys.executable, '-c', SCRIPT], capture_output=True, text=True,
                         check=True).stdout.split()
    default, kept, after = int(out[0]), out[1], int(out[2])
    pages = 2**26 // 4096
    assert default >= pages // 2  # the freed 64 MiB went back to the kernel
    assert kept == 'True'
    assert after < pages // 20  # and now it is reused


def test_other_c_libraries_are_left_alone(monkeypatch):
    monkeypatch.setattr(allocator.platform, 'libc_ver', lambda: ('', ''))
    assert not allocator.is_glibc()
    assert allocator.keep_freed_memory() is False


@pytest.mark.parametrize('keep', [True, False])
def test_trainer_sets_it_when_told_to(tiny_data, monkeypatch, keep):
    calls = []
    monkeypatch.setattr(trainer_module, 'keep_freed_memory', lambda: calls.append(1) or True)
    Trainer(LightGCN(tiny_data, LightGCN.Config()), tiny_data,
            TrainConfig(device='cpu', keep_freed_memory=keep), load_config().eval, seed=0)
    assert calls == ([1] if keep else [])


def test_default_off_and_free_on_resume():
    from anchorrec_pyg.config import RESUME_FREE_KEYS
    assert TrainConfig().keep_freed_memory is False
    assert load_config(None, ['train.keep_freed_memory=true']).train.keep_freed_memory is True
    assert ('train', 'keep_freed_memory') in RESUME_FREE_KEYS
