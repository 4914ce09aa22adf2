r"""Training objectives (SPEC §4, §7, §9) as :class:`torch.nn.Module` objects.

Each module computes one *unweighted* term; the model multiplies it by its configured weight
(so the weights live in the model's ``Config``) and reports the weighted term for logging.
Constants that belong to a term's definition (the margin, the temperature, AMP's per-modality
weights) are constructor arguments with the published defaults.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from anchorrec_pyg.nn.propagation import Adjacency

__all__ = [
    'BPRLoss',
    'WeightedBPRLoss',
    'EmbeddingL2Loss',
    'EmbLoss',
    'CosineMarginLoss',
    'CosineDistanceLoss',
    'SymmetricBernoulliKL',
    'InfoNCE',
    'CandidateNCE',
    'AALLoss',
    'SimilarityPreservationLoss',
    'SimilarityTarget',
    'PackedCosineSimilarity',
    'AMPLoss',
    'GraphSmoothnessLoss',
    'cosine_similarity_matrix',
]


class BPRLoss(torch.nn.Module):
    r"""Bayesian personalised ranking (SPEC §4, §9)

    .. math::
        \mathcal{L}_{BPR} = -\frac{1}{B}\sum_{k=1}^{B}
        \log\sigma(\hat{y}_{u_k p_k} - \hat{y}_{u_k n_k}),

    computed with :func:`~torch.nn.functional.logsigmoid` (no epsilon inside the log).
    """

    def forward(self, pos_score: Tensor, neg_score: Tensor) -> Tensor:
        return -F.logsigmoid(pos_score - neg_score).mean()


class WeightedBPRLoss(torch.nn.Module):
    r"""BPR with a weight per triple on each ranking direction (DA-MRS, SPEC §10)

    .. math::
        \mathcal{L} = -\frac{1}{B}\sum_{k=1}^{B}\big[w^+_k\log\sigma(x^+_k - x^-_k)
        + w^-_k\log\sigma(x^-_k - x^+_k)\big],

    with :math:`x^\pm` the positive and negative scores; the weights are taken as given
    (detach them first if they must not carry gradient).
    """

    def forward(self, pos_score: Tensor, neg_score: Tensor, pos_weight: Tensor,
                neg_weight: Tensor) -> Tensor:
        diff = pos_score - neg_score
        return -(pos_weight * F.logsigmoid(diff) + neg_weight * F.logsigmoid(-diff)).mean()


class EmbeddingL2Loss(torch.nn.Module):
    r"""Squared L2 penalty on the batch's embeddings, divided by the batch size (SPEC §4)

    .. math::
        \mathcal{L}_{L2} = \frac{1}{2B}\left(\|\mathbf{u}\|^2 + \|\mathbf{p}\|^2
        + \|\mathbf{n}\|^2\right),

    the squared norms summed over the batch rows. SPEC divides by the *configured* batch size B,
    also for the last, smaller batch of an epoch, hence the explicit ``batch_size`` argument.
    """

    def forward(self, *embeddings: Tensor, batch_size: int) -> Tensor:
        if batch_size <= 0:
            raise ValueError(f'batch_size must be > 0, got {batch_size}')
        total = sum(emb.pow(2).sum() for emb in embeddings)
        return 0.5 * total / batch_size


class EmbLoss(torch.nn.Module):
    r"""MMRec's ``EmbLoss`` (SPEC §9): Frobenius norms, *not* squared, over the last table's rows

    .. math::
        \mathcal{L}_{emb}(\mathbf{X}_1, \dots, \mathbf{X}_k) =
        \frac{1}{\mathrm{rows}(\mathbf{X}_k)}\sum_{j=1}^{k}\|\mathbf{X}_j\|_F.
    """

    def forward(self, *embeddings: Tensor) -> Tensor:
        if not embeddings:
            raise ValueError('EmbLoss needs at least one tensor')
        total = sum(torch.linalg.matrix_norm(emb) for emb in embeddings)
        return total / embeddings[-1].size(0)


class CosineMarginLoss(torch.nn.Module):
    r"""User-item cosine margin (SPEC §4)

    .. math::
        \mathcal{L}_{CM} = \frac{1}{B}\sum_{k}\mathrm{relu}\big(m + (1 - \cos(\mathbf{u}'_k,
        \mathbf{p}_k)) - (1 - \cos(\mathbf{u}'_k, \mathbf{n}_k))\big),

    with :math:`\mathbf{u}' = \mathrm{sg}(\mathbf{u})` (stop-gradient) when ``detach_user``.

    Args:
        margin: :math:`m` (published: 0.2).
        detach_user: whether the user side is detached (published: ``True``).
    """

    def __init__(self, margin: float = 0.2, detach_user: bool = True) -> None:
        super().__init__()
        self.margin = margin
        self.detach_user = detach_user

    def forward(self, user: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
        anchor = user.detach() if self.detach_user else user
        pos_dist = 1.0 - F.cosine_similarity(anchor, pos, dim=-1)
        neg_dist = 1.0 - F.cosine_similarity(anchor, neg, dim=-1)
        return F.relu(self.margin + pos_dist - neg_dist).mean()

    def extra_repr(self) -> str:
        return f'margin={self.margin}, detach_user={self.detach_user}'


class CosineDistanceLoss(torch.nn.Module):
    r"""Mean cosine distance between matching rows (AlignRec's UIA, SPEC §7; BM3's
    :math:`c(\cdot, \cdot)`, SPEC §9)

    .. math::
        c(\mathbf{a}, \mathbf{b}) = 1 - \frac{1}{n}\sum_{k=1}^{n}\cos(\mathbf{a}_k,
        \mathbf{b}_k).
    """

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return 1.0 - F.cosine_similarity(a, b, dim=-1).mean()


class SymmetricBernoulliKL(torch.nn.Module):
    r"""Mean symmetric KL divergence between elementwise Bernoulli distributions given by logits
    (DA-MRS's alignment term, SPEC §10)

    .. math::
        \mathrm{KL} = \mathrm{mean}\big(\mathrm{kl}(p, q) + \mathrm{kl}(q, p)\big)
        = \mathrm{mean}\big((p - q)(a - b)\big),\quad
        \mathrm{kl}(p, q) = p\log\frac{p}{q} + (1 - p)\log\frac{1 - p}{1 - q},

    :math:`p = \sigma(a)`, :math:`q = \sigma(b)`: the two KLs sum to
    :math:`(p - q)(\mathrm{logit}\,p - \mathrm{logit}\,q)`. MMRec takes ``log`` of the
    probabilities, the same values until :math:`\sigma` rounds to 0 or 1, where it gives NaN;
    this form has no log and keeps four ``n x m`` tensors for the backward pass instead of a
    dozen.
    """

    def forward(self, logit_p: Tensor, logit_q: Tensor) -> Tensor:
        return ((torch.sigmoid(logit_p) - torch.sigmoid(logit_q)) * (logit_p - logit_q)).mean()


class InfoNCE(torch.nn.Module):
    r"""In-batch InfoNCE between two views (SPEC §4)

    .. math::
        \mathrm{InfoNCE}(\mathbf{a}, \mathbf{b}) = -\frac{1}{n}\sum_{k=1}^{n}\log
        \frac{\exp(\langle\bar{\mathbf{a}}_k, \bar{\mathbf{b}}_k\rangle / \tau)}
        {\sum_{l=1}^{n}\exp(\langle\bar{\mathbf{a}}_k, \bar{\mathbf{b}}_l\rangle / \tau)},

    with :math:`\bar{\cdot}` the L2-normalised rows; the negatives of row ``k`` are all rows of
    ``b`` in the batch (duplicates included). Computed as a cross-entropy over the logits (the
    log-sum-exp form, numerically stable for small :math:`\tau`).

    With ``counts`` the rows are the :math:`D` distinct items of the batch and :math:`c_k` how
    often item :math:`k` occurs in it; a duplicated row repeats a row and a column of the
    logits, so the same value is

    .. math::
        \frac{1}{\sum_k c_k}\sum_{k=1}^{D} c_k\Big(\log\sum_{l=1}^{D}
        c_l\,e^{\ell_{kl}} - \ell_{kk}\Big), \qquad \ell_{kl} =
        \langle\bar{\mathbf{a}}_k, \bar{\mathbf{b}}_l\rangle / \tau,

    from a ``D x D`` instead of an ``n x n`` logit matrix.

    Args:
        tau: the temperature :math:`\tau > 0`.
    """

    def __init__(self, tau: float) -> None:
        super().__init__()
        if tau <= 0:
            raise ValueError(f'tau must be > 0, got {tau}')
        self.tau = tau

    def forward(self, a: Tensor, b: Tensor, counts: Tensor | None = None) -> Tensor:
        if a.shape != b.shape:
            raise ValueError(f'InfoNCE views must have the same shape, got {list(a.shape)} '
                             f'and {list(b.shape)}')
        logits = (F.normalize(a, dim=-1) / self.tau) @ F.normalize(b, dim=-1).t()
        target = torch.arange(a.size(0), device=a.device)
        if counts is None:
            return F.cross_entropy(logits, target)
        if counts.shape != (a.size(0), ):
            raise ValueError(f'counts must have shape [{a.size(0)}], got {list(counts.shape)}')
        weight = counts.to(logits.dtype)
        log_weight = weight.log()
        # cross_entropy(l + log c) = log sum_l c_l e^{l_kl} - l_kk - log c_k
        per_row = F.cross_entropy(logits + log_weight, target, reduction='none') + log_weight
        return (weight * per_row).sum() / weight.sum()

    def extra_repr(self) -> str:
        return f'tau={self.tau}'


class CandidateNCE(torch.nn.Module):
    r"""Contrastive loss of anchor rows against *every* row of a candidate table, summed over the
    anchors (LGMRec's hypergraph NCE, SPEC §10)

    .. math::
        \mathrm{NCE}(\mathbf{a}, \mathbf{M}, t) = \sum_{k=1}^{n} -\log
        \frac{\exp(\cos(\mathbf{a}_k, \mathbf{M}_{t_k}) / \tau)}
        {\sum_{l=1}^{N}\exp(\cos(\mathbf{a}_k, \mathbf{M}_l) / \tau)},

    where row :math:`t_k` of :math:`\mathbf{M}` (``N`` rows: all users, or all items) is the
    positive of anchor :math:`k`. Unlike :class:`InfoNCE` the negatives are the whole table, not
    the batch, and the rows are summed, not averaged (so the term grows with the batch size).
    Computed as a summed cross-entropy over the ``n x N`` logits.

    Args:
        tau: the temperature :math:`\tau > 0` (published 0.2).
    """

    def __init__(self, tau: float) -> None:
        super().__init__()
        if tau <= 0:
            raise ValueError(f'tau must be > 0, got {tau}')
        self.tau = tau

    def forward(self, anchors: Tensor, candidates: Tensor, target: Tensor) -> Tensor:
        if anchors.size(0) != target.numel():
            raise ValueError(f'CandidateNCE got {anchors.size(0)} anchors and '
                             f'{target.numel()} targets')
        logits = (F.normalize(anchors, dim=-1) / self.tau) @ F.normalize(candidates, dim=-1).t()
        return F.cross_entropy(logits, target, reduction='sum')

    def extra_repr(self) -> str:
        return f'tau={self.tau}'


class AALLoss(torch.nn.Module):
    r"""Anchor-aligned learning (SPEC §4)

    .. math::
        \mathcal{L}_{AAL} = \mathrm{InfoNCE}(\mathbf{h}_{mm}, \mathbf{h}_{id})
        + \mathrm{InfoNCE}(\mathrm{sg}(\mathbf{h}_{mm}), \mathbf{h}_{mix}),

    the multimodal anchor :math:`\mathbf{h}_{mm}` pulled towards the ID view while the modality
    mixture :math:`\mathbf{h}_{mix}` is pulled towards the (stopped) anchor: no gradient of the
    second term reaches the anchor.

    Args:
        tau: the InfoNCE temperature.
    """

    def __init__(self, tau: float) -> None:
        super().__init__()
        self.info_nce = InfoNCE(tau)

    def forward(self, h_mm: Tensor, h_id: Tensor, h_mix: Tensor,
                counts: Tensor | None = None) -> Tensor:
        """``counts``: the rows are distinct items with these multiplicities (see
        :class:`InfoNCE`)."""
        return self.info_nce(h_mm, h_id, counts) + self.info_nce(h_mm.detach(), h_mix, counts)


def cosine_similarity_matrix(x: Tensor, eps: float = 1e-12) -> Tensor:
    r"""Pairwise cosine similarities :math:`\bar{\mathbf{X}}\bar{\mathbf{X}}^\top` of the rows of
    ``x`` (a zero row has similarity 0 to every row)."""
    x = F.normalize(x, dim=-1, eps=eps)
    return x @ x.t()


class PackedCosineSimilarity:
    r"""The ``I x I`` cosine-similarity matrix :math:`\bar{\mathbf{X}}\bar{\mathbf{X}}^\top` of a
    table's rows, stored as its lower triangle packed row by row: :math:`I(I+1)/2` values, half
    the memory of the full matrix (99 MB instead of 199 MB for 7,050 items in float32).

    Built in blocks of ``block_rows`` rows, so the full matrix never exists; the values are
    those of :func:`cosine_similarity_matrix` up to the rounding of a blocked product.

    Args:
        table: the feature rows ``[I, f]``.
        block_rows: rows per block of the build.
    """

    def __init__(self, table: Tensor, block_rows: int = 1024) -> None:
        unit = F.normalize(table.detach(), dim=-1)
        num = unit.size(0)
        self.num_rows = num
        self.values = unit.new_empty(num * (num + 1) // 2)
        for start in range(0, num, block_rows):
            end = min(start + block_rows, num)
            rows = unit[start:end] @ unit[:end].t()
            lower = torch.ones(end - start, end, dtype=torch.bool, device=unit.device)
            self.values[start * (start + 1) // 2:end * (end + 1) // 2] = rows[lower.tril_(start)]

    @staticmethod
    def nbytes(num_rows: int, element_size: int) -> int:
        """The memory of the packed matrix of ``num_rows`` rows."""
        return num_rows * (num_rows + 1) // 2 * element_size

    def block(self, index: Tensor) -> Tensor:
        """The ``[n, n]`` block of the rows and columns ``index`` (sorted, distinct)."""
        if index.numel() > 1 and not bool((index[1:] > index[:-1]).all()):
            raise ValueError('PackedCosineSimilarity.block needs sorted distinct indices')
        start = index * (index + 1) // 2
        # row a, column b <= a lies at start[a] + index[b]; the upper part is the transpose
        lower = self.values[start[:, None] + index[None, :]].tril_()
        return lower + lower.tril(-1).t()


@dataclass
class SimilarityTarget:
    r"""The target :math:`\mathbf{S}` of :class:`SimilarityPreservationLoss` for a batch of
    :math:`n` rows over :math:`D` distinct items, in a form that never builds an ``n x n`` matrix.

    Attributes:
        counts: ``[D]``, how many times each distinct item occurs in the batch
            (:math:`n = \sum_a c_a`).
        block: ``[D, D]``, :math:`\mathbf{S}` restricted to the distinct items, or ``None``.
        unit_rows: ``[D, f]``, the L2-normalised raw feature rows :math:`\bar{\mathbf{X}}` of the
            distinct items (:math:`\mathbf{S} = \bar{\mathbf{X}}\bar{\mathbf{X}}^\top`), used
            when ``block`` is ``None``.
    """

    counts: Tensor
    block: Tensor | None = None
    unit_rows: Tensor | None = None

    def __post_init__(self) -> None:
        num = self.counts.numel()
        if self.block is not None and tuple(self.block.shape) != (num, num):
            raise ValueError(f'block must be [{num}, {num}], got {list(self.block.shape)}')
        if self.block is None and (self.unit_rows is None or self.unit_rows.size(0) != num):
            raise ValueError(f'a SimilarityTarget needs block or unit_rows with {num} rows')


class SimilarityPreservationLoss(torch.nn.Module):
    r"""Similarity preservation (AMP's ``sim``, SPEC §4; AlignRec's similarity term, SPEC §7)

    .. math::
        \mathrm{sim}(\mathbf{E}, \mathbf{S}) = \frac{1}{n}\|\mathbf{E}\mathbf{E}^\top
        - \mathbf{S}\|_F,

    the Frobenius norm, *not* squared, of the difference between the Gram matrix of the (not
    normalised) embedding rows and a target similarity matrix, divided by the number of rows
    ``n`` (duplicates kept). ``S`` is a constant target (detached).

    Two call forms give the same value:

    * ``loss(E, S)`` with the ``n`` batch rows and the dense ``n x n`` target (the reference);
    * ``loss(E_D, target)`` with the :math:`D` distinct rows and a :class:`SimilarityTarget`
      holding their counts :math:`\mathbf{c}` (:math:`\mathbf{W} = \mathrm{diag}(\mathbf{c})`).
      A duplicated row repeats its row and column of the difference, so with the expansion
      :math:`\|\mathbf{M}\|_F^2` of the weighted difference
      :math:`\mathbf{M} = \mathbf{W}^{1/2}(\mathbf{E}_D\mathbf{E}_D^\top - \mathbf{S}_D)
      \mathbf{W}^{1/2}`

      .. math::
          \|\mathbf{E}_D^\top\mathbf{W}\mathbf{E}_D\|_F^2
          - 2\,\langle \mathbf{S}_D\mathbf{W}\mathbf{E}_D, \mathbf{W}\mathbf{E}_D\rangle
          + \mathbf{c}^\top(\mathbf{S}_D \odot \mathbf{S}_D)\,\mathbf{c},

      where, from the unit feature rows
      (:math:`\mathbf{S}_D = \bar{\mathbf{X}}\bar{\mathbf{X}}^\top`), the last two terms are
      :math:`\|\bar{\mathbf{X}}^\top\mathbf{W}\mathbf{E}_D\|_F^2` and
      :math:`\|\bar{\mathbf{X}}^\top\mathbf{W}\bar{\mathbf{X}}\|_F^2` (through the block
      instead when :math:`D < f`, the cheaper order). Only ``d x d``, ``f x d`` and ``D x D``
      (or ``f x f``) products are formed: no ``n x n`` matrix, about ``n / d`` times less work
      than the reference for the Gram term.
      The three sums are accumulated in float64, so the cancellation of the expansion costs no
      accuracy in float32 training.
    """

    def forward(self, embedding: Tensor, target: Tensor | SimilarityTarget) -> Tensor:
        if isinstance(target, SimilarityTarget):
            return self._factored(embedding, target)
        n = embedding.size(0)
        if target.shape != (n, n):
            raise ValueError(f'target must be [{n}, {n}], got {list(target.shape)}')
        return torch.linalg.matrix_norm(embedding @ embedding.t() - target.detach()) / n

    @staticmethod
    def _factored(embedding: Tensor, target: SimilarityTarget) -> Tensor:
        counts = target.counts.to(embedding.dtype)
        if embedding.size(0) != counts.numel():
            raise ValueError(f'the embedding has {embedding.size(0)} rows but the target '
                             f'{counts.numel()} distinct items')
        weighted = counts[:, None] * embedding
        gram = (embedding.t() @ weighted).double().square().sum()
        block = None if target.block is None else target.block.detach().to(embedding.dtype)
        unit = None if target.unit_rows is None else target.unit_rows.detach().to(embedding.dtype)
        if block is None and unit.size(0) < unit.size(1):  # D^2 f < D f^2: form the block
            block = unit @ unit.t()
        if block is not None:
            cross = ((block @ weighted).double() * weighted.double()).sum()
            with torch.no_grad():
                const = ((block.square() @ counts).double() * counts.double()).sum()
        else:
            cross = (unit.t() @ weighted).double().square().sum()
            with torch.no_grad():
                const = (unit.t() @ (counts[:, None] * unit)).double().square().sum()
        squared = (gram - 2.0 * cross + const).clamp_min(torch.finfo(torch.float64).tiny)
        return (squared.sqrt() / counts.sum().double()).to(embedding.dtype)


class AMPLoss(torch.nn.Module):
    r"""Anchor-modality preservation (SPEC §4)

    .. math::
        \mathcal{L}_{AMP} = \sum_{m} \alpha_m\,\mathrm{sim}(\mathbf{H}_m, \mathbf{S}_m),
        \qquad \alpha_{mm} = 1,\ \alpha_{text} = 0.03,\ \alpha_{image} = 0.01,

    with :class:`SimilarityPreservationLoss` ``sim`` on each modality's view rows and the cosine
    similarities of the matching raw feature rows (dense ``n x n`` targets with the batch rows,
    or :class:`SimilarityTarget` objects with the distinct rows).

    Args:
        weights: :math:`\alpha_m` by modality name (published: mm 1, text 0.03, image 0.01).
    """

    def __init__(self, weights: Mapping[str, float] | None = None) -> None:
        super().__init__()
        self.weights = dict(weights if weights is not None else {
            'mm': 1.0,
            'text': 0.03,
            'image': 0.01
        })
        self.sim = SimilarityPreservationLoss()

    def forward(self, embeddings: Mapping[str, Tensor],
                targets: Mapping[str, Tensor | SimilarityTarget]) -> Tensor:
        missing = [m for m in self.weights if m not in embeddings or m not in targets]
        if missing:
            raise ValueError(f'AMPLoss needs embeddings and targets for {missing}')
        terms = [w * self.sim(embeddings[m], targets[m]) for m, w in self.weights.items()]
        return torch.stack(terms).sum()

    def extra_repr(self) -> str:
        return f'weights={self.weights}'


class GraphSmoothnessLoss(torch.nn.Module):
    r"""Graph smoothness of node embeddings over a weighted graph (SPEC §4)

    .. math::
        \mathcal{L}_{smooth} = \frac{1}{|\mathcal{E}|}\sum_{(j \rightarrow i, w)\in\mathcal{E}}
        w\,\|\mathbf{x}_i - \mathbf{x}_j\|^2.

    Given the graph's operator ``adj`` (:math:`\mathbf{A}`, rows = targets, from any propagation
    backend), the same sum is computed through its expansion

    .. math::
        \sum_i (r_i + s_i)\,\|\mathbf{x}_i\|^2 - 2\sum_i \langle\mathbf{x}_i,
        (\mathbf{A}\mathbf{x})_i\rangle, \qquad r_i = \sum_{(j \rightarrow i, w)} w,\quad
        s_j = \sum_{(j \rightarrow i, w)} w,

    one sparse product instead of gathering and differencing both ends of every edge (about
    ten times less memory traffic for a kNN graph). It runs in float64, so that the cancellation
    of the expansion (neighbours' embeddings are close) costs no accuracy; without ``adj`` the
    edge-wise sum above is computed directly.
    """

    def forward(self, x: Tensor, edge_index: Tensor, edge_weight: Tensor,
                adj: Adjacency | None = None) -> Tensor:
        if adj is None:
            diff = x.index_select(0, edge_index[1]) - x.index_select(0, edge_index[0])
            return (edge_weight.to(x.dtype) * diff.pow(2).sum(dim=-1)).mean()
        x64, weight = x.double(), edge_weight.detach().double()
        degree = (torch.zeros(x.size(0), dtype=torch.float64, device=x.device)
                  .index_add_(0, edge_index[1], weight).index_add_(0, edge_index[0], weight))
        total = (degree * x64.square().sum(dim=-1)).sum() - 2.0 * (x64 * (adj @ x64)).sum()
        return (total / edge_index.size(1)).to(x.dtype)
