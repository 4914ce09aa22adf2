"""AnchorRec (SPEC §2-§4) against an independent dense re-implementation on a tiny graph."""
import copy
import math

import pytest
import torch
from torch_geometric.data import HeteroData

from anchorrec_pyg.errors import ConfigError, DataError
from anchorrec_pyg.models import AnchorRec, RecOutput, get_model_class
from anchorrec_pyg.models.similarity import cached_similarities, similarity_target
from anchorrec_pyg.schema import MODALITIES

NUM_USERS, NUM_ITEMS, K = 5, 8, 3
DIMS = {'mm': 6, 'text': 5, 'image': 7}
UI = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 3, 3, 3, 4, 4],
                   [0, 2, 5, 1, 2, 3, 6, 0, 4, 7, 5, 6]])


def dense_knn(features, k=K):
    """SPEC §2: keep each row's k largest cosine similarities, w / sqrt(s_i s_j)."""
    x = features / features.norm(dim=1, keepdim=True)
    sim = x @ x.t()
    val, idx = sim.topk(k, dim=1)
    a = torch.zeros_like(sim).scatter_(1, idx, val)
    s = a.sum(1)
    return a / (s[:, None] * s[None, :]).sqrt()


def dense_r():
    """R (U x I) with w(u, i) = 1 / sqrt(deg(u) deg(i))."""
    r = torch.zeros(NUM_USERS, NUM_ITEMS, dtype=torch.float64)
    r[UI[0], UI[1]] = 1
    return r / (r.sum(1, keepdim=True) * r.sum(0, keepdim=True)).sqrt().clamp_min(1e-30) * r


def tiny_data(seed=0, modalities=('mm', 'text', 'image')) -> HeteroData:
    """A hand-built Contract 1 HeteroData: features, user-item graph, one kNN graph each."""
    gen = torch.Generator().manual_seed(seed)
    data = HeteroData()
    data['user'].num_nodes = NUM_USERS
    data['item'].num_nodes = NUM_ITEMS
    r = dense_r()
    w = r[UI[0], UI[1]].float()
    data['user', 'interacts', 'item'].edge_index = UI
    data['user', 'interacts', 'item'].edge_weight = w
    data['item', 'rev_interacts', 'user'].edge_index = UI.flip(0)
    data['item', 'rev_interacts', 'user'].edge_weight = w
    for m in modalities:
        feats = torch.rand(NUM_ITEMS, DIMS[m], generator=gen, dtype=torch.float64) + 0.01
        data['item'][f'x_{m}'] = feats.float()
        a = dense_knn(feats)
        target, source = a.nonzero(as_tuple=True)
        data['item', f'similar_{m}', 'item'].edge_index = torch.stack([source, target])
        data['item', f'similar_{m}', 'item'].edge_weight = a[target, source].float()
    return data


def mlp(head, x):
    first, _, second = head
    return torch.relu(x @ first.weight.t() + first.bias) @ second.weight.t() + second.bias


def dense_collaborative_view(model, num_layers):
    """SPEC §3.1: the mean of LightGCN layers 0..L on the dense normalised adjacency."""
    r = dense_r()
    n = NUM_USERS + NUM_ITEMS
    a_hat = torch.zeros(n, n, dtype=torch.float64)
    a_hat[:NUM_USERS, NUM_USERS:] = r
    a_hat[NUM_USERS:, :NUM_USERS] = r.t()
    layers = [torch.cat([model.user_embedding.weight, model.item_embedding.weight])]
    for _ in range(num_layers):
        layers.append(a_hat @ layers[-1])
    return torch.stack(layers).mean(0)


def loss_history(build, data, steps=40):
    """Losses of ``steps`` Adam steps (lr 0.01) on the tiny batch, from seed 0; every term
    must stay finite."""
    torch.manual_seed(0)
    model = build(data)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    users, pos = UI[0], UI[1]
    neg = (pos + 3) % NUM_ITEMS
    history = []
    for _ in range(steps):
        opt.zero_grad()
        total, terms = model.loss(data, model(data), users, pos, neg, batch_size=2048)
        total.backward()
        opt.step()
        assert all(math.isfinite(v.item()) for v in terms.values())
        history.append(total.item())
    return history


