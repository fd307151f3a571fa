"""The contextual SAE's invariants (docs/design.md): the decoder reads codes only, codes are causal
in the axis order, carried codes are the one dictionary's, innovations and state are counted
apart; plus hand-built cases whose innovations and state are known exactly."""

import pytest
import torch
from torch.testing import assert_close

from ctxsae_core import BatchTopK, ContextualConfig, ContextualSAE, JumpReLU, ReLU, TopK, make_axis
from ctxsae_core.activations import use_sparse_path
from ctxsae_common.errors import InputError
from ctxsae_core.metrics import l0
from tests.ctxsae_core.hand import identity_sae

AXES = [("tokens", 16, None), ("raster", 16, (4, 4)), ("quadtree", 16, (4, 4)), ("quadtree", 15, (3, 5))]
CARRIES = ["gated", "attention"]
CUDA = pytest.param("cuda", marks=pytest.mark.gpu)  # runs on a GPU machine (`pytest -m gpu`), skipped elsewhere


def _model(carry, act=BatchTopK(k=3), d=6, f=24, persistence=2.0, carry_coeff=0.0):
    torch.manual_seed(0)
    m = ContextualSAE(ContextualConfig(d_in=d, width=f, activation=act, carry=carry, init_persistence=persistence,
                                       carry_coeff=carry_coeff))
    x = torch.randn(4, 16, d)
    m.init_from_data_(x)
    if hasattr(m.activation, "threshold"):
        m.activation.threshold.fill_(0.05)
    return m.eval()


