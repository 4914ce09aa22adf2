r"""The ``featurize`` and ``export`` commands, and the ranking of ``recommend``.

``featurize`` turns a raw catalogue into an MMRec folder (:mod:`anchorrec_pyg.data.featurize`),
``export`` writes a trained run's embeddings for serving and ``recommend`` prints top-K lists of
a run or an export (:mod:`anchorrec_pyg.train.export`).
"""
import argparse
import logging
import sys

PROG = 'anchorrec-pyg'
logger = logging.getLogger('anchorrec_pyg')

FEATURIZE_EXAMPLES = f'''examples:
  {PROG} featurize --interactions ratings.csv --items items.jsonl --out data --name shop \\
      --user-col user_id --item-col item_id --timestamp-col ts \\
      --text-cols title brand --image-col image \\
      --text-encoder ./all-MiniLM-L6-v2 --image-encoder ./vit-base --on-missing-image zero
  {PROG} train --set data.root=data --set data.name=shop --out runs/shop

Input files: .csv, .tsv/.tab or .jsonl/.ndjson (by suffix), UTF-8. Image paths are relative to
--image-root (default: the items file's folder). A rerun with the same arguments reuses the
chunks an interrupted run encoded; the result is <out>/<name>/ (with user_map.csv, item_map.csv,
manifest.json) and, with image and text features, <out>/<name>_beit3/image_feat.npy.
Encoders need the featurize extra: pip install 'anchorrec-pyg[featurize]'.'''

EXPORT_EXAMPLES = f'''examples:
  {PROG} export runs/shop --out serve/shop
  {PROG} recommend serve/shop --users A17 B42 --k 10

Writes user_emb.npy, item_emb.npy, the training items (train_indptr.npy, train_items.npy), the
id maps of a featurized dataset, manifest.json and, with faiss installed
(pip install 'anchorrec-pyg[serve]'), the exact inner-product index items.faiss.'''


def add_parsers(sub: argparse._SubParsersAction) -> None:
    r"""Adds the ``featurize`` and ``export`` subcommands to :obj:`sub`."""
    formatter = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser(
        'featurize', formatter_class=formatter,
        help='raw interactions + items (text, images) -> an MMRec folder',
        description='Clean, k-core filter, remap and split raw interactions, encode the items\' '
        'text and images, and write an MMRec folder that train reads as it is.',
        epilog=FEATURIZE_EXAMPLES)
    p.add_argument('--interactions', metavar='FILE', required=True)
    p.add_argument('--items', metavar='FILE', required=True)
    p.add_argument('--out', metavar='ROOT', required=True,
                   help='the data root: writes ROOT/NAME and ROOT/NAME_beit3')
    p.add_argument('--name', required=True, help='the dataset name (data.name)')
    p.add_argument('--user-col', default='user_id', help='(default: user_id)')
    p.add_argument('--item-col', default='item_id', help='(default: item_id)')
    p.add_argument('--rating-col', help='optional rating column (kept, not used in training)')
    p.add_argument('--timestamp-col', help='optional numeric timestamp column')
    p.add_argument('--item-id-col', help='the id column of the items file (default: '
                   '--item-col)')
    p.add_argument('--text-cols', nargs='+', default=[], metavar='COL',
                   help='text columns of the items file, joined by a space')
    p.add_argument('--image-col', help='column of image file paths in the items file')
    p.add_argument('--image-root', metavar='DIR',
                   help='folder of relative image paths (default: the items file\'s folder)')
    p.add_argument('--min-interactions', type=int, nargs='+', default=[5], metavar='N',
                   help='k-core: N for users and items, or two values USERS ITEMS (default: 5)')
    p.add_argument('--split', choices=('mmrec', 'time'), default='mmrec',
                   help="mmrec: MMRec's per-user random rule; time: chronological per user "
                   '(needs --timestamp-col) (default: mmrec)')
    p.add_argument('--seed', type=int, default=999, help='seed of the mmrec split (default: 999)')
    p.add_argument('--text-encoder', metavar='NAME_OR_DIR',
                   help='sentence-transformers model (a local folder works offline)')
    p.add_argument('--image-encoder', metavar='NAME_OR_DIR',
                   help='transformers vision model folder (ViT, CLIP, ...)')
    p.add_argument('--image-weights', metavar='FILE',
                   help='state dict (.safetensors/.pt) loaded over --image-encoder\'s config')
    p.add_argument('--joint-encoder', metavar='NAME_OR_DIR',
                   help='CLIP-like model for the fused table (default: the concatenation of '
                   'the image and text tables)')
    p.add_argument('--on-missing-image', choices=('error', 'zero'), default='error',
                   help='a missing or unreadable image: refuse, or a zero row (default: error)')
    p.add_argument('--batch-size', type=int, default=64, help='items per forward pass')
    p.add_argument('--chunk-size', type=int, default=1024,
                   help='items per cached chunk (the restart granularity)')
    p.add_argument('--device', default='cpu', help='where the encoders run (default: cpu)')
    p.add_argument('--overwrite', action='store_true',
                   help='replace a folder that holds a different dataset')
    p.add_argument('--quiet', action='store_true', help='no progress bars')
    p.set_defaults(func=cmd_featurize)

    e = sub.add_parser(
        'export', formatter_class=formatter, help='a trained run\'s embeddings for serving',
        description='Write the final user and item embeddings of a run (its best validation '
        'epoch), its training items, id maps, a manifest and a faiss index.',
        epilog=EXPORT_EXAMPLES)
    e.add_argument('run', metavar='RUN_DIR_OR_CHECKPOINT')
    e.add_argument('--out', metavar='DIR', required=True)
    e.add_argument('--no-index', action='store_true', help='do not build the faiss index')
    e.add_argument('--overwrite', action='store_true', help='replace an existing --out')
    e.add_argument('--device', choices=('cpu', 'cuda', 'auto'))
    e.add_argument('--quiet', action='store_true')
    e.set_defaults(func=cmd_export)


