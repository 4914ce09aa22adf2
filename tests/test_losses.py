"""Every loss against a hand computation on a tiny example (SPEC §4, §7, §9)."""
import math

import pytest
import torch

from anchorrec_pyg.losses import (
    AALLoss,
    AMPLoss,
    BPRLoss,
    CosineMarginLoss,
    EmbeddingL2Loss,
    EmbLoss,
    GraphSmoothnessLoss,
    InfoNCE,
    PackedCosineSimilarity,
    SimilarityPreservationLoss,
    SimilarityTarget,
    cosine_similarity_matrix,
)
from anchorrec_pyg.nn.propagation import BACKENDS, get_backend


def test_bpr_by_hand():
    pos = torch.tensor([2.0, 0.0])
    neg = torch.tensor([1.0, 1.0])
    # -mean(log sigmoid(1), log sigmoid(-1))
    expected = -(math.log(1 / (1 + math.exp(-1))) + math.log(1 / (1 + math.exp(1)))) / 2
    assert BPRLoss()(pos, neg).item() == pytest.approx(expected, rel=1e-6)


def test_bpr_is_finite_for_large_margins():
    loss = BPRLoss()(torch.tensor([-200.0]), torch.tensor([0.0]))
    assert loss.item() == pytest.approx(200.0)


def test_embedding_l2_by_hand_divides_by_the_given_batch_size():
    u = torch.tensor([[1.0, 2.0]])  # |u|^2 = 5
    p = torch.tensor([[0.0, 3.0]])  # 9
    n = torch.tensor([[1.0, 1.0]])  # 2
    assert EmbeddingL2Loss()(u, p, n, batch_size=4).item() == pytest.approx(0.5 * 16 / 4)
    with pytest.raises(ValueError):
        EmbeddingL2Loss()(u, batch_size=0)


def test_emb_loss_is_frobenius_not_squared_over_last_rows():
    a = torch.tensor([[3.0, 4.0]])  # ||a||_F = 5
    b = torch.tensor([[1.0, 0.0], [0.0, 0.0]])  # 1, two rows
    assert EmbLoss()(a, b).item() == pytest.approx((5 + 1) / 2)


def test_cosine_margin_by_hand_and_user_detached():
    u = torch.tensor([[1.0, 0.0], [1.0, 1.0]], requires_grad=True)
    p = torch.tensor([[1.0, 1.0], [1.0, 1.0]], requires_grad=True)
    n = torch.tensor([[1.0, 0.5], [-1.0, -1.0]], requires_grad=True)
    # row 0: pos dist 1 - 1/sqrt(2), neg dist 1 - 1/sqrt(1.25) -> 0.2 + 0.2929 - 0.1056 > 0
    # row 1: pos dist 0, neg dist 2 -> relu(0.2 - 2) = 0
    expected = (0.2 + (1 - 1 / math.sqrt(2)) - (1 - 1 / math.sqrt(1.25))) / 2
    loss = CosineMarginLoss(margin=0.2)(u, p, n)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert u.grad is None
    assert p.grad.abs().sum() > 0 and n.grad[0].abs().sum() > 0
    assert n.grad[1].abs().sum() == 0  # inactive hinge
    u2 = u.detach().clone().requires_grad_()
    CosineMarginLoss(margin=0.2, detach_user=False)(u2, p.detach(), n.detach()).backward()
    assert u2.grad.abs().sum() > 0


def test_info_nce_by_hand():
    a = torch.tensor([[2.0, 0.0], [0.0, 1.0]])  # normalised: e1, e2
    b = torch.tensor([[1.0, 1.0], [0.0, 3.0]])  # normalised: (1,1)/sqrt2, e2
    tau = 0.5
    s = 1 / math.sqrt(2)
    # row 0: logits (s, 0)/tau, positive s; row 1: logits (s, 1)/tau, positive 1
    row0 = -math.log(math.exp(s / tau) / (math.exp(s / tau) + math.exp(0)))
    row1 = -math.log(math.exp(1 / tau) / (math.exp(s / tau) + math.exp(1 / tau)))
    assert InfoNCE(tau)(a, b).item() == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_info_nce_keeps_duplicate_rows_as_negatives():
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    b = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert InfoNCE(1.0)(a, b).item() == pytest.approx(math.log(2), rel=1e-6)


def test_info_nce_rejects_bad_input():
    with pytest.raises(ValueError, match='tau'):
        InfoNCE(0.0)
    with pytest.raises(ValueError, match='same shape'):
        InfoNCE(1.0)(torch.ones(2, 3), torch.ones(3, 3))