def dense_reference(model: AnchorRec, data: HeteroData):
    """SPEC §3 written out with dense matrices, from the model's parameters only."""
    cfg = model.config
    r = dense_r()
    c = dense_collaborative_view(model, cfg.n_ui_layers)
    ei = model.item_embedding.weight
    h, hu = {}, {}
    for m in ('mm', 'text', 'image'):
        gate = model.modality_convs[m].gated
        f = model.features[m]
        if cfg.feature_layernorm:
            f = torch.nn.functional.layer_norm(f, f.shape[1:], gate.norm.weight, gate.norm.bias)
        p = f @ gate.proj.weight.t() + gate.proj.bias
        x = ei * torch.sigmoid(p @ gate.gate.weight.t() + gate.gate.bias)
        a_m = dense_knn(data['item'][f'x_{m}'].double())
        h[m] = torch.linalg.matrix_power(a_m, cfg.n_layers) @ x
        hu[m] = r @ h[m]
    correction = mlp(model.projection.decoder, mlp(model.projection.anchor_head, h['mm']))
    fused = ('mm', 'text', 'image') if cfg.fuse_image_view else ('mm', 'text')
    zu = c[:NUM_USERS] + sum(hu[m] for m in fused)
    zi = c[NUM_USERS:] + sum(h[m] for m in fused) + cfg.recover_lambda * correction
    return zu, zi, c, h, hu


def reference_loss(model, data, zu, zi, c, h, users, pos, neg, batch_size):
    """SPEC §4 written out term by term."""
    cfg = model.config
    u, p, n = zu[users], zi[pos], zi[neg]
    bpr = -torch.log(torch.sigmoid((u * p).sum(1) - (u * n).sum(1))).mean()
    reg = cfg.lambda_reg * 0.5 * (u.pow(2).sum() + p.pow(2).sum() + n.pow(2).sum()) / batch_size

    def cos(a, b):
        return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))

    ud = u.detach()
    cm = torch.relu(cfg.cm_margin + (1 - cos(ud, p)) - (1 - cos(ud, n))).mean()

    def info_nce(a, b):
        a = a / a.norm(dim=1, keepdim=True)
        b = b / b.norm(dim=1, keepdim=True)
        logits = torch.exp(a @ b.t() / cfg.tau)
        return (-torch.log(logits.diag() / logits.sum(1))).mean()

    proj = model.projection
    h_id = mlp(proj.id_head, c[NUM_USERS:][pos])
    h_mm = mlp(proj.anchor_head, h['mm'][pos])
    raw_t, raw_v = data['item'].x_text.double()[pos], data['item'].x_image.double()[pos]
    h_mix = cfg.mix_image * mlp(proj.image_head, raw_v) + cfg.mix_text * mlp(proj.text_head, raw_t)
    aal = info_nce(h_mm, h_id) + info_nce(h_mm.detach(), h_mix)

    def sim(e, raw):
        raw = raw / raw.norm(dim=1, keepdim=True)
        return torch.sqrt(((e @ e.t() - raw @ raw.t())**2).sum()) / e.size(0)

    amp = sum(wt * sim(h[m][pos], data['item'][f'x_{m}'].double()[pos])
              for m, wt in (('mm', 1.0), ('text', cfg.amp_text), ('image', cfg.amp_image)))
    knn = dense_knn(data['item'].x_mm.double())
    rows, cols = knn.nonzero(as_tuple=True)
    smooth = (knn[rows, cols] * (h['mm'][rows] - h['mm'][cols]).pow(2).sum(1)).mean()
    return {
        'bpr': bpr,
        'reg': reg,
        'cm': cfg.cm_weight * cm,
        'aal': cfg.aal_weight * aal,
        'amp': cfg.amp_weight * amp,
        'smooth': cfg.smooth_weight * smooth,
    }


