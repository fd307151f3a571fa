"""Per-position SAEs: the fast path against the dense reference, each activation's rule,
normalisation, the decoder constraint and AuxK."""

import copy

import pytest
import torch
from torch.testing import assert_close

from ctxsae_core import SAE, BatchTopK, JumpReLU, ReLU, SAEConfig, TopK
from ctxsae_common.errors import InputError
from ctxsae_core import activations
from ctxsae_core.activations import SPARSE_MAX_DENSITY, _at_or_above, _pooled_cut, cut_between, project, use_sparse_path
from ctxsae_core.sae import SAEOutput, geometric_median

# 256 rows x F=1024 x D=16 = 2^22 multiply-adds: wide enough and large enough for the sparse path
B, T, D, F = 8, 32, 16, 1024


def _midway(values, n: int) -> float:
    """The cut-off with n of `values` above it, found by sorting them all: midway between the
    n-th largest and the next."""
    v = values.detach().flatten().sort(descending=True).values
    return float((v[n - 1] + v[n]) / 2)


def _passes_over_pre(monkeypatch) -> list:
    """Record each search of all of the pre-activations for the entries at or above a guess."""
    calls, real = [], activations._at_or_above
    monkeypatch.setattr(activations, "_at_or_above", lambda *a: calls.append(a) or real(*a))
    return calls


def _model(act, seed=0):
    torch.manual_seed(seed)
    m = SAE(SAEConfig(d_in=D, width=F, activation=act))
    m.init_from_data_(torch.randn(B, T, D) * 3 + 1)
    return m