def test_aal_sums_two_info_nce_and_stops_gradient_to_the_anchor_in_the_second():
    torch.manual_seed(0)
    h_mm = torch.randn(5, 4, requires_grad=True)
    h_id = torch.randn(5, 4, requires_grad=True)
    h_mix = torch.randn(5, 4, requires_grad=True)
    aal = AALLoss(tau=0.2)
    loss = aal(h_mm, h_id, h_mix)
    nce = InfoNCE(0.2)
    torch.testing.assert_close(loss, nce(h_mm, h_id) + nce(h_mm, h_mix))
    loss.backward()
    (only_first, ) = torch.autograd.grad(nce(h_mm, h_id), h_mm)
    torch.testing.assert_close(h_mm.grad, only_first)  # the mixture term adds nothing
    assert h_mix.grad.abs().sum() > 0


def test_similarity_preservation_is_frobenius_not_squared_over_n():
    e = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # E E^T = diag(1, 4)
    s = torch.tensor([[1.0, 0.5], [0.5, 1.0]])
    # difference [[0, -0.5], [-0.5, 3]]: ||.||_F = sqrt(0.25 + 0.25 + 9)
    expected = math.sqrt(9.5) / 2
    assert SimilarityPreservationLoss()(e, s).item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match='target'):
        SimilarityPreservationLoss()(e, torch.ones(3, 3))


def test_similarity_preservation_does_not_backprop_into_the_target():
    e = torch.randn(3, 2, requires_grad=True)
    s = torch.randn(3, 3, requires_grad=True)
    SimilarityPreservationLoss()(e, s).backward()
    assert s.grad is None and e.grad is not None