def make_model(seed=0, **kwargs):
    torch.manual_seed(seed)
    data = tiny_data()
    return AnchorRec(data, AnchorRec.Config(embedding_dim=4, **kwargs)).double(), data


BATCH = (
    torch.tensor([0, 1, 3, 4, 2]),
    torch.tensor([2, 1, 7, 5, 2]),
    torch.tensor([4, 7, 1, 0, 5]),
)


@pytest.mark.parametrize('propagation', ['pyg', 'torch_csr'])
@pytest.mark.parametrize('n_layers', [1, 2])
@pytest.mark.parametrize('fuse_image_view', [False, True])
def test_forward_matches_dense_spec(propagation, n_layers, fuse_image_view):
    model, data = make_model(n_layers=n_layers, fuse_image_view=fuse_image_view,
                             propagation=propagation)
    out = model(data)
    assert isinstance(out, RecOutput)
    zu, zi, c, h, hu = dense_reference(model, data)
    torch.testing.assert_close(out.user, zu)
    torch.testing.assert_close(out.item, zi)
    torch.testing.assert_close(out.views['C'], c)
    for m in ('mm', 'text', 'image'):
        torch.testing.assert_close(out.views[f'H_{m}'], h[m])
        torch.testing.assert_close(out.views[f'H_{m}_user'], hu[m])
    torch.testing.assert_close(out.views['h_mm'], mlp(model.projection.anchor_head, h['mm']))


def test_forward_with_layernorm_matches_dense_spec():
    model, data = make_model(feature_layernorm=True)
    for m in ('mm', 'text', 'image'):
        assert isinstance(model.modality_convs[m].gated.norm, torch.nn.LayerNorm)
    out = model(data)
    zu, zi, *_ = dense_reference(model, data)
    torch.testing.assert_close(out.user, zu)
    torch.testing.assert_close(out.item, zi)


def test_loss_matches_hand_computation_term_by_term():
    model, data = make_model(aal_weight=0.1, amp_weight=0.2, tau=0.5, lambda_reg=0.01)
    out = model(data)
    users, pos, neg = BATCH  # item 2 appears twice among the positives: kept as duplicates
    total, terms = model.loss(data, out, users, pos, neg, batch_size=2048)
    zu, zi, c, h, _ = dense_reference(model, data)
    expected = reference_loss(model, data, zu, zi, c, h, users, pos, neg, 2048)
    assert set(terms) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(terms[key], value.detach(), msg=key)
        assert not terms[key].requires_grad
    torch.testing.assert_close(total, sum(expected.values()))
    # gradients of the total agree with the dense re-implementation
    grads = torch.autograd.grad(total, list(model.parameters()), allow_unused=True)
    ref_total = sum(expected.values())
    ref_grads = torch.autograd.grad(ref_total, list(model.parameters()), allow_unused=True)
    for (name, _), g, rg in zip(model.named_parameters(), grads, ref_grads):
        if rg is None:
            assert g is None or g.abs().sum() == 0, name
        else:
            torch.testing.assert_close(g, rg, msg=name)


@pytest.mark.parametrize('raw_from_files', [False, True])
def test_aal_mixture_and_amp_targets_read_the_trained_copies_or_the_file_rows(raw_from_files):
    """SPEC §4: published, the raw rows are the trainable copies' current values (shared
    storage, no gradient through them); ``raw_from_files`` reads the files' rows."""
    model, data = make_model(aal_weight=0.1, amp_weight=0.2, smooth_weight=0.0,
                             raw_from_files=raw_from_files)
    with torch.no_grad():
        for m in ('mm', 'text', 'image'):
            model.features[m].mul_(-2.0).add_(0.5)  # the copies drift, as training moves them
    out = model(data)
    total, terms = model.loss(data, out, *BATCH, batch_size=2048)
    read = data.clone()
    if not raw_from_files:
        for m in ('mm', 'text', 'image'):
            read['item'][f'x_{m}'] = model.features[m].detach()
    zu, zi, c, h, _ = dense_reference(model, data)
    expected = reference_loss(model, read, zu, zi, c, h, *BATCH, 2048)
    for key in ('aal', 'amp'):
        torch.testing.assert_close(terms[key], expected[key].detach(), msg=key)
    grads = torch.autograd.grad(total, list(model.features.values()))
    ref_grads = torch.autograd.grad(sum(expected.values()), list(model.features.values()))
    for g, rg in zip(grads, ref_grads):
        torch.testing.assert_close(g, rg)


