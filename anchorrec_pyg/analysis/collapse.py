r"""Positional collapse of embedding spaces (SPEC §6, Fig. 1 of the AnchorRec paper).

The paper shows collapse as a 2-D t-SNE of the modality embeddings of the same items: when the
text, image and multimodal embeddings of an item are pulled onto one point, the views stop
carrying different information. Three numbers measure it without a picture:

* **mean pairwise cosine** of a space, over the ordered pairs :math:`i \ne j` of its non-zero
  rows :math:`\hat x_i = x_i / \lVert x_i \rVert`,

  .. math::
      \bar c = \frac{1}{n(n-1)} \sum_{i \ne j} \langle \hat x_i, \hat x_j\rangle
             = \frac{\lVert \sum_i \hat x_i \rVert^2 - n}{n (n - 1)},

  computed exactly in :math:`O(n d)`; 1 when all rows point the same way (collapse), about 0
  for isotropic rows;
* **effective rank** (Roy & Vetterli, *The effective rank: a measure of effective
  dimensionality*, EUSIPCO 2007) of the ``[I, d]`` table :math:`X` as it is (not centred),
  with singular values :math:`\sigma_1 \ge \dots \ge \sigma_r`:

  .. math::
      p_k = \frac{\sigma_k}{\sum_l \sigma_l}, \qquad
      \operatorname{erank}(X) = \exp\Big(-\sum_k p_k \log p_k\Big) \in [1, \min(I, d)],

  (:math:`0 \log 0 = 0`): 1 for a table whose rows are all multiples of one vector, ``d`` when
  all singular values are equal;
* **paired cosine** of two spaces of the same group and dimension, the mean over items of
  :math:`\cos(x^a_i, x^b_i)`: how close the *same* item's embeddings in two views are (1 =
  the views have collapsed onto each other).

The picture embeds the modality embeddings of a seeded sample of items (``H_mm``, ``H_text``,
``H_image`` in one panel, their projections ``h_mm``, ``h_text``, ``h_image`` in another) jointly
into 2-D, t-SNE when scikit-learn is installed (``pip install 'anchorrec-pyg[tsne]'``), PCA
otherwise, coloured by space.
"""
from __future__ import annotations

import logging
import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from anchorrec_pyg.analysis.spaces import Space
from anchorrec_pyg.errors import ConfigError
from anchorrec_pyg.schema import MODALITIES

logger = logging.getLogger(__name__)

METHODS = ('auto', 'tsne', 'pca')
DEFAULT_PLOT_ITEMS = 500
TSNE_PERPLEXITY = 30.0


def mean_pairwise_cosine(x: Tensor) -> float:
    r"""Mean cosine similarity over ordered pairs :math:`i \ne j` of the non-zero rows of
    :obj:`x` (NaN with fewer than two non-zero rows)."""
    x = x.double()
    norm = x.norm(dim=1)
    unit = x[norm > 0] / norm[norm > 0].unsqueeze(1)
    n = unit.size(0)
    if n < 2:
        return math.nan
    total = unit.sum(0)
    return float((total.dot(total) - n) / (n * (n - 1)))


def effective_rank(x: Tensor) -> float:
    r"""The effective rank of Roy & Vetterli (2007) of :obj:`x` (not centred): the exponential
    of the entropy of the singular values normalised to sum 1 (0 for an all-zero table).

    The singular values are the square roots of the eigenvalues of the smaller Gram matrix
    (:math:`X^\top X` or :math:`X X^\top`) in float64 (several times faster than an SVD of a
    7050 x 4096 table); eigenvalues below the rounding level
    :math:`\lambda_{max} \max(I, d)\, \epsilon_{64}` are zero, as in a numerical rank.
    """
    x = x.double()
    gram = x.T @ x if x.size(0) >= x.size(1) else x @ x.T
    eig = torch.linalg.eigvalsh(gram)
    tolerance = eig.max().clamp_min(0) * max(x.shape) * torch.finfo(torch.float64).eps
    sigma = torch.where(eig > tolerance, eig, torch.zeros_like(eig)).sqrt()
    total = sigma.sum()
    if total <= 0:
        return 0.0
    p = sigma / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def paired_cosine(a: Tensor, b: Tensor) -> float:
    r"""Mean over items of :math:`\cos(a_i, b_i)` (a zero row counts as cosine 0)."""
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=1).mean())


