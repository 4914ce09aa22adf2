r"""Item encoders for :mod:`anchorrec_pyg.data.featurize` (the ``featurize`` extra).

- :class:`TextEncoder`: a `sentence-transformers <https://sbert.net>`_ model, given by a local
  folder (works offline) or a hub name; one row per text, as MMRec's ``text_feat.npy``
  (all-MiniLM-L6-v2 there).
- :class:`ImageEncoder`: a Hugging Face ``transformers`` vision model (ViT, CLIP, SigLIP, ...)
  from a folder holding its ``config.json`` and ``preprocessor_config.json``, with its weights
  either in that folder or in a separate ``--image-weights`` file (``.safetensors``, or a
  ``.pt``/``.bin`` state dict read with ``weights_only=True``). A model with
  ``get_image_features`` (CLIP-like) gives its projected image embedding; any other its pooled
  output (the ``[CLS]`` row when it has no pooler).
- :class:`JointEncoder`: a CLIP-like model (``get_text_features`` and ``get_image_features``
  in one space) for the fused multimodal table.

torchvision and timm are not used: on this project's reference environment (torch 2.13, CPU)
their PyPI builds do not import. Every encoder runs in evaluation mode under
:func:`torch.inference_mode`, so the same inputs in the same batches give the same rows.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from anchorrec_pyg.errors import DataError

INSTALL_HINT = "pip install 'anchorrec-pyg[featurize]'"


def _require(module: str, flag: str) -> Any:
    r"""Imports :obj:`module` or raises a :class:`DataError` saying what to install."""
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError:
        raise DataError(f'{flag} needs the package {module.replace("_", "-")}, which is not '
                        f'installed: {INSTALL_HINT}') from None


def _quiet_loading() -> None:
    r"""Silences transformers' per-load progress bars and notices (the command shows its own
    progress; a load failure still raises)."""
    transformers = _require('transformers', 'the encoders')
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(package)
    except PackageNotFoundError:
        return 'unknown'


def md5_file(path: str | os.PathLike, block: int = 1 << 20) -> str:
    r"""The md5 hex digest of a file, read in blocks."""
    digest = hashlib.md5()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(block), b''):
            digest.update(chunk)
    return digest.hexdigest()


def fingerprint(source: str, *files: Optional[str]) -> str:
    r"""Identifies an encoder: for a local folder the md5 of every file in it (so that changed
    weights invalidate cached chunks), else the name; plus the md5 of the extra files."""
    digest = hashlib.sha256()
    path = Path(source).expanduser()
    if path.is_dir():
        for f in sorted(p for p in path.rglob('*') if p.is_file()):
            digest.update(f.relative_to(path).as_posix().encode())
            digest.update(md5_file(f).encode())
    else:
        digest.update(source.encode())
    for f in files:
        if f is not None:
            digest.update(md5_file(f).encode())
    return digest.hexdigest()


def _source(name_or_path: str, flag: str) -> str:
    r"""A local folder as an absolute path; a name that looks like a path but does not exist
    is refused (it would otherwise be looked up on the hub)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if path.exists() or name_or_path.startswith(('.', '/', '~')) or os.sep + os.sep in name_or_path:
        raise DataError(f'{flag}: {name_or_path} is not a model folder')
    return name_or_path


def _load_failed(flag: str, name: str, error: Exception) -> DataError:
    reason = ' '.join(str(error).split())[:200]
    return DataError(f'{flag}: cannot load {name} ({type(error).__name__}: {reason}); give a '
                     'local model folder when there is no network')