def test_only_fixed_rows_are_cached(similarity_builds):
    """The I x I cache is built once, for the file rows (``raw_from_files``) or the frozen
    copies (``freeze_features``), never for the trained copies (the default)."""
    built = similarity_builds
    for options in (dict(), dict(raw_from_files=True), dict(freeze_features=True)):
        built.clear()
        model, data = make_model(amp_weight=0.1, **options)
        for _ in range(2):
            model.loss(data, model(data), *BATCH)
        if not options:
            assert built == [], options
            continue
        tables = ({m: data['item'][f'x_{m}'] for m in MODALITIES} if 'raw_from_files' in options
                  else dict(model.features))
        assert len(built) == 3, options
        assert {t.data_ptr() for t in built} == {t.data_ptr() for t in tables.values()}, options


def test_the_similarity_cache_refuses_a_trained_copy():
    model, data = make_model()
    distinct, counts = torch.unique(BATCH[1], return_counts=True)
    trained = model.features['image']
    assert trained.requires_grad
    assert cached_similarities(data, MODALITIES, 1e6, fixed_rows=False) == ()
    assert set(cached_similarities(data, MODALITIES, 1e6, fixed_rows=True)) == set(MODALITIES)
    with pytest.raises(ValueError, match=r"'similarity_image'.*fixed rows only"):
        similarity_target(model.graph_cache, 'similarity_image', trained, distinct, counts,
                          cached=True)
    assert len(model.graph_cache) == 0
    # uncached, the trained copy's rows are read (normalised, without gradient)
    target = similarity_target(model.graph_cache, 'similarity_image', trained, distinct, counts,
                               cached=False)
    expected = torch.nn.functional.normalize(trained.detach()[distinct], dim=-1)
    torch.testing.assert_close(target.unit_rows, expected)
    assert not target.unit_rows.requires_grad
    # the same values, fixed, are cached: the same target
    fixed = trained.detach().clone()
    cached = similarity_target(model.graph_cache, 'similarity_image', fixed, distinct, counts,
                               cached=True)
    torch.testing.assert_close(cached.block, expected @ expected.t())


def test_projection_and_gate_keep_the_default_init_and_the_heads_are_xavier(xavier_inits):
    """SPEC §3: Xavier-uniform for Eu, Ei, Wid, Wmm, Dmm, Wv, Wt only; P_m and G_m keep
    PyTorch's default Linear initialisation (the published code never re-initialises them)."""
    model, _ = make_model()
    xavier_inits.clear()
    model.reset_parameters()
    got = {id(t) for t in xavier_inits}
    heads = model.projection
    expected = {model.user_embedding.weight, model.item_embedding.weight}
    for head in (heads.id_head, heads.anchor_head, heads.decoder, heads.image_head,
                 heads.text_head):
        expected |= {head[0].weight, head[2].weight}
    assert got == {id(t) for t in expected}
    for m, conv in model.modality_convs.items():
        for linear in (conv.gated.proj, conv.gated.gate):
            assert id(linear.weight) not in got, m
            bound = 1.0 / math.sqrt(linear.in_features)  # PyTorch's default Linear bound
            assert linear.weight.abs().max() <= bound, m
            assert linear.bias.abs().max() <= bound, m


def test_l2_term_uses_len_users_without_batch_size():
    model, data = make_model()
    out = model(data)
    _, with_b = model.loss(data, out, *BATCH, batch_size=10)
    _, without = model.loss(data, out, *BATCH)
    torch.testing.assert_close(without['reg'], with_b['reg'] * 10 / 5)


