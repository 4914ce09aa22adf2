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
    SimilarityPreservationLoss,
    cosine_similarity_matrix,
)


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
