"""Same seed, same bits: two fresh processes training AnchorRec with two CPU threads give
bitwise-equal losses, metrics and weights (docs/speed.md, Reproducibility).

The data is the ``default`` preset (2,000 users, 1,200 items): large enough that the batch
gathers repeat rows, which is where a thread-order-dependent backward (``tensor[index]``) made
runs differ in the last bits.
"""
import json
import os
import subprocess
import sys

import pytest

from anchorrec_pyg.data import MMRecDataset, generate_synthetic

SCRIPT = r'''
import hashlib, json, sys
import torch
from anchorrec_pyg.config import EvalConfig, TrainConfig
from anchorrec_pyg.data import MMRecDataset
from anchorrec_pyg.models import AnchorRec
from anchorrec_pyg.train import Trainer

root, backend = sys.argv[1], sys.argv[2]
data = MMRecDataset(root, 'default', log=False)[0]
torch.manual_seed(7)
model = AnchorRec(data, AnchorRec.Config(propagation=backend))
trainer = Trainer(model, data, TrainConfig(epochs=1, num_threads=2, device='cpu'),
                  EvalConfig(ks=[20]), seed=7)
result = trainer.fit()
digest = hashlib.sha256()
for name, tensor in sorted(model.state_dict().items()):
    digest.update(tensor.numpy().tobytes())
record = result.history[0]
print(json.dumps({'loss': record['loss'].hex(), 'recall': result.valid['recall@20'].hex(),
                  'weights': digest.hexdigest()}))
'''


@pytest.fixture(scope='module')
def default_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('determinism')
    generate_synthetic(root, name='default', preset='default', seed=0)
    MMRecDataset(root, 'default', log=False)  # processed once; the runs load the cache
    return str(root)


def test_two_processes_with_two_threads_give_the_same_bits(default_root):
    env = dict(os.environ, OMP_NUM_THREADS='2', MKL_NUM_THREADS='2')
    runs = [subprocess.run([sys.executable, '-c', SCRIPT, default_root, 'fast'], env=env,
                           capture_output=True, text=True, timeout=300) for _ in range(2)]
    for run in runs:
        assert run.returncode == 0, run.stderr[-2000:]
    first, second = (json.loads(run.stdout.strip().splitlines()[-1]) for run in runs)
    assert first == second