def test_aal_second_term_sends_no_gradient_to_the_anchor_head():
    model, data = make_model(aal_weight=1.0, amp_weight=0.0, smooth_weight=0.0, cm_enabled=False,
                             lambda_reg=0.0)
    out = model(data)
    _, pos, _ = BATCH
    projected = model.project(data, out, pos)
    head = list(model.projection.anchor_head.parameters())
    mixture_term = model.aal.info_nce(projected['h_mm'].detach(), projected['h_mix'])
    grads = torch.autograd.grad(mixture_term, head + list(model.projection.text_head.parameters()),
                                allow_unused=True, retain_graph=True)
    assert all(g is None for g in grads[:len(head)])
    assert all(g is not None and g.abs().sum() > 0 for g in grads[len(head):])
    # the full AAL gradient on W_mm equals the gradient of its first InfoNCE term alone
    aal = model.aal(projected['h_mm'], projected['h_id'], projected['h_mix'])
    first = model.aal.info_nce(projected['h_mm'], projected['h_id'])
    for g, g1 in zip(torch.autograd.grad(aal, head, retain_graph=True),
                     torch.autograd.grad(first, head)):
        torch.testing.assert_close(g, g1)


def test_zero_weights_skip_terms_and_cm_switch():
    model, data = make_model(aal_weight=0.0, amp_weight=0.0, smooth_weight=0.0, cm_enabled=False)
    out = model(data)
    total, terms = model.loss(data, out, *BATCH)
    for key in ('cm', 'aal', 'amp', 'smooth'):
        assert terms[key].item() == 0.0
    torch.testing.assert_close(total, terms['bpr'] + terms['reg'])
    _, with_cm = AnchorRec(data, AnchorRec.Config(embedding_dim=4)).loss(
        data, AnchorRec(data, AnchorRec.Config(embedding_dim=4))(data), *BATCH)
    assert with_cm['cm'].item() > 0


def test_freeze_features_keeps_feature_tables_fixed():
    for freeze in (False, True):
        model, data = make_model(freeze_features=freeze, aal_weight=0.1, amp_weight=0.1)
        total, _ = model.loss(data, model(data), *BATCH)
        total.backward()
        for m in ('mm', 'text', 'image'):
            table = model.features[m]
            assert table.requires_grad is not freeze
            if freeze:
                assert table.grad is None
            else:
                assert table.grad is not None and table.grad.abs().sum() > 0
        assert model.modality_convs['mm'].gated.proj.weight.grad.abs().sum() > 0
        assert 'features.mm' in model.state_dict()


@pytest.mark.parametrize('raw_from_files', [False, True])
def test_features_are_copies_of_the_data_and_raw_rows_feed_aal_and_amp(raw_from_files):
    model, data = make_model(raw_from_files=raw_from_files)
    file_rows = data['item'].x_text.clone()
    torch.testing.assert_close(model.features['text'], data['item'].x_text.double())
    out = model(data)
    before = model.project(data, out)
    with torch.no_grad():
        model.features['text'].add_(1.0)  # the trainable copy drifts from the file ...
    after = model.project(data, model(data))
    drifted = model.projection.project_text(model.features['text'].detach())
    # ... the raw view follows it (published) or keeps the file rows (the paper's reading)
    torch.testing.assert_close(after['h_text'], before['h_text'] if raw_from_files else drifted)
    assert data['item'].x_text.data_ptr() != model.features['text'].data_ptr()
    assert torch.equal(data['item'].x_text, file_rows)  # the data's table is never written