class TextEncoder:
    r"""Sentence embeddings of item texts with a sentence-transformers model.

    Args:
        name_or_path (str): A local model folder (as written by ``SentenceTransformer.save``)
            or a hub name (downloaded by sentence-transformers, needs the network once).
        batch_size (int, optional): Texts per forward pass. (default: :obj:`64`)
        device (str, optional): Where to run. (default: :obj:`'cpu'`)
    """
    flag = '--text-encoder'

    def __init__(self, name_or_path: str, batch_size: int = 64, device: str = 'cpu') -> None:
        st = _require('sentence_transformers', self.flag)
        _quiet_loading()
        self.source = _source(name_or_path, self.flag)
        try:
            self.model = st.SentenceTransformer(self.source, device=device)
        except Exception as e:  # noqa: BLE001 (hub, config and weight errors of many types)
            raise _load_failed(self.flag, name_or_path, e) from None
        self.model.eval()
        self.batch_size = int(batch_size)
        dim = getattr(self.model, 'get_embedding_dimension', None) \
            or self.model.get_sentence_embedding_dimension  # sentence-transformers < 6
        self.dim = int(dim())
        self.id = fingerprint(self.source)

    def describe(self) -> Dict[str, Any]:
        return {'model': self.source, 'library': 'sentence-transformers',
                'version': _version('sentence-transformers'), 'dim': self.dim,
                'fingerprint': self.id}

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        r"""``[len(texts), dim]`` float32 embeddings (the model's own normalisation, if any)."""
        with torch.inference_mode():
            out = self.model.encode(list(texts), batch_size=self.batch_size,
                                    convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(out, dtype=np.float32)


def _load_state_dict(path: str, flag: str) -> Dict[str, torch.Tensor]:
    r"""A state dict from ``.safetensors`` or a torch file (``weights_only=True``)."""
    if not Path(path).is_file():
        raise DataError(f'{flag}: weights file not found: {path}')
    try:
        if str(path).endswith('.safetensors'):
            from safetensors.torch import load_file
            state = load_file(path)
        else:
            state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # noqa: BLE001 (corrupt or unsafe files raise many types)
        reason = ' '.join(str(e).split())[:200]
        raise DataError(f'{flag}: {path} is not a readable state dict ({reason})') from None
    if isinstance(state, dict) and 'state_dict' in state:
        state = state['state_dict']
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise DataError(f'{flag}: {path} does not hold a state dict of tensors')
    return state


def _vision_features(model: torch.nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    if hasattr(model, 'get_image_features'):
        out = model.get_image_features(pixel_values=pixel_values)
        return out if isinstance(out, torch.Tensor) else out.pooler_output
    out = model(pixel_values=pixel_values)
    pooled = getattr(out, 'pooler_output', None)
    return pooled if pooled is not None else out.last_hidden_state[:, 0]


class _HFModel:
    r"""A ``transformers`` model and its processor from a folder, weights optionally from a
    separate file."""
    flag = '--image-encoder'

    def __init__(self, name_or_path: str, weights: Optional[str], device: str) -> None:
        transformers = _require('transformers', self.flag)
        _require('PIL', self.flag)
        _quiet_loading()
        self.source = _source(name_or_path, self.flag)
        self.weights = str(Path(weights).expanduser().resolve()) if weights else None
        try:
            self.processor = self._processor(transformers)
            if self.weights is None:
                model = transformers.AutoModel.from_pretrained(self.source)
            else:
                config = transformers.AutoConfig.from_pretrained(self.source)
                model = transformers.AutoModel.from_config(config)
        except Exception as e:  # noqa: BLE001
            raise _load_failed(self.flag, name_or_path, e) from None
        if self.weights is not None:
            state = _load_state_dict(self.weights, '--image-weights')
            result = model.load_state_dict(state, strict=False)
            bad = list(result.missing_keys) + list(result.unexpected_keys)
            if bad:
                raise DataError(f'--image-weights: {self.weights} does not fit the model of '
                                f'{name_or_path} ({len(result.missing_keys)} missing, '
                                f'{len(result.unexpected_keys)} unexpected keys; first: '
                                f'{bad[0]!r})')
        self.model = model.to(device).eval()
        self.device = device
        self.id = fingerprint(self.source, self.weights)

    def _processor(self, transformers: Any) -> Any:
        return transformers.AutoImageProcessor.from_pretrained(self.source, backend='pil')

    def describe(self) -> Dict[str, Any]:
        return {'model': self.source, 'weights': self.weights, 'library': 'transformers',
                'version': _version('transformers'),
                'architecture': type(self.model).__name__, 'dim': self.dim,
                'fingerprint': self.id}

    def _pixels(self, images: List[Any]) -> torch.Tensor:
        processor = getattr(self.processor, 'image_processor', self.processor)
        return processor(images=images, return_tensors='pt')['pixel_values'].to(self.device)


class ImageEncoder(_HFModel):
    r"""Image embeddings with a ``transformers`` vision model (see the module docstring).

    Args:
        name_or_path (str): A model folder (``config.json``, ``preprocessor_config.json`` and,
            without :obj:`weights`, the weights) or a hub name.
        weights (str, optional): A state dict file loaded over the model built from the
            folder's config. (default: :obj:`None`)
        batch_size (int, optional): Images per forward pass. (default: :obj:`32`)
        device (str, optional): Where to run. (default: :obj:`'cpu'`)
    """
    def __init__(self, name_or_path: str, weights: Optional[str] = None, batch_size: int = 32,
                 device: str = 'cpu') -> None:
        super().__init__(name_or_path, weights, device)
        self.batch_size = int(batch_size)
        from PIL import Image
        self.dim = int(self.encode([Image.new('RGB', (8, 8))]).shape[1])

    def encode(self, images: Sequence[Any]) -> np.ndarray:
        r"""``[len(images), dim]`` float32 embeddings of RGB :class:`PIL.Image.Image` s."""
        out = []
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                pixels = self._pixels(list(images[start:start + self.batch_size]))
                out.append(_vision_features(self.model, pixels).float().cpu().numpy())
        return np.concatenate(out).astype(np.float32)


class JointEncoder(_HFModel):
    r"""The fused multimodal row of an item from a CLIP-like model that embeds text and images
    in one space: :math:`[\hat v \,\|\, \hat t] / \sqrt 2` with :math:`\hat v, \hat t` its
    L2-normalised image and text embeddings (SPEC §1's derived anchor, here on aligned
    embeddings; a missing image or empty text leaves its half zero).

    Args:
        name_or_path (str): A model folder with the model, its tokenizer and image processor
            (as ``CLIPModel.save_pretrained`` plus ``CLIPProcessor.save_pretrained`` write).
        batch_size (int, optional): Items per forward pass. (default: :obj:`32`)
        device (str, optional): Where to run. (default: :obj:`'cpu'`)
    """
    flag = '--joint-encoder'

    def __init__(self, name_or_path: str, batch_size: int = 32, device: str = 'cpu') -> None:
        super().__init__(name_or_path, None, device)
        for method in ('get_text_features', 'get_image_features'):
            if not hasattr(self.model, method):
                raise DataError(f'{self.flag}: {name_or_path} is a '
                                f'{type(self.model).__name__}, which has no {method}; a joint '
                                'encoder must embed text and images in one space (e.g. CLIP)')
        self.batch_size = int(batch_size)
        self.dim = 2 * int(self.model.config.projection_dim)

    def _processor(self, transformers: Any) -> Any:
        return transformers.AutoProcessor.from_pretrained(self.source, backend='pil')

    def encode(self, texts: Sequence[str], images: Sequence[Any]) -> np.ndarray:
        r"""``[n, 2 * projection_dim]`` fused rows; ``images[r]`` may be :obj:`None` and
        ``texts[r]`` empty (that half is then zero)."""
        out = []
        tokenizer = self.processor.tokenizer
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                t_batch = list(texts[start:start + self.batch_size])
                v_batch = list(images[start:start + self.batch_size])
                half = int(self.model.config.projection_dim)
                rows = torch.zeros(len(t_batch), 2, half)
                has_image = [r for r, img in enumerate(v_batch) if img is not None]
                if has_image:
                    pixels = self._pixels([v_batch[r] for r in has_image])
                    rows[has_image, 0] = _vision_features(self.model, pixels).float().cpu()
                has_text = [r for r, text in enumerate(t_batch) if text]
                if has_text:
                    tokens = tokenizer([t_batch[r] for r in has_text], padding=True,
                                       truncation=True, return_tensors='pt').to(self.device)
                    feats = self.model.get_text_features(**tokens)
                    feats = feats if isinstance(feats, torch.Tensor) else feats.pooler_output
                    rows[has_text, 1] = feats.float().cpu()
                rows = torch.nn.functional.normalize(rows, dim=-1) / np.sqrt(2.0)
                out.append(rows.reshape(len(t_batch), 2 * half).numpy())
        return np.concatenate(out).astype(np.float32)