@pytest.mark.parametrize("carry", CARRIES)
@pytest.mark.parametrize("kind,T,grid", AXES)
def test_decoder_reads_only_codes(carry, kind, T, grid):
    """Invariant 1: the reconstruction is decode(state), and the state is a function of the
    innovations alone; changing x at t with the codes held fixed cannot move it."""
    m, axis = _model(carry), make_axis(kind, T, grid)
    x = torch.randn(3, T, 6)
    with torch.no_grad():
        out = m(x, axis)
        assert_close(out.x_hat, m.decode(out.state))
        assert_close(m.propagate(out.innovations, axis), out.state)
        x2 = x.clone()
        x2[:, T // 2] += 5.0
        held = m.decode(m.propagate(out.innovations, axis))  # the codes, fixed; x no longer enters
        assert_close(held, out.x_hat)
        assert not torch.allclose(m(x2, axis).x_hat, out.x_hat)  # while re-encoding x2 does move it


@pytest.mark.parametrize("carry", CARRIES)
@pytest.mark.parametrize("kind,T,grid", AXES)
def test_causal_in_the_axis_order(carry, kind, T, grid):
    """Invariant 2: codes and reconstruction at step s depend on steps <= s only."""
    m, axis = _model(carry), make_axis(kind, T, grid)
    x = torch.randn(2, T, 6)
    xs = axis.expand(x)
    s0 = axis.n_steps - T + T // 2  # an input position's step; earlier steps include pooled cells
    with torch.no_grad():
        base = m.forward_steps(xs, axis)
        xs2 = xs.clone()
        xs2[:, s0] += 3.0
        moved = m.forward_steps(xs2, axis)
    assert torch.equal(moved.innovations[:, :s0], base.innovations[:, :s0])
    assert torch.equal(moved.state[:, :s0], base.state[:, :s0])
    assert not torch.equal(moved.innovations[:, s0], base.innovations[:, s0])


@pytest.mark.parametrize("carry", CARRIES)
def test_causality_by_gradient_on_tokens(carry):
    m, axis = _model(carry, act=ReLU(l1_coeff=0.0)), make_axis("tokens", 8)
    x = torch.randn(2, 8, 6, requires_grad=True)
    out = m(x, axis)
    out.x_hat[:, 3].sum().backward()
    assert torch.all(x.grad[:, 4:] == 0)
    assert x.grad[:, :4].abs().sum() > 0


@pytest.mark.parametrize("carry", CARRIES)
def test_one_dictionary_state_is_carried_plus_innovations(carry):
    """Invariant 3: what is carried lives in the same code space and goes through the same
    W_dec as what fires; invariant 4: the two are reported apart."""
    m, axis = _model(carry), make_axis("tokens", 16)
    with torch.no_grad():
        out = m(torch.randn(3, 16, 6), axis)
    assert_close(out.state, out.carried + out.innovations)
    projected = (out.carried + out.innovations) @ m.W_dec_FD
    assert_close(out.x_hat, (projected + m.b_dec_D) / m.act_scale)
    assert l0(out.innovations) <= l0(out.state)


@pytest.mark.parametrize("carry", CARRIES)
def test_innovations_never_raise_what_is_carried_above_the_prior(carry):
    """The encoder codes against the prior (the carry with nothing new firing); what the step's
    innovations then carry may be lower (a reset) but never higher, or the state would hold
    more than the encoder accounted for. Random weights: no training makes this hold."""
    m = _model(carry, persistence=0.0)
    with torch.no_grad():
        for p in m.carry.parameters():
            p.add_(torch.randn_like(p))  # far from the initialisation, both signs
        axis = make_axis("tokens", 16)
        mem = m.carry.begin(5, axis)
        states = []
        for t in range(16):
            u = torch.relu(torch.randn(5, 24)) * (torch.rand(5, 24) < 0.3)
            s_parent = states[t - 1] if t else None
            prior = m.carry.carried(mem, t, s_parent, None)
            after = m.carry.carried(mem, t, s_parent, u)
            if prior is not None:
                assert (after[0] <= prior[0] + 1e-6).all()
            state = (after[0] if after is not None else torch.zeros_like(u)) + u
            m.carry.remember(mem, t, u, state)
            states.append(state)


def _hand_model(carry: str = "gated", reset_1_to_0: bool = False):
    """d = F = 4, identity dictionary, ReLU innovations with bias -0.01, feature persistence 1
    (the attention carry's weights exactly 1); optionally feature 1 firing resets feature 0."""
    m = identity_sae(activation=ReLU(l1_coeff=0.0), carry=carry)
    with torch.no_grad():
        if carry == "attention":
            for p in (m.carry.W_q_state, m.carry.W_q_new, m.carry.W_k, m.carry.P_q, m.carry.P_k):
                p.zero_()
            m.carry.bias.fill_(30.0)  # sigmoid(30) = 1 in float32
        if reset_1_to_0:
            m.carry.reset_in_raw[1, 0] = 10.0
            m.carry.reset_out_raw[0, 0] = 10.0
    return m.eval()


@pytest.mark.parametrize("carry", CARRIES)
def test_a_persistent_feature_is_paid_for_once(carry):
    m, axis = _hand_model(carry), make_axis("tokens", 5)
    x = torch.zeros(1, 5, 4)
    x[..., 0] = 1.0
    with torch.no_grad():
        out = m(x, axis)
    assert (out.innovations != 0).sum().item() == 1  # feature 0 fires at t=0 only
    assert out.innovations[0, 0, 0].item() == pytest.approx(0.99)
    assert ((out.state != 0).sum(-1) == 1).all()  # and is carried to every position
    assert l0(out.innovations) == pytest.approx(0.2) and l0(out.state) == pytest.approx(1.0)
    assert_close(out.x_hat[0, :, 0], torch.full((5,), 0.99))


def test_the_attention_carry_decays_with_the_steps_since_a_feature_last_fired():
    """Feature 0 has persistence gate 0.8 and fires at t = 0 and again (topped up) at t = 3;
    feature 1, gate 0.4, is below gate_floor and never carried. Values by hand: the state of
    feature 0 is 0.99 * 0.8 ** (steps since it last fired), and 0.99 where it fires."""
    m, axis = _hand_model("attention"), make_axis("tokens", 6)
    with torch.no_grad():  # features 2 and 3 keep gate 1; they never fire
        m.carry.persistence[:2] = torch.logit(torch.tensor([0.8, 0.4]) / 1.1)
    x = torch.zeros(1, 6, 4)
    x[0, 0, :2] = 1.0
    x[0, 3, 0] = 1.0
    with torch.no_grad():
        out = m(x, axis)
    assert (out.innovations[0] != 0).nonzero().tolist() == [[0, 0], [0, 1], [3, 0]]
    assert out.innovations[0, 3, 0].item() == pytest.approx(1 - 0.99 * 0.8**3 - 0.01)  # pays what decayed
    assert_close(out.state[0, :, 0], torch.tensor([0.99, 0.792, 0.6336, 0.99, 0.792, 0.6336]))
    assert out.state[0, :, 1].tolist() == pytest.approx([0.99, 0, 0, 0, 0, 0])


@pytest.mark.parametrize("carry", CARRIES)
def test_a_region_switch_fires_once_and_resets_the_old_feature(carry):
    m, axis = _hand_model(carry, reset_1_to_0=True), make_axis("tokens", 6)
    x = torch.zeros(1, 6, 4)
    x[0, :3, 0] = 1.0
    x[0, 3:, 1] = 1.0
    with torch.no_grad():
        out = m(x, axis)
    fired = (out.innovations[0] != 0).nonzero().tolist()
    assert fired == [[0, 0], [3, 1]]  # (position, feature): each region pays once, where it starts
    active = (out.state[0] != 0).int()
    assert active[:, 0].tolist() == [1, 1, 1, 0, 0, 0]  # the switch resets feature 0 exactly
    assert active[:, 1].tolist() == [0, 0, 0, 1, 1, 1]


def test_quadtree_pays_for_a_region_at_its_coarsest_cell():
    m, axis = _hand_model(), make_axis("quadtree", 16, (4, 4))
    x = torch.zeros(1, 16, 4)
    x[..., 0] = 1.0  # one feature over the whole image
    with torch.no_grad():
        out = m(x, axis)
    assert (out.innovations != 0).sum().item() == 1 and out.innovations[0, 0, 0] > 0  # the root cell
    assert ((out.state != 0).sum(-1) == 1).all()
    assert l0(out.innovations, positions=16) == pytest.approx(1 / 16)


@pytest.mark.parametrize("carry", CARRIES)
@pytest.mark.parametrize("act", [TopK(k=4), BatchTopK(k=4), ReLU(l1_coeff=0.01), JumpReLU(init_threshold=0.05)],
                         ids=lambda a: a.kind)
@pytest.mark.parametrize("kind,T,grid", [("tokens", 8, None), ("quadtree", 16, (4, 4))])
@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_fast_path_matches_dense_reference(carry, act, kind, T, grid, device):
    """The sparse kernels against plain dense autograd: same codes, loss and gradients, on the
    CPU and on CUDA. In float64, so that rounding differences cannot flip a code across its
    threshold."""
    d, f = 64, 1024  # 32 rows x 1024 x 64 = 2^21: the sparse path
    m = _model(carry, act=act, d=d, f=f, persistence=1.0, carry_coeff=1.0).train().double().to(device)
    with torch.no_grad():
        for name, p in m.carry.named_parameters():
            if name.startswith("reset"):
                p.fill_(-3.0)  # weak resets, so that features are carried (and cut, and reset)
        if act.kind == "batchtopk":
            m.activation.threshold.fill_(0.7)  # codes carried and cut on both axes (0.05: hundreds fire)
        elif act.kind in ("relu", "jumprelu"):
            m.b_enc_F.fill_(-0.3)
    axis = make_axis(kind, T, grid)
    # a component shared by each window's positions: pooled quadtree cells code it too, and carry it
    x = (torch.randn(32, T, d, dtype=torch.float64) + 2 * torch.randn(32, 1, d, dtype=torch.float64)).to(device)
    assert use_sparse_path(32, m.W_enc_FD)
    grads = []
    for reference in (False, True):
        m.zero_grad()
        out = m(x, axis, reference=reference)
        terms = m.loss(x, out, dead_mask=torch.arange(f, device=device) % 4 == 0, axis=axis)
        assert terms.carry > 0  # the carry loss (weight 1 here, off by default) is compared too
        terms.total.backward()
        grads.append((out, terms, {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}))
    (o1, t1, g1), (o2, t2, g2) = grads
    assert torch.equal(o1.innovations != 0, o2.innovations != 0)
    assert_close(o1.x_hat, o2.x_hat, rtol=1e-5, atol=1e-5)
    assert_close(t1.total, t2.total, rtol=1e-5, atol=1e-6)
    for name in g2:
        assert_close(g1[name], g2[name], rtol=1e-4, atol=1e-5, msg=name)
    # the gated carry walks sparse (COO) states (and sums weight gradients once), here and
    # without autograd; the attention carry and JumpReLU walk dense states
    assert m._walks_sparse(32, reference=False) == (carry == "gated" and act.kind != "jumprelu")
    with torch.no_grad():
        plain = m(x, axis)
    for name in ("innovations", "state", "carried", "x_hat", "carried_decoded"):
        assert_close(getattr(plain, name), getattr(o2, name).detach(), rtol=1e-5, atol=1e-6, msg=name)
    assert torch.equal(plain.carried_support, o2.carried_support)
    assert (o2.carried != 0).any()  # something was carried, so the check has work to do
    for out in (o1, plain):  # the sparse walk builds its dense fields on read; the same values
        assert_close(out.pre_acts, o2.pre_acts.detach(), rtol=1e-5, atol=1e-6)
        assert torch.equal(out.fired(), (o2.innovations != 0).reshape(-1, f).any(0))
        assert out.x_hat.device.type == torch.device(device).type
    if m._walks_sparse(32, reference=False) and act.kind == "batchtopk":
        pre = o1.pre_acts.detach()  # the walk sampled what the threshold's update reads
        assert torch.equal(o1.statistics_sample.sort().values, pre[pre >= 0.8 * 0.7].sort().values)
    else:
        assert o1.statistics_sample is None
    m.carry_scale = 0.0  # the trainer's warm-up: nothing carried
    with torch.no_grad():
        off, off_reference = m(x, axis), m(x, axis, reference=True)
    assert_close(off.x_hat, off_reference.x_hat, rtol=1e-5, atol=1e-6)
    assert not off.carried.any() and torch.equal(off.state[:, -1], off.innovations[:, -1])


@pytest.mark.parametrize("carry", CARRIES)
@pytest.mark.parametrize("kind,T,grid", [("tokens", 16, None), ("quadtree", 16, (4, 4))])
def test_training_and_inference_walks_give_the_same_codes(carry, kind, T, grid):
    """Without autograd the walk codes straight from the pre-activations (`Activation.codes`)."""
    m = _model(carry, persistence=3.0).train()
    with torch.no_grad():
        for name, p in m.carry.named_parameters():
            if name.startswith("reset"):
                p.fill_(-4.0)  # weak resets: features persist
    axis = make_axis(kind, T, grid)
    x = torch.randn(4, T, 6)
    trained = m(x, axis)
    with torch.no_grad():
        plain = m(x, axis)
    assert (trained.carried != 0).any()  # something is carried, so the replay has work to do
    for name in ("innovations", "state", "carried", "x_hat", "pre_acts", "enc_in"):
        assert_close(getattr(trained, name).detach(), getattr(plain, name), msg=name)
    assert torch.equal(trained.carried_support, plain.carried_support)


@pytest.mark.parametrize("carry", CARRIES)
def test_a_threshold_primed_on_a_batch_codes_that_batch_at_exactly_its_budget(carry):
    """A trainer primes BatchTopK's threshold on the first batch and then trains on that batch,
    the carry off: exactly the budget fires, and no entry sits on the cut-off for rounding to
    decide (with the cut-off at an entry, one code fewer fired here, in float64, and a CUDA run
    picked it: the two parted at the first step)."""
    m = _model(carry, d=16, f=64).double().train()
    m.set_budget_(12)  # an annealed budget's first step: 4 x k
    x = torch.randn(8, 8, 16, dtype=torch.float64)
    m.prime_statistics_(x)
    m.set_carry_(False)
    with torch.no_grad():
        out = m(x, make_axis("tokens", 8))
    assert int((out.innovations != 0).sum()) == 12 * 8 * 8


@pytest.mark.parametrize("act", [TopK(k=2), BatchTopK(k=2), ReLU(l1_coeff=0.01), JumpReLU()], ids=lambda a: a.kind)
def test_every_activation_codes_the_innovations_and_trains(act):
    m = _model("gated", act=act).train()
    axis = make_axis("raster", 16, (4, 4))
    x = torch.randn(4, 16, 6)
    out = m(x, axis)
    terms = m.loss(x, out, torch.zeros(24, dtype=torch.bool), axis)
    terms.total.backward()
    assert torch.isfinite(terms.total)
    assert m.W_enc_FD.grad.abs().sum() > 0 and m.carry.persistence.grad.abs().sum() > 0


def test_a_contextual_sae_needs_an_axis():
    with pytest.raises(InputError, match="context axis"):
        _model("gated")(torch.randn(1, 4, 6))