def test_fuse_image_view_adds_exactly_the_image_view():
    model, data = make_model(fuse_image_view=False)
    fused = copy.deepcopy(model)
    fused.config = AnchorRec.Config(embedding_dim=4, fuse_image_view=True)
    out, out_fused = model(data), fused(data)
    torch.testing.assert_close(out_fused.user - out.user, out.views['H_image_user'])
    torch.testing.assert_close(out_fused.item - out.item, out.views['H_image'])
    # without fusion the image gate does not influence the ranking embeddings
    z = (out.user.sum() + out.item.sum())
    grads = torch.autograd.grad(z, list(model.modality_convs['image'].parameters()),
                                allow_unused=True)
    # (None, or zeros where a backend fuses the image product with the others)
    assert all(g is None or not g.any() for g in grads)
    z_fused = out_fused.user.sum() + out_fused.item.sum()
    grads = torch.autograd.grad(z_fused, list(fused.modality_convs['image'].parameters()))
    assert all(g.abs().sum() > 0 for g in grads)


def test_recover_lambda_scales_the_anchor_correction():
    model, data = make_model(recover_lambda=0.0)
    out0 = model(data)
    model.config = AnchorRec.Config(embedding_dim=4, recover_lambda=0.5)
    out = model(data)
    torch.testing.assert_close(out.item - out0.item, 0.5 * out.views['c'])
    torch.testing.assert_close(out.user, out0.user)


def test_backends_agree():
    model, data = make_model(propagation='pyg')
    other = AnchorRec(data, AnchorRec.Config(embedding_dim=4, propagation='torch_csr')).double()
    other.load_state_dict(model.state_dict())
    a, b = model(data), other(data)
    torch.testing.assert_close(a.user, b.user)
    torch.testing.assert_close(a.item, b.item)


def test_a_new_backend_plugs_in_by_registration_only():
    """A backend is one class plus one registry entry; the model sees every fused product."""
    from anchorrec_pyg.nn.propagation import BACKENDS, PyGBackend, register_backend

    class FusingProbe(PyGBackend):
        name = 'fusing_probe_test'
        calls: list = []

        def matmul_many(self, adjs, xs):
            type(self).calls.append(len(adjs))
            return super().matmul_many(adjs, xs)

    register_backend(FusingProbe)
    try:
        model, data = make_model(n_layers=2)
        probe = AnchorRec(data, AnchorRec.Config(embedding_dim=4, n_layers=2,
                                                 propagation='fusing_probe_test')).double()
        probe.load_state_dict(model.state_dict())
        torch.testing.assert_close(probe(data).item, model(data).item)
        # two kNN steps over the three modalities, then R for the three views, in three calls
        assert FusingProbe.calls == [3, 3, 3]
    finally:
        del BACKENDS['fusing_probe_test']


@pytest.mark.parametrize('raw_from_files', [False, True])
def test_graphs_and_normalised_features_are_built_once(raw_from_files):
    model, data = make_model(amp_weight=0.1, raw_from_files=raw_from_files)
    model.loss(data, model(data), *BATCH)
    entries = len(model.graph_cache)
    # user-item graph, three kNN graphs and, for the fixed file rows, three similarity matrices
    # (all fit the default budget, so no normalised feature table is kept); the trained copies
    # change every step: nothing is kept for them
    assert entries == 1 + 3 + (3 if raw_from_files else 0)
    adj = model.item_graph(data, 'mm', model.propagation)
    for _ in range(2):
        model.loss(data, model(data), *BATCH)
    assert len(model.graph_cache) == entries
    assert model.item_graph(data, 'mm', model.propagation) is adj


def test_similarity_cache_does_not_change_the_amp_term():
    cached, data = make_model(amp_weight=0.5, raw_from_files=True)
    uncached, _ = make_model(amp_weight=0.5, raw_from_files=True, similarity_cache_mb=0.0)
    _, a = cached.loss(data, cached(data), *BATCH)
    _, b = uncached.loss(data, uncached(data), *BATCH)
    torch.testing.assert_close(a['amp'], b['amp'])
    assert len(uncached.graph_cache) == 1 + 3  # graphs only: no similarity matrix kept


def test_subgraph_n_id_identity_gives_the_same_output():
    model, data = make_model()
    sub = copy.copy(data)
    sub['user'].n_id = torch.arange(NUM_USERS)
    sub['item'].n_id = torch.arange(NUM_ITEMS)
    a, b = model(data), model(sub)
    torch.testing.assert_close(a.user, b.user)
    torch.testing.assert_close(a.item, b.item)