def _grads(m, x, reference):
    m.zero_grad()
    out = m(x, reference=reference)
    terms = m.loss(x, out, dead_mask=torch.arange(F) % 3 == 0)
    terms.total.backward()
    return out, terms, {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("act", [TopK(k=8), BatchTopK(k=8), ReLU(l1_coeff=0.01)], ids=lambda a: a.kind)
def test_fast_path_matches_dense_reference(act):
    m = _model(act)
    x = torch.randn(B, T, D) * 3 + 1
    assert use_sparse_path(B * T, m.W_enc_FD)  # otherwise this compares the reference with itself
    out_fast, terms_fast, g_fast = _grads(m, x, reference=False)
    out_ref, terms_ref, g_ref = _grads(m, x, reference=True)
    assert_close(out_fast.x_hat, out_ref.x_hat, rtol=1e-5, atol=1e-5)
    assert torch.equal(out_fast.innovations != 0, out_ref.innovations != 0)
    assert out_fast.state is out_fast.innovations  # built once, on read, from the COO codes
    assert_close(out_fast.innovations.detach(), out_ref.innovations.detach(), rtol=1e-5, atol=1e-5)
    assert torch.equal(out_fast.fired(), out_ref.fired()) and out_fast.fired().any()
    assert_close(terms_fast.total, terms_ref.total, rtol=1e-5, atol=1e-6)
    assert g_fast.keys() == g_ref.keys()
    for name in g_ref:
        assert_close(g_fast[name], g_ref[name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("density", [0.01, 0.3])
def test_project_takes_the_sparse_kernels_only_for_few_entries_and_matches_the_product(density):
    torch.manual_seed(0)
    W = torch.randn(F, D, dtype=torch.float64, requires_grad=True)
    support = torch.rand(B * T, F) < density
    codes = torch.where(support, torch.rand(B * T, F, dtype=torch.float64), 0.0).requires_grad_()
    g = torch.randn(B * T, D, dtype=torch.float64)
    out = project(codes, W, support)
    sparse = density < SPARSE_MAX_DENSITY
    assert (type(out.grad_fn).__name__ == "_DecodeBackward") == sparse  # dense product above the density
    assert_close(out, codes @ W)
    grads = torch.autograd.grad(out, (codes, W), g)
    ref = torch.autograd.grad(codes @ W, (codes, W), g)
    assert_close(grads[0][support], ref[0][support])  # entries outside the support: no gradient downstream
    assert_close(grads[1], ref[1])
    if sparse:
        assert (grads[0][~support] == 0).all()


def test_topk_keeps_exactly_k_per_position():
    m = _model(TopK(k=5))
    codes = m(torch.randn(B, T, D)).innovations
    assert ((codes != 0).sum(-1) == 5).all()  # random pre-activations: many more than 5 positive
    assert (codes >= 0).all()


def test_batchtopk_pools_the_budget_in_training_and_uses_the_threshold_in_eval():
    m = _model(BatchTopK(k=4, threshold_momentum=0.5))
    x = torch.randn(B, T, D)
    out = m.train()(x)
    per_position = (out.innovations != 0).sum(-1)
    assert per_position.sum() == 4 * B * T  # no ties in continuous data
    assert per_position.min() < per_position.max()  # positions share one budget
    pre = out.pre_acts.reshape(-1, F)
    cut1 = _midway(pre, 4 * B * T)
    m.update_statistics_(out, B * T)
    assert float(m.activation.threshold) == pytest.approx(float(cut1))  # first batch: set outright
    out2 = m(torch.randn(B, T, D))
    cut2 = _midway(out2.pre_acts, 4 * B * T)
    m.update_statistics_(out2, B * T)
    assert float(m.activation.threshold) == pytest.approx(0.5 * float(cut1) + 0.5 * float(cut2))
    m.eval()
    out3 = m(x)
    fired = out3.innovations != 0
    assert torch.equal(fired, out3.pre_acts > m.activation.threshold)


@pytest.mark.parametrize("k", [4, 400])  # 768 entries kept of the sample's ~41,000; 76,800: too few
def test_batchtopk_threshold_update_from_what_the_walk_sampled(k, monkeypatch):
    """A contextual walk codes step by step with `select_sampling`: the entries above the
    threshold, and the entries at or above 0.8 x threshold collected on the way, from which
    the threshold's update finds the pooled cut-off without a second pass over the
    pre-activations; with too few of them it searches the rows' offers (`_pooled_cut`)."""
    act = _model(BatchTopK(k=k, threshold_momentum=0.5)).activation
    act.threshold.fill_(1.0)
    act.threshold_seen.fill_(True)  # so that the update is an average: 0.5 x 1 + 0.5 x cut-off
    pre = torch.randn(6, 32, F)  # (windows, steps, F)
    sample = []
    for s in range(32):
        rows, cols = act.select_sampling(pre[:, s], False, sample)
        want = (pre[:, s] > act.threshold).nonzero(as_tuple=True)  # the entries above the threshold
        assert torch.equal(rows, want[0]) and torch.equal(cols, want[1])
    sample = torch.cat(sample)
    assert torch.equal(sample.sort().values, pre[pre >= 0.8].sort().values)
    n_keep = k * 6 * 32
    cut = _midway(pre, n_keep)
    if n_keep > sample.numel():
        assert cut < 0.8  # the cut-off lies below what was sampled
    passes = _passes_over_pre(monkeypatch)
    act.update_statistics_(pre, 6 * 32, sample)
    assert float(act.threshold) == pytest.approx(0.5 + 0.5 * max(cut, 0.0))
    assert passes == []  # the sample stands in for that pass (then rows' offers, if too few)


def test_pooled_batchtopk_finds_its_cutoff_once_a_step(monkeypatch):
    """Per-position BatchTopK in training: the pooled cut-off is sought among the entries at
    or above 0.8 x threshold, and the threshold's update reads those same entries rather than
    passing over all the pre-activations again."""
    m = _model(BatchTopK(k=4, threshold_momentum=0.5))
    x = torch.randn(B, T, D)
    m.prime_statistics_(x)  # sets the threshold, so there is a guess to sample at
    t0 = float(m.activation.threshold)
    passes = _passes_over_pre(monkeypatch)
    out = m.train()(torch.randn(B, T, D))
    pre = out.pre_acts.detach().reshape(-1, F)
    cut = _midway(pre, 4 * B * T)
    assert (out.innovations != 0).sum() == 4 * B * T
    assert torch.equal(out.statistics_sample.sort().values, pre[pre >= 0.8 * t0].sort().values)
    m.update_statistics_(out, B * T)
    assert float(m.activation.threshold) == pytest.approx(0.5 * t0 + 0.5 * cut)
    assert len(passes) == 1  # coding's; the update reads what it found


def test_jumprelu_straight_through_gradients_by_hand():
    m = SAE(SAEConfig(d_in=3, width=3, activation=JumpReLU(l0_coeff=1.0, bandwidth=0.002, init_threshold=1.0)))
    pre = torch.tensor([[0.5, 1.0005, 2.0]])
    z = m.activation.encode(pre, torch.eye(3), torch.zeros(3)).dense
    assert z.tolist() == [[0.0, pytest.approx(1.0005), 2.0]]
    z.sum().backward()
    # only 1.0005 lies within bandwidth/2 of theta=1: d/dtheta = -theta/eps = -500; d/dlog(theta) = theta * that
    assert m.activation.log_threshold.grad.tolist() == pytest.approx([0.0, -500.0, 0.0])
    m.activation.log_threshold.grad = None
    m.activation.penalty(z, pre, n_positions=1).backward()  # L0 STE: -(1/eps) * theta
    assert m.activation.log_threshold.grad.tolist() == pytest.approx([0.0, -500.0, 0.0])


def test_relu_penalty_is_l1_per_position():
    m = _model(ReLU(l1_coeff=0.5))
    out = m(torch.randn(B, T, D))
    penalty = m.activation.penalty(out.innovations, out.pre_acts, B * T).item()
    assert penalty == pytest.approx(0.5 * out.innovations.sum().item() / (B * T), rel=1e-5)


def test_normalisation_makes_the_model_scale_free():
    m = _model(TopK(k=8))
    x = torch.randn(B, T, D) * 3 + 1
    assert float((x * m.act_scale).pow(2).sum(-1).mean()) == pytest.approx(1.0, rel=0.05)
    big = copy.deepcopy(m)
    big.act_scale /= 10  # the same model for activations ten times larger
    big.b_dec_D.data = m.b_dec_D.data.clone()
    assert_close(big(10 * x).x_hat, 10 * m(x).x_hat, rtol=1e-4, atol=1e-4)
    assert_close(big.encode(10 * x), m.encode(x))


def test_init_from_data_sets_scale_and_geometric_median():
    m = SAE(SAEConfig(d_in=1, width=2, activation=TopK(k=1)))
    m.init_from_data_(torch.tensor([[0.0], [1.0], [10.0]]))
    s = float(m.act_scale)
    assert s == pytest.approx((101 / 3) ** -0.5)
    assert float(m.b_dec_D.detach()) == pytest.approx(1.0 * s, abs=1e-3)  # in 1-D the geometric median is the median
    pts = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [50.0, 50.0]])
    # a convex quadrilateral's geometric median is where its diagonals cross; the mean is (12.75, 12.75)
    assert_close(geometric_median(pts, iters=200), torch.tensor([0.5, 0.5]), atol=1e-3, rtol=0)


def test_decoder_rows_stay_unit_norm_and_gradients_tangent():
    m = _model(TopK(k=8))
    m.W_dec_FD.data *= 3
    m.normalize_decoder_()
    assert_close(m.W_dec_FD.norm(dim=1), torch.ones(F))
    m.W_dec_FD.grad = torch.randn(F, D)
    m.remove_parallel_grads_()
    assert (m.W_dec_FD.grad * m.W_dec_FD).sum(1).abs().max() < 1e-5


def test_auxk_trains_only_dead_features():
    m = _model(TopK(k=4, aux_coeff=1.0))
    x = torch.randn(B, T, D)
    out = m(x)
    dead = torch.zeros(F, dtype=torch.bool)
    dead[::2] = True
    terms = m.loss(x, out, dead)
    m.zero_grad()
    terms.aux.backward()
    assert terms.aux.item() > 0
    g = m.W_dec_FD.grad.abs().sum(1)
    assert g[~dead].max() == 0 and g[dead].max() > 0
    assert m.loss(x, out, torch.zeros(F, dtype=torch.bool)).aux.item() == 0.0


def test_bad_shapes_raise_input_errors():
    m = _model(TopK(k=8))
    with pytest.raises(InputError, match="d=16"):
        m(torch.randn(2, 3, 5))
    with pytest.raises(InputError, match="larger than width"):
        SAEConfig(d_in=4, width=8, activation=TopK(k=9))


def test_shrink_encoder_fixes_the_tied_init_overshoot_when_k_is_near_d():
    from ctxsae_core import SAEConfig, TopK
    from ctxsae_core.checkpoint import build_sae
    from ctxsae_core.metrics import fvu

    x = torch.randn(2048, 1, 4)  # a 4-channel latent, k = 8: the tied init over-reconstructs
    model = build_sae(SAEConfig(d_in=4, width=64, activation=TopK(k=8)))
    model.init_from_data_(x)
    before = model(x)
    alpha = model.shrink_encoder_(x)
    after = model(x)
    assert fvu(x, before.x_hat) > 2 and 0 < alpha < 1 and fvu(x, after.x_hat) < fvu(x, before.x_hat) / 2
    assert torch.equal(before.state > 0, after.state > 0)  # same features, smaller codes
    torch.testing.assert_close(after.state, before.state * alpha)
    assert model.shrink_encoder_(x) == pytest.approx(1.0, abs=1e-4)  # already the least-squares scale


def test_the_cutoff_lies_midway_between_the_last_entry_kept_and_the_next():
    values = torch.tensor([5.0, 1.0, 3.0, 2.0, 4.0])
    assert float(cut_between(values, 2)) == 3.5  # 5 and 4 above it
    assert float(cut_between(values, 4)) == 1.5
    assert float(cut_between(values, 5)) == 1.0  # everything kept: the smallest
    assert float(cut_between(torch.tensor([2.0, 2.0, 1.0]), 1)) == 2.0  # a tie cannot be split


def test_pooled_cutoff_offers_per_row_and_falls_back_when_one_row_holds_the_largest_or_the_guess_is_high():
    torch.manual_seed(0)
    pre = torch.randn(64, 512)
    for n_keep in (1, 64, 64 * 8, 64 * 100):
        assert float(_pooled_cut(pre, n_keep)) == _midway(pre, n_keep)
    skewed = pre.clone()
    skewed[3] += 100.0  # row 3 holds the 512 largest entries: its offers alone cannot be enough
    n_keep = 64 * 4  # 20 offers per row
    assert float(_pooled_cut(skewed, n_keep)) == _midway(skewed[3], n_keep)
    for n_keep in (64, 64 * 8):
        exact = _midway(pre, n_keep)
        nth = float(pre.reshape(-1).topk(n_keep).values.min())
        for guess in (exact - 0.5, exact, nth, nth + 0.01, 100.0):  # below, at, above: all exact
            assert float(_pooled_cut(pre, n_keep, _at_or_above(pre, guess))) == exact
            # a permuted view (a contextual walk's (B, S, F) pre-activations, stored (S, F, B))
            view = pre.reshape(8, 8, 512).permute(1, 2, 0).contiguous().permute(2, 0, 1)
            assert float(_pooled_cut(view, n_keep, _at_or_above(view, guess))) == exact


@pytest.mark.parametrize("act", [TopK(k=8), BatchTopK(k=8), ReLU(l1_coeff=0.01), JumpReLU(init_threshold=0.5)],
                         ids=lambda a: a.kind)
def test_codes_straight_from_pre_activations_equal_encode(act):
    m = _model(act)
    if isinstance(act, BatchTopK):
        m.activation.threshold.fill_(0.7)  # coding alone, as a contextual SAE's innovations are
    x_c = torch.randn(B * T, D)
    with torch.no_grad():
        want = m.activation.encode(x_c, m.W_enc_FD, m.b_enc_F).dense
        got = m.activation.codes(torch.nn.functional.linear(x_c, m.W_enc_FD, m.b_enc_F))
    assert (want != 0).float().sum(1).mean() > 1  # something fires, not everything
    assert (want == 0).any()
    assert torch.equal(got, want)


def test_output_fields_given_as_builders_are_built_once_on_read():
    calls = []
    codes = torch.tensor([[[0.0, 2.0, 0.0], [1.0, 0.0, 0.0]]])  # (B=1, S=2, F=3)

    def build():
        calls.append(1)
        return codes

    out = SAEOutput(torch.zeros(1, 2, 4), build, codes, build, torch.zeros(1, 2, 4))
    assert calls == []  # nothing built until read
    assert out.innovations is codes and out.innovations is codes and len(calls) == 1
    assert torch.equal(out.fired(), torch.tensor([True, True, False]))  # from the innovations
    assert out.pre_acts is codes and len(calls) == 2
    given = SAEOutput(out.x_hat, codes, codes, codes, out.enc_in, fired=lambda: torch.tensor([False, True, False]))
    assert torch.equal(given.fired(), torch.tensor([False, True, False]))  # the producer's, when given


def test_prime_statistics_sets_the_batchtopk_threshold_to_the_pooled_cutoff():
    m = _model(BatchTopK(k=8))
    x = torch.randn(B, T, D)
    m.prime_statistics_(x)
    with torch.no_grad():
        pre = torch.nn.functional.linear(x.reshape(-1, D) * m.act_scale - m.b_dec_D, m.W_enc_FD, m.b_enc_F)
    assert m.activation.threshold > 0
    assert (pre > m.activation.threshold).sum() == B * T * 8  # the budget exactly, no entry at the cut-off
    assert (pre >= m.activation.threshold).sum() == B * T * 8
