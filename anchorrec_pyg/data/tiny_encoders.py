r"""Tiny, randomly initialised encoders and a generated raw catalogue, written to local folders,
so that ``featurize`` can be tried (and is tested) end to end without any download.

The encoders have the architectures of the real ones (a BERT sentence-transformer with mean
pooling, a ViT, a CLIP) at a few thousand parameters; their embeddings carry no meaning. The
catalogue is the synthetic generator's interactions written as a raw shop would keep them:
string ids, ratings, timestamps, a text per item and a small PNG per item.
"""
from __future__ import annotations

import csv
import json
import os
import string
from pathlib import Path
from typing import Tuple

import numpy as np
import torch

from anchorrec_pyg.data.encoders import _require

TOKENS = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]']
WORDS = ['red', 'blue', 'green', 'pen', 'paper', 'desk', 'lamp', 'chair', 'ink', 'stapler',
         'folder', 'label', 'tape', 'clip', 'board', 'marker', 'black', 'white', 'small', 'large']


def _vocab(folder: Path) -> Path:
    chars = list(string.ascii_lowercase + string.digits)
    vocab = TOKENS + WORDS + chars + [f'##{c}' for c in chars]
    path = folder / 'vocab.txt'
    path.write_text('\n'.join(vocab) + '\n', encoding='utf-8')
    return path


def tiny_text_encoder(folder: str | os.PathLike, dim: int = 32, seed: int = 0) -> Path:
    r"""Writes a sentence-transformers model (BERT, 1 layer, hidden :obj:`dim`, mean pooling,
    a word-piece vocabulary of letters, digits and a few words) to :obj:`folder`."""
    st = _require('sentence_transformers', 'tiny_text_encoder')
    transformers = _require('transformers', 'tiny_text_encoder')
    folder = Path(folder)
    bert = folder / 'bert'
    bert.mkdir(parents=True, exist_ok=True)
    tokenizer = transformers.BertTokenizerFast(vocab_file=str(_vocab(bert)), do_lower_case=True)
    tokenizer.save_pretrained(bert)
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=dim,
                                     num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=2 * dim, max_position_embeddings=128)
    transformers.BertModel(config).save_pretrained(bert)
    try:  # sentence-transformers >= 6 moved the modules
        from sentence_transformers.sentence_transformer import modules
    except ImportError:
        from sentence_transformers import models as modules
    word = modules.Transformer(str(bert), max_seq_length=64)
    pooling = modules.Pooling(word.get_word_embedding_dimension(), 'mean')
    st.SentenceTransformer(modules=[word, pooling], device='cpu').save(str(folder))
    return folder


def tiny_image_encoder(folder: str | os.PathLike, dim: int = 24, image_size: int = 32,
                       seed: int = 0) -> Path:
    r"""Writes a ViT (1 layer, hidden :obj:`dim`, patches of 8 pixels) and its image processor
    to :obj:`folder`."""
    transformers = _require('transformers', 'tiny_image_encoder')
    folder = Path(folder)
    torch.manual_seed(seed)
    config = transformers.ViTConfig(image_size=image_size, patch_size=8, hidden_size=dim,
                                    num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=2 * dim)
    transformers.ViTModel(config).save_pretrained(folder)
    transformers.ViTImageProcessor(size={'height': image_size, 'width': image_size}
                                   ).save_pretrained(folder)
    return folder


def tiny_joint_encoder(folder: str | os.PathLike, dim: int = 16, image_size: int = 32,
                       seed: int = 0) -> Path:
    r"""Writes a CLIP model (text and vision towers of 1 layer, projection :obj:`dim`), its
    tokenizer and image processor to :obj:`folder`."""
    transformers = _require('transformers', 'tiny_joint_encoder')
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = transformers.BertTokenizerFast(vocab_file=str(_vocab(folder)),
                                               do_lower_case=True)
    torch.manual_seed(seed)
    text = {'vocab_size': tokenizer.vocab_size, 'hidden_size': 32, 'num_hidden_layers': 1,
            'num_attention_heads': 2, 'intermediate_size': 64, 'max_position_embeddings': 64,
            'pad_token_id': 0, 'bos_token_id': 2, 'eos_token_id': 3}
    vision = {'image_size': image_size, 'patch_size': 8, 'hidden_size': 32,
              'num_hidden_layers': 1, 'num_attention_heads': 2, 'intermediate_size': 64}
    config = transformers.CLIPConfig(text_config=text, vision_config=vision,
                                     projection_dim=dim)
    transformers.CLIPModel(config).save_pretrained(folder)
    processor = transformers.CLIPProcessor(
        image_processor=transformers.CLIPImageProcessor(
            size={'shortest_edge': image_size},
            crop_size={'height': image_size, 'width': image_size}),
        tokenizer=tokenizer)
    processor.save_pretrained(folder)
    return folder


def write_demo_catalogue(folder: str | os.PathLike, preset: str = 'tiny', seed: int = 0,
                         image_size: int = 24) -> Tuple[Path, Path]:
    r"""Writes a raw catalogue made from the synthetic preset :obj:`preset`: ``ratings.csv``
    (``user_id,item_id,rating,ts``; ids like ``U0007``/``P0031``), ``items.jsonl``
    (``{"asin", "title", "brand", "image"}``) and ``images/<asin>.png`` (a colour drawn from
    the item's features). Returns ``(ratings.csv, items.jsonl)``."""
    from PIL import Image

    from anchorrec_pyg.data.synthetic import generate_arrays
    folder = Path(folder)
    (folder / 'images').mkdir(parents=True, exist_ok=True)
    table, features = generate_arrays(preset, seed)
    rng = np.random.default_rng(seed)
    ratings = folder / 'ratings.csv'
    with open(ratings, 'w', newline='', encoding='utf-8') as f:
        writer = csv.writer(f)
        writer.writerow(['user_id', 'item_id', 'rating', 'ts'])
        for user, item, rating, ts, _ in table.tolist():
            writer.writerow([f'U{user:04d}', f'P{item:04d}', rating, ts])
    text = features['text']
    image = features['image']
    items = folder / 'items.jsonl'
    with open(items, 'w', encoding='utf-8') as f:
        for item in range(text.shape[0]):
            words = [WORDS[int(j) % len(WORDS)] for j in np.argsort(-text[item])[:3]]
            asin = f'P{item:04d}'
            colour = (255 * (image[item, :3] / (image[item].max() + 1e-9))).astype(np.uint8)
            noise = rng.integers(0, 40, size=(image_size, image_size, 3), dtype=np.uint8)
            pixels = np.clip(colour[None, None, :].astype(np.int64) + noise, 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(folder / 'images' / f'{asin}.png')
            f.write(json.dumps({'asin': asin, 'title': ' '.join(words),
                                'brand': WORDS[item % len(WORDS)],
                                'image': f'images/{asin}.png'}) + '\n')
    return ratings, items