def test_wrong_sized_data_without_n_id_is_a_data_error():
    model, _ = make_model()
    other = tiny_data()
    other['user'].num_nodes = NUM_USERS + 1
    with pytest.raises(DataError, match='n_id'):
        model(other)


@pytest.mark.parametrize('missing', ['mm', 'text', 'image'])
def test_missing_modality_is_a_one_line_data_error(missing):
    kept = tuple(m for m in ('mm', 'text', 'image') if m != missing)
    data = tiny_data(modalities=kept)
    with pytest.raises(DataError) as info:
        AnchorRec(data)
    message = str(info.value)
    assert '\n' not in message
    assert f"AnchorRec needs item features 'x_{missing}'" in message
    assert 'the dataset has: ' + ', '.join(f'x_{m}' for m in kept) in message
    file = {'mm': '_beit3/image_feat.npy', 'text': 'text_feat.npy', 'image': 'image_feat.npy'}
    assert file[missing] in message


def test_exact_message_for_missing_image():
    data = tiny_data(modalities=('text', ))
    with pytest.raises(DataError, match=r"^AnchorRec needs item features 'x_mm' "):
        AnchorRec(data)
    data = tiny_data(modalities=('mm', 'text'))
    with pytest.raises(DataError) as info:
        AnchorRec(data)
    assert str(info.value) == ("AnchorRec needs item features 'x_image' (image_feat.npy); "
                               'the dataset has: x_mm, x_text')


def test_missing_knn_edges_is_a_data_error():
    data = tiny_data()
    del data['item', 'similar_text', 'item']
    with pytest.raises(DataError, match='similar_text'):
        AnchorRec(data)


@pytest.mark.parametrize('kwargs,key', [
    (dict(tau=0.0), 'model.tau must be > 0'),
    (dict(n_layers=0), 'model.n_layers must be >= 1'),
    (dict(aal_weight=-1e-3), 'model.aal_weight must be >= 0'),
    (dict(recover_lambda=-1.0), 'model.recover_lambda must be >= 0'),
    (dict(propagation='x'), 'model.propagation must be one of'),
    (dict(freeze_features='yes'), 'model.freeze_features must be of type bool'),
])
def test_config_errors_name_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        AnchorRec.Config(**kwargs)


def test_published_grid_values_are_valid():
    for n_layers in (1, 2, 3):
        for tau in (0.05, 0.1, 0.25, 0.5, 1):
            for w in (0, 1e-4, 1e-3, 1e-2, 0.1, 1):
                AnchorRec.Config(n_layers=n_layers, tau=tau, aal_weight=w, amp_weight=w)


def test_defaults_are_the_published_constants():
    cfg = AnchorRec.Config()
    assert (cfg.embedding_dim, cfg.n_ui_layers, cfg.n_layers) == (64, 2, 1)
    assert (cfg.cm_enabled, cfg.cm_weight, cfg.cm_margin) == (True, 0.01, 0.2)
    assert (cfg.mix_image, cfg.mix_text) == (0.25, 0.75)
    assert (cfg.amp_mm, cfg.amp_text, cfg.amp_image) == (1.0, 0.03, 0.01)
    assert (cfg.smooth_weight, cfg.recover_lambda) == (0.1, 0.0005)
    assert (cfg.freeze_features, cfg.fuse_image_view, cfg.feature_layernorm) == (False, False,
                                                                                 False)
    assert get_model_class('anchorrec') is AnchorRec
    assert AnchorRec.required_modalities(cfg) == ('mm', 'text', 'image')


def test_training_lowers_the_loss_deterministically():
    data = tiny_data()

    def build(data):
        return AnchorRec(data, AnchorRec.Config(embedding_dim=8, aal_weight=0.01,
                                                amp_weight=0.01))

    first, second = loss_history(build, data), loss_history(build, data)
    assert first == second
    assert first[-1] < first[0]