def test_cosine_similarity_matrix():
    x = torch.tensor([[3.0, 4.0], [0.0, 2.0], [0.0, 0.0]])
    expected = torch.tensor([[1.0, 0.8, 0.0], [0.8, 1.0, 0.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(cosine_similarity_matrix(x), expected)


def test_amp_weights_the_three_views():
    e = {m: torch.eye(2) * (i + 1) for i, m in enumerate(('mm', 'text', 'image'))}
    s = {m: torch.zeros(2, 2) for m in e}
    # sim(k I, 0) = ||k^2 I||_F / 2 = k^2 sqrt(2) / 2
    sims = [k * k * math.sqrt(2) / 2 for k in (1, 2, 3)]
    expected = sims[0] + 0.03 * sims[1] + 0.01 * sims[2]
    assert AMPLoss()(e, s).item() == pytest.approx(expected, rel=1e-6)
    assert AMPLoss({'mm': 1.0})(e, s).item() == pytest.approx(sims[0], rel=1e-6)
    with pytest.raises(ValueError, match='image'):
        AMPLoss()({'mm': e['mm'], 'text': e['text']}, s)


def test_graph_smoothness_by_hand():
    x = torch.tensor([[0.0, 0.0], [1.0, 1.0], [3.0, 0.0]])
    edge_index = torch.tensor([[1, 2, 0], [0, 0, 0]])  # 1 -> 0, 2 -> 0, self loop 0
    edge_weight = torch.tensor([0.5, 2.0, 1.0])
    expected = (0.5 * 2.0 + 2.0 * 9.0 + 1.0 * 0.0) / 3
    assert GraphSmoothnessLoss()(x, edge_index, edge_weight).item() == pytest.approx(expected)
    for name in sorted(BACKENDS):  # the expansion through each backend's operator
        adj = get_backend(name).adjacency(edge_index, edge_weight, (3, 3))
        assert GraphSmoothnessLoss()(x, edge_index, edge_weight, adj).item() == pytest.approx(
            expected)


@pytest.mark.parametrize('backend', sorted(BACKENDS))
def test_graph_smoothness_expansion_matches_edge_sum_values_and_gradients(backend):
    """On a random kNN-like graph (self loops, isolated nodes), in float32
    with neighbours nearly equal (where the expansion cancels): the float64 expansion agrees
    with the float64 edge sum in value and gradient."""
    gen = torch.Generator().manual_seed(0)
    edge_index = torch.randint(0, 40, (2, 300), generator=gen).unique(dim=1)
    edge_weight = torch.rand(edge_index.size(1), generator=gen)
    base = torch.randn(1, 8, generator=gen)
    x = (base + 1e-3 * torch.randn(45, 8, generator=gen)).requires_grad_()  # 40..44 isolated
    x64 = x.detach().double().requires_grad_()
    reference = GraphSmoothnessLoss()(x64, edge_index, edge_weight.double())
    reference.backward()
    adj = get_backend(backend).adjacency(edge_index, edge_weight, (45, 45))
    loss = GraphSmoothnessLoss()(x, edge_index, edge_weight, adj)
    loss.backward()
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize('form', ['block', 'unit_wide', 'unit_narrow'])
def test_similarity_preservation_factored_equals_dense_with_duplicates(form):
    """The distinct-rows form (counts + block or unit feature rows) gives the dense n x n value
    and gradient, duplicates included; 'unit_wide' (f > D) goes through the D x D block,
    'unit_narrow' (f < D) through the f x f Gram matrix."""
    gen = torch.Generator().manual_seed(0)
    width = {'block': 6, 'unit_wide': 9, 'unit_narrow': 3}[form]
    items = torch.tensor([4, 1, 4, 0, 2, 4, 1, 3])  # n = 8 rows, D = 5 distinct items
    table = torch.randn(5, 4, dtype=torch.float64, generator=gen)
    feats = torch.randn(5, width, dtype=torch.float64, generator=gen)
    unit = torch.nn.functional.normalize(feats, dim=-1)

    dense_e = table.clone().requires_grad_()
    dense = SimilarityPreservationLoss()(dense_e[items], cosine_similarity_matrix(feats[items]))
    dense.backward()

    distinct, counts = torch.unique(items, return_counts=True)
    target = (SimilarityTarget(counts, block=unit[distinct] @ unit[distinct].t())
              if form == 'block' else SimilarityTarget(counts, unit_rows=unit[distinct]))
    factored_e = table.clone().requires_grad_()
    factored = SimilarityPreservationLoss()(factored_e[distinct], target)
    factored.backward()
    torch.testing.assert_close(factored, dense)
    torch.testing.assert_close(factored_e.grad, dense_e.grad)


def test_similarity_preservation_factored_float32_matches_float64_reference():
    """The float64 accumulation keeps float32 within 1e-5 of the exact value, also when E E^T
    nearly equals S (the expansion cancels)."""
    gen = torch.Generator().manual_seed(1)
    items = torch.randint(0, 300, (512, ), generator=gen)
    unit = torch.nn.functional.normalize(torch.randn(300, 48, generator=gen, dtype=torch.float64),
                                         dim=-1)
    distinct, counts = torch.unique(items, return_counts=True)
    for noise in (1.0, 1e-2):  # E = unit rows + noise: E E^T close to S for small noise
        e = unit + noise * torch.randn(300, 48, generator=gen, dtype=torch.float64)
        exact = SimilarityPreservationLoss()(e[items], unit[items] @ unit[items].t())
        fast = SimilarityPreservationLoss()(
            e.float()[distinct], SimilarityTarget(counts, unit_rows=unit.float()[distinct]))
        assert fast.item() == pytest.approx(exact.item(), rel=1e-5)


def test_similarity_target_checks_its_shapes():
    with pytest.raises(ValueError, match='block'):
        SimilarityTarget(torch.ones(3), block=torch.zeros(2, 2))
    with pytest.raises(ValueError, match='unit_rows'):
        SimilarityTarget(torch.ones(3))
    with pytest.raises(ValueError, match='distinct'):
        SimilarityPreservationLoss()(torch.zeros(2, 4), SimilarityTarget(
            torch.ones(3), unit_rows=torch.zeros(3, 4)))


def test_info_nce_with_counts_equals_the_duplicated_batch():
    """Distinct rows with multiplicities give the value and gradients of the n-row batch in
    which every duplicate is both a positive and a negative (SPEC §4)."""
    gen = torch.Generator().manual_seed(3)
    items = torch.tensor([2, 0, 2, 1, 2, 0])
    a_table = torch.randn(3, 5, dtype=torch.float64, generator=gen)
    b_table = torch.randn(3, 5, dtype=torch.float64, generator=gen)
    nce = InfoNCE(0.3)
    a1, b1 = a_table.clone().requires_grad_(), b_table.clone().requires_grad_()
    dense = nce(a1[items], b1[items])
    dense.backward()
    distinct, counts = torch.unique(items, return_counts=True)
    a2, b2 = a_table.clone().requires_grad_(), b_table.clone().requires_grad_()
    weighted = nce(a2[distinct], b2[distinct], counts)
    weighted.backward()
    torch.testing.assert_close(weighted, dense)
    torch.testing.assert_close(a2.grad, a1.grad)
    torch.testing.assert_close(b2.grad, b1.grad)
    ones = torch.ones(3, dtype=torch.long)  # all counts 1: the plain form
    torch.testing.assert_close(nce(a_table, b_table, ones), nce(a_table, b_table))
    with pytest.raises(ValueError, match='counts'):
        nce(a_table, b_table, counts[:2])


@pytest.mark.parametrize('block_rows', [1, 7, 64])
def test_packed_cosine_similarity_blocks_equal_the_full_matrix(block_rows):
    gen = torch.Generator().manual_seed(5)
    table = torch.randn(23, 6, dtype=torch.float64, generator=gen)
    table[4] = 0.0  # a zero row: similarity 0 to every row
    packed = PackedCosineSimilarity(table, block_rows=block_rows)
    full = cosine_similarity_matrix(table)
    assert packed.values.numel() == 23 * 24 // 2
    assert PackedCosineSimilarity.nbytes(23, 8) == packed.values.numel() * 8
    for index in (torch.arange(23), torch.tensor([0, 4, 5, 17, 22]), torch.tensor([9])):
        torch.testing.assert_close(packed.block(index), full[index][:, index])
    with pytest.raises(ValueError, match='sorted'):
        packed.block(torch.tensor([3, 1]))
