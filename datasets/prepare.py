"""Write a synthetic dataset in the MMRec on-disk format (SPEC §1) to a folder.

    python datasets/prepare.py /data                      # /data/default + /data/default_beit3
    python datasets/prepare.py /data --preset baby        # Baby-shaped (19,445 x 7,050)
    python datasets/prepare.py /data --preset tiny --name toy --seed 3 --overwrite

The result loads with ``MMRecDataset(root, name)`` like any MMRec folder. The real Amazon
datasets cannot be generated or downloaded automatically: MMRecDataset's error message lists
the files to put where.
"""
from __future__ import annotations

import argparse
import logging
import sys

from anchorrec_pyg.data import PRESETS, generate_synthetic
from anchorrec_pyg.errors import AnchorRecError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('root', help='folder that receives <name>/ and <name>_beit3/')
    parser.add_argument('--preset', choices=sorted(PRESETS), default='default')
    parser.add_argument('--name', help='dataset name (default: the preset)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--overwrite', action='store_true')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    try:
        folder = generate_synthetic(args.root, args.name or args.preset, preset=args.preset,
                                    seed=args.seed, overwrite=args.overwrite)
    except AnchorRecError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    print(folder)
    return 0


if __name__ == '__main__':
    sys.exit(main())
