"""The projection domain heads (SPEC §3/§4)."""
import torch

from anchorrec_pyg.nn.projection import ProjectionDomain, ProjectionHead


def mlp(head, x):
    first, act, second = head
    assert isinstance(act, torch.nn.ReLU)
    return torch.relu(x @ first.weight.t() + first.bias) @ second.weight.t() + second.bias


def test_head_is_linear_relu_linear_with_xavier_weights():
    torch.manual_seed(0)
    head = ProjectionHead(300, 16)
    x = torch.randn(5, 300)
    torch.testing.assert_close(head(x), mlp(head, x))
    bound = (6 / (300 + 16))**0.5  # Xavier-uniform bound of the first layer
    assert head[0].weight.abs().max() <= bound
    assert head[0].weight.abs().max() > 0.8 * bound


def test_domain_heads_and_mixture():
    torch.manual_seed(0)
    dom = ProjectionDomain(8, text_dim=6, image_dim=10, mix_text=0.75, mix_image=0.25)
    c, h, t, v = torch.randn(4, 8), torch.randn(4, 8), torch.randn(4, 6), torch.randn(4, 10)
    torch.testing.assert_close(dom.project_id(c), mlp(dom.id_head, c))
    torch.testing.assert_close(dom.project_anchor(h), mlp(dom.anchor_head, h))
    torch.testing.assert_close(dom.mixture(t, v),
                               0.25 * mlp(dom.image_head, v) + 0.75 * mlp(dom.text_head, t))
    anchor = dom.project_anchor(h)
    torch.testing.assert_close(dom.anchor_correction(anchor), mlp(dom.decoder, mlp(dom.anchor_head,
                                                                                   h)))
    heads = {id(m) for m in (dom.id_head, dom.anchor_head, dom.text_head, dom.image_head,
                             dom.decoder)}
    assert len(heads) == 5  # five separate heads, no sharing


def test_heads_project_rows_independently():
    """Projecting a subset of rows equals the same rows of the full projection."""
    torch.manual_seed(0)
    dom = ProjectionDomain(8, 6, 10)
    t, v = torch.randn(7, 6), torch.randn(7, 10)
    rows = torch.tensor([5, 1, 1])
    torch.testing.assert_close(dom.mixture(t[rows], v[rows]), dom.mixture(t, v)[rows])