def cmd_featurize(args: argparse.Namespace) -> None:
    from anchorrec_pyg.data.featurize import FeaturizeOptions, featurize
    from anchorrec_pyg.errors import ConfigError
    if len(args.min_interactions) > 2:
        raise ConfigError('--min-interactions takes one value (users and items) or two '
                          '(users, items)')
    min_user, min_item = args.min_interactions[0], args.min_interactions[-1]
    opts = FeaturizeOptions(
        interactions=args.interactions, items=args.items, user_col=args.user_col,
        item_col=args.item_col, rating_col=args.rating_col, timestamp_col=args.timestamp_col,
        item_id_col=args.item_id_col, text_cols=list(args.text_cols), image_col=args.image_col,
        image_root=args.image_root, min_user=min_user, min_item=min_item, split=args.split,
        seed=args.seed, text_encoder=args.text_encoder, image_encoder=args.image_encoder,
        image_weights=args.image_weights, joint_encoder=args.joint_encoder,
        on_missing_image=args.on_missing_image, batch_size=args.batch_size,
        chunk_size=args.chunk_size, device=args.device)
    folder = featurize(opts, args.out, args.name, overwrite=args.overwrite,
                       progress=not args.quiet)
    print(f'dataset: {folder}')
    print(f'train it: {PROG} train --set data.root={args.out} --set data.name={args.name}')


def cmd_export(args: argparse.Namespace) -> None:
    from anchorrec_pyg.train.export import export_run, read_manifest
    out = export_run(args.run, args.out, args.device, index=False if args.no_index else None,
                     overwrite=args.overwrite)
    manifest = read_manifest(out)
    index = 'with a faiss index' if manifest['index'] else 'no index (faiss not installed)' \
        if not args.no_index else 'no index'
    print(f"exported {manifest['model']} on {manifest['dataset']}: {manifest['num_users']} "
          f"users, {manifest['num_items']} items, d = {manifest['dim']}, {index}: {out}")


def recommend(args: argparse.Namespace) -> None:
    r"""The ``recommend`` command: top-K lists of a run folder, checkpoint or export folder,
    training items never listed, ids as in the data (original ids when it has id maps)."""
    from anchorrec_pyg.errors import ConfigError
    from anchorrec_pyg.train.export import (
        Recommender,
        is_export,
        short_lists_note,
        write_recommendations,
    )
    if args.k < 1:
        raise ConfigError(f'--k must be >= 1 (got {args.k})')
    if args.users is None and not args.all_users:
        raise ConfigError('give --users ID [ID ...] or --all-users')
    if args.output is not None:
        from anchorrec_pyg.io import check_writable_file
        check_writable_file(args.output)
    if is_export(args.run):
        rec = Recommender.from_export(args.run, use_index=not args.no_index)
    else:
        rec = Recommender.from_run(args.run, args.device)
    users = list(range(rec.num_users)) if args.all_users else rec.user_index(args.users)
    lists = rec.top_k(users, args.k, use_index=not args.no_index, progress=not args.quiet)
    note = short_lists_note(rec, users, args.k)
    if note:
        print(note, file=sys.stderr)
    if args.output is None:
        for user, (items, _) in zip(users, lists):
            print(f"user {rec.user_label(user)}: "
                  f"{' '.join(rec.item_label(i) for i in items)}")
        return
    n = write_recommendations(args.output, rec, users, lists)
    print(f'wrote {n} recommendations of {len(users)} users to {args.output}')
