"""SIGKILL fault benchmark: the scenarios of ``tests/test_sigkill_resume.py`` with more seeds.

    python benchmarks/sigkill_resume.py               # 10 seeds: 50 placed kills + 10 timed
    python benchmarks/sigkill_resume.py --seeds 30

Each scenario forks the real ``train`` command (two grid combinations x two epochs of AnchorRec
on the tiny preset), SIGKILLs it at a point drawn from the uninterrupted run's call counts (a
checkpoint or best-weights write cut short, before or after a rename, during an evaluation,
between epochs) or after a random delay, checks that no file of the run folder is truncated,
resumes it to the end and compares its metrics with the uninterrupted run's, bit for bit. Prints
one row per kind of kill point: scenarios, kills that happened (a timed kill may come after the
end), and kills survived.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'tests'))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--seeds', type=int, default=10, help='seeds of the kill points')
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ['ANCHORREC_PYG_HOME'] = str(Path(tmp) / 'home')
        import test_sigkill_resume as harness

        from anchorrec_pyg.config import load_config
        from anchorrec_pyg.train.runner import load_data, required_modalities

        config = load_config(None, [a for a in harness.ARGS[1::2] if '=' in a])
        load_data(config.data, required_modalities(config), log=False)
        counts_file = Path(tmp) / 'counts.json'
        start = time.perf_counter()
        assert harness._run(['train', *harness.ARGS, '--out', f'{tmp}/ref'],
                            counts_file=str(counts_file)) == 0
        duration = time.perf_counter() - start
        counts = json.loads(counts_file.read_text())
        expected = harness.results(Path(tmp) / 'ref')
        seeds = range(args.seeds)
        scenarios = [(kill, None) for kill in harness.kill_points(counts, seeds)]
        scenarios += [(None, random.Random(s).uniform(0.0, duration)) for s in seeds]
        table: dict = {}
        for i, (kill, delay) in enumerate(scenarios):
            kind = 'timed' if kill is None else (
                f"replace ({'before' if kill[2] < 0.5 else 'after'})" if kill[0] == 'replace'
                else kill[0])
            row = table.setdefault(kind, [0, 0, 0])
            row[0] += 1
            out = Path(tmp) / f'kill{i}'
            if harness.survive(out, kill, delay):
                row[1] += 1
                row[2] += harness.results(out) == expected
        print(f'uninterrupted run: {duration:.2f} s, call counts {counts}')
        print(f"{'kill point':<18} {'scenarios':>9} {'killed':>7} {'survived':>9}")
        for kind, (n, killed, ok) in table.items():
            print(f'{kind:<18} {n:>9} {killed:>7} {ok:>9}')
        total = [sum(row[j] for row in table.values()) for j in range(3)]
        print(f"{'total':<18} {total[0]:>9} {total[1]:>7} {total[2]:>9}")


if __name__ == '__main__':
    main()