def collapse_numbers(spaces: Dict[str, Space]) -> Dict[str, object]:
    r"""Mean pairwise cosine and effective rank of every space, and the paired cosine of every
    pair of spaces of the same group and dimension (e.g. ``H_mm`` and ``H_text``).

    Returns:
        ``{'spaces': [{'name', 'group', 'dim', 'mean_cosine', 'effective_rank'}],
        'paired_cosine': [{'a', 'b', 'paired_cosine'}]}``.
    """
    rows = [{'name': s.name, 'group': s.group, 'dim': s.dim,
             'mean_cosine': mean_pairwise_cosine(s.x), 'effective_rank': effective_rank(s.x)}
            for s in spaces.values()]
    names = list(spaces)
    pairs = [{'a': a, 'b': b, 'paired_cosine': paired_cosine(spaces[a].x, spaces[b].x)}
             for i, a in enumerate(names) for b in names[i + 1:]
             if spaces[a].dim == spaces[b].dim and spaces[a].group == spaces[b].group]
    return {'spaces': rows, 'paired_cosine': pairs}


def resolve_method(method: str) -> str:
    r"""``'tsne'`` or ``'pca'``: ``'auto'`` is t-SNE when scikit-learn is installed."""
    if method not in METHODS:
        raise ConfigError(f"--method must be one of {', '.join(METHODS)} (got {method!r})")
    if method == 'pca':
        return method
    try:
        import sklearn.manifold  # noqa: F401
    except ImportError:
        if method == 'tsne':
            raise ConfigError("--method tsne needs scikit-learn: pip install "
                              "'anchorrec-pyg[tsne]' (or use --method pca)") from None
        return 'pca'
    return 'tsne'


def embed_2d(x: Tensor, method: str, seed: int = 0) -> np.ndarray:
    r"""``[n, 2]`` coordinates of the rows of :obj:`x`: exact PCA (SVD of the centred rows) or
    scikit-learn's t-SNE (PCA initialisation, perplexity ``min(30, (n - 1) / 3)``, seeded)."""
    x64 = x.double()
    if method == 'pca':
        centred = x64 - x64.mean(0)
        _, _, vh = torch.linalg.svd(centred, full_matrices=False)
        coords = centred @ vh[:2].T
        if coords.size(1) < 2:
            coords = torch.cat([coords, coords.new_zeros(coords.size(0), 2 - coords.size(1))], 1)
        return coords.numpy()
    from sklearn.manifold import TSNE
    perplexity = min(TSNE_PERPLEXITY, max((x.size(0) - 1) / 3, 1.0))
    tsne = TSNE(n_components=2, init='pca', perplexity=perplexity, random_state=seed)
    return tsne.fit_transform(x64.numpy())


def is_modality_space(space: Space) -> bool:
    """Whether a space is a modality embedding: ``<prefix>_<m>`` with ``m`` a modality."""
    return space.name.rpartition('_')[2] in MODALITIES and space.group != 'raw'


def plot_groups(spaces: Dict[str, Space],
                names: Optional[Sequence[str]] = None) -> List[List[str]]:
    r"""The panels of the picture, each a list of same-dimension spaces embedded jointly.

    By default one panel per group (original, projection) holding its modality embeddings
    (``H_mm``, ``H_text``, ``H_image``; ``h_mm``, ``h_text``, ``h_image``) when it has at least
    two; with :obj:`names`, one panel per dimension among the named spaces."""
    if names is not None:
        chosen, key = [spaces[n] for n in names], (lambda s: ('', s.dim))
    else:
        chosen = [s for s in spaces.values() if is_modality_space(s)]
        key = (lambda s: (s.group, s.dim))
    panels: Dict[Tuple[str, int], List[str]] = {}
    for s in chosen:
        panels.setdefault(key(s), []).append(s.name)
    return [v for v in panels.values() if len(v) >= 2 or names is not None]


def embed_panels(spaces: Dict[str, Space], panels: List[List[str]], num_items: int,
                 method: str, seed: int = 0) -> Dict[str, object]:
    r"""Joint 2-D coordinates of a seeded sample of :obj:`num_items` items in every panel.

    Returns ``{'method', 'items', 'panels': [{'spaces': [...], 'points': [[space, item, x, y],
    ...]}]}``.
    """
    total = next(iter(spaces.values())).x.size(0)
    generator = torch.Generator().manual_seed(seed)
    items = torch.randperm(total, generator=generator)[:min(num_items, total)].sort().values
    out = []
    for names in panels:
        x = torch.cat([spaces[n].x[items] for n in names])
        coords = embed_2d(x, method, seed)
        labels = [n for n in names for _ in range(items.numel())]
        ids = items.tolist() * len(names)
        out.append({'spaces': list(names),
                    'points': [[s, i, float(c[0]), float(c[1])]
                               for s, i, c in zip(labels, ids, coords)]})
    return {'method': method, 'items': items.tolist(), 'panels': out}
