"""The SAE base (dictionary, normalisation, losses) and the per-position SAE.

Activations are normalised inside the model: `act_scale` makes the training data's mean
squared norm 1 and is stored with the weights, so users pass raw activations to `encode`,
`decode` and `forward`, and get raw-unit reconstructions back."""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import torch
from torch import Tensor, nn

from ctxsae_core.activations import Activation, Encoded, make_activation, project
from ctxsae_core.axes import ContextAxis
from ctxsae_core.config import SAEConfig, TopK
from ctxsae_core.distributed import group
from ctxsae_common.errors import InputError
from ctxsae_core.registry import ACTIVATION_CONFIGS, ARCHITECTURES
from ctxsae_core.sparse_ops import SparseCodes, gather_linear, steps_features


Built = Tensor | Callable[[], Tensor]  # a tensor, or a function that builds it when first read


class _BuiltOnRead:
    """An `SAEOutput` field given as a tensor or as a function building it: the function runs on
    the field's first read and its tensor is kept. A training step reads few of the dense
    (B, S, F) fields, and a contextual walk over sparse states would spend about a sixth of
    its forward pass writing them all."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.slot = "_" + name

    def __get__(self, obj: object, owner: type | None = None) -> Tensor | None:
        if obj is None:
            return self  # type: ignore[return-value]
        value = getattr(obj, self.slot)
        if callable(value):  # a tensor is not callable
            value = value()
            setattr(obj, self.slot, value)
        return value

    def __set__(self, obj: object, value: Built | None) -> None:
        setattr(obj, self.slot, value)


class SAEOutput:
    """What one forward pass returns, whatever the architecture.

    S is the number of steps the axis walks: S == T except on a quadtree axis, whose pooled
    cells come first. Innovations are what is paid for; the state is what the decoder uses.
    The (B, S, F) fields may be given as functions that build them (`Built`): they are built
    on first read."""

    innovations = _BuiltOnRead()  # (B, S, F) codes that fire at each step
    state = _BuiltOnRead()  # (B, T, F) codes the decoder reads at each input position
    pre_acts = _BuiltOnRead()  # (B, S, F) encoder pre-activations
    carried = _BuiltOnRead()  # (B, S, F) codes carried into each step (contextual SAEs only)
    carried_support = _BuiltOnRead()  # (B, S, F) bool: carried entries, cut ones included
    _fired = _BuiltOnRead()

    def __init__(self, x_hat: Tensor, innovations: Built, state: Built, pre_acts: Built, enc_in: Tensor,
                 carried: Built | None = None, carried_support: Built | None = None,
                 carried_decoded: Tensor | None = None, fired: Built | None = None,
                 statistics_sample: Tensor | None = None):
        self.x_hat = x_hat  # (B, T, D) reconstruction, raw units
        self.innovations, self.state, self.pre_acts = innovations, state, pre_acts
        self.enc_in = enc_in  # (B, S, D) encoder inputs (normalised, centred, minus what the state carries)
        self.carried, self.carried_support = carried, carried_support
        self.carried_decoded = carried_decoded  # (B, S, D) W_dec carried (normalised, no b_dec), with autograd
        self._fired = fired if fired is not None else (lambda: (self.innovations != 0).flatten(0, -2).any(0))
        # what the activation's `select_sampling` collected of pre_acts while coding, if it ran
        self.statistics_sample = statistics_sample

    def fired(self) -> Tensor:
        """(F,) bool: the features with an innovation anywhere in the batch."""
        return self._fired


class LossTerms(NamedTuple):
    """The training loss and its parts, each a scalar tensor."""

    total: Tensor
    mse: Tensor  # mean over positions of ||x - x_hat||^2, normalised units
    sparsity: Tensor  # the activation's penalty (L1, L0), zero for TopK / BatchTopK
    aux: Tensor  # AuxK dead-feature loss (TopK / BatchTopK), else zero
    carry: Tensor  # contextual SAEs: how well the carried codes alone predict each step


def geometric_median(x: Tensor, iters: int = 30) -> Tensor:
    """Weiszfeld's algorithm on the rows of x (N, D); starts at the mean. Under data-parallel
    training the rows are every rank's together (`ctxsae_core.distributed`)."""
    g = group()
    if g.world == 1:
        y = x.mean(0)
        for _ in range(iters):
            w = 1 / (x - y).norm(dim=1).clamp_min(1e-8)
            y = (w[:, None] * x).sum(0) / w.sum()
        return y
    sums = g.sum_(torch.cat([x.sum(0), x.new_tensor([x.shape[0]])]))
    y = sums[:-1] / sums[-1]
    for _ in range(iters):
        w = 1 / (x - y).norm(dim=1).clamp_min(1e-8)
        sums = g.sum_(torch.cat([(w[:, None] * x).sum(0), w.sum().reshape(1)]))
        y = sums[:-1] / sums[-1]
    return y


class BaseSAE(nn.Module):
    """Dictionary W_dec (F, D) with unit rows, encoder W_enc (F, D), biases, activation.

    What a trainer may set, the model declares: `budget` (the innovation budget k of a
    TopK-family activation, annealed by `set_budget_`; None otherwise) and `has_carry` (a
    contextual SAE's carry, switched by `set_carry_`)."""

    config: SAEConfig
    has_carry: bool = False

    def __init__(self, config: SAEConfig):
        super().__init__()
        self.config = config
        f, d = config.width, config.d_in
        W_dec = torch.randn(f, d)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        self.W_dec_FD = nn.Parameter(W_dec)
        self.W_enc_FD = nn.Parameter(W_dec.clone())  # tied at init (Gao et al. 2024, sec. 2.2)
        self.b_enc_F = nn.Parameter(torch.zeros(f))
        self.b_dec_D = nn.Parameter(torch.zeros(d))
        self.register_buffer("act_scale", torch.ones(()))  # x_normalised = x * act_scale
        self.activation: Activation = make_activation(config.activation, f)

    # --- data-dependent initialisation and the decoder's constraint ---------------------------

    @torch.no_grad()
    def init_from_data_(self, x: Tensor) -> None:
        """Set `act_scale` so the sample's mean squared norm is 1 and `b_dec` to its geometric median."""
        x = x.reshape(-1, x.shape[-1]).to(self.W_dec_FD.dtype)
        sq = group().sum_(torch.stack([x.pow(2).sum(), x.new_tensor(float(x.shape[0]))]))
        self.act_scale.fill_(float((sq[0] / sq[1]).rsqrt()))
        self.b_dec_D.copy_(geometric_median(x * self.act_scale))

    @torch.no_grad()
    def shrink_encoder_(self, x: Tensor) -> float:
        """Scale W_enc down by the least-squares factor alpha = <x - b, x_hat> / |x_hat|^2 when the
        tied init over-reconstructs the sample (alpha < 1); returns the factor applied. With k
        comparable to d (a 4-channel VAE latent, k = 8) the k unit directions, each coding its full
        projection, add up to several times x, an initial FVU far above 1 that short training does
        not recover from. TopK/BatchTopK pick the same features at any positive scale,
        so only the code sizes change; other activations are left alone (returns 1)."""
        if self.config.activation.kind not in ("topk", "batchtopk"):
            return 1.0
        centred = x.reshape(-1, x.shape[-1]).to(self.W_dec_FD.dtype) * self.act_scale - self.b_dec_D
        recon = self.activation.encode_reference(centred, self.W_enc_FD, self.b_enc_F).dense @ self.W_dec_FD
        dots = group().sum_(torch.stack([(centred * recon).sum(), recon.pow(2).sum()]))
        alpha = float(dots[0] / dots[1].clamp(min=1e-12))
        if not 0 < alpha < 1:
            return 1.0
        self.W_enc_FD.mul_(alpha)
        return alpha

    @torch.no_grad()
    def prime_statistics_(self, x: Tensor) -> None:
        """Running statistics from a sample before the first step, as a training step would set
        them (BatchTopK's threshold). A contextual SAE codes its innovations with the threshold
        from the first step on; at its initial 0, half of all features would fire."""
        if not self.activation.has_statistics:
            return
        centred = x.reshape(-1, x.shape[-1]).to(self.W_dec_FD.dtype) * self.act_scale - self.b_dec_D
        pre = torch.nn.functional.linear(centred, self.W_enc_FD, self.b_enc_F)
        self.activation.update_statistics_(pre, centred.shape[0])

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Rescale every decoder row to unit norm (after each optimiser step)."""
        self.W_dec_FD /= self.W_dec_FD.norm(dim=1, keepdim=True).clamp_min(1e-8)

    @torch.no_grad()
    def remove_parallel_grads_(self) -> None:
        """Drop the part of W_dec's gradient along its rows, which renormalising would undo."""
        g = self.W_dec_FD.grad
        if g is not None:
            g -= (g * self.W_dec_FD).sum(1, keepdim=True) * self.W_dec_FD

    def param_groups(self, lr: float) -> list[dict]:
        """Optimiser parameter groups; subclasses give some parameters their own rate."""
        return [{"params": list(self.parameters()), "lr": lr, "lr_scale": 1.0}]

    # --- what a trainer may set ---------------------------------------------------------------

    @property
    def budget(self) -> int | None:
        """The configured innovation budget k (TopK, BatchTopK), or None (ReLU, JumpReLU)."""
        return self.config.activation.k if isinstance(self.config.activation, TopK) else None

    def set_budget_(self, k: float) -> None:
        """Code with budget `k` until set again (a trainer anneals it; not saved)."""
        if self.budget is None:
            raise TypeError(f"{self.config.activation.kind} has no innovation budget to set")
        self.activation.set_budget_(k)

    def set_carry_(self, on: bool) -> None:
        """Switch the carry on or off (a trainer's warm-up); nothing to switch per position."""

    # --- shared pieces ------------------------------------------------------------------------

    def check_input(self, x: Tensor, rank: int = 3) -> None:
        """Raise InputError unless x has `rank` dimensions and the SAE's width d last."""
        if x.ndim != rank or x.shape[-1] != self.config.d_in:
            want = "(batch, T, d)" if rank == 3 else "(N, d)"
            raise InputError(f"expected activations of shape {want} with d={self.config.d_in}, "
                             f"got {tuple(x.shape)}")

    def decode_codes(self, codes: Tensor) -> Tensor:
        """Codes (..., F) -> reconstruction (..., D), raw units. Reads nothing but the codes."""
        flat = codes.reshape(-1, codes.shape[-1])
        out = project(flat, self.W_dec_FD) if self.activation.sparse_grad else flat @ self.W_dec_FD
        return ((out + self.b_dec_D) / self.act_scale).reshape(*codes.shape[:-1], -1)

    def loss(self, x: Tensor, out: SAEOutput, dead_mask: Tensor | None = None,
             axis: ContextAxis | None = None) -> LossTerms:
        """Training loss on windows x (B, T, D) walked along `axis`; `dead_mask` (F,) comes
        from the trainer."""
        err = (x - out.x_hat) * self.act_scale
        mse = err.pow(2).sum(-1).mean()
        n_positions = x.shape[0] * x.shape[1]
        act = self.activation
        sparsity = act.penalty(out.innovations, out.pre_acts, n_positions) if act.has_penalty else mse.new_zeros(())
        aux = self._aux_loss(out, err, dead_mask)
        carry = self.carry_loss(x, out, axis)
        return LossTerms(mse + sparsity + aux + carry, mse, sparsity, aux, carry)

    def carry_loss(self, x: Tensor, out: SAEOutput, axis: ContextAxis | None) -> Tensor:
        """Extra loss on what the state carries; none for a per-position SAE."""
        return x.new_zeros(())

    def _aux_loss(self, out: SAEOutput, err: Tensor, dead_mask: Tensor | None) -> Tensor:
        """AuxK (Gao et al. 2024, app. A.2): the top aux_k dead features model the residual
        error; normalised by the error's variance as in EleutherAI's sparsify."""
        cfg = self.config.activation
        zero = err.new_zeros(())
        if not isinstance(cfg, TopK) or dead_mask is None or cfg.aux_coeff == 0:
            return zero
        dead = dead_mask.nonzero().squeeze(1)
        if dead.numel() == 0:
            return zero
        steps = self.output_steps(out)
        enc_in = out.enc_in[:, steps].reshape(-1, self.config.d_in).detach()
        e = err.reshape(-1, self.config.d_in).detach()
        k_aux = min(cfg.aux_k or self.config.d_in // 2, dead.numel())
        with torch.no_grad():  # the dead columns only: pre_acts may be a view in any layout
            pre_dead = out.pre_acts[:, steps][..., dead].reshape(-1, dead.numel())
            vals, local = pre_dead.topk(k_aux, dim=1, sorted=False)
            local, order = local.sort(dim=1)  # `dead` is ascending, so cols come out sorted per row
            vals = vals.gather(1, order)
            keep = vals > 0
            rows = torch.arange(pre_dead.shape[0], device=local.device).unsqueeze(1).expand_as(local)[keep]
            cols = dead[local[keep]]
        aux_vals = gather_linear(enc_in, self.W_enc_FD, self.b_enc_F, rows, cols, vals[keep])
        e_hat = SparseCodes(rows, cols, aux_vals, pre_dead.shape[0], self.config.width).decode(self.W_dec_FD)
        g = group()
        if g.world == 1:
            variance = (e - e.mean(0)).pow(2).sum().clamp_min(1e-12)
        else:  # the global batch's variance; each rank's share weighted so the ranks' mean is the global loss
            stats = g.sum_(torch.cat([e.sum(0), e.pow(2).sum().reshape(1), e.new_tensor([e.shape[0]])]))
            variance = (stats[-2] - stats[:-2].pow(2).sum() / stats[-1]).clamp_min(1e-12) / g.world
        scale = min(dead.numel() / k_aux, 1.0)  # fewer dead features than aux_k: a weaker pull
        return cfg.aux_coeff * scale * (e_hat - e).pow(2).sum() / variance

    def output_steps(self, out: SAEOutput) -> Tensor | slice:
        """Steps whose pre-activations belong to input positions (all of them, per position)."""
        return slice(None)

    def update_statistics_(self, out: SAEOutput, n_positions: int) -> None:
        """After a training step: running statistics of the activation (BatchTopK's threshold)."""
        if self.activation.has_statistics:
            self.activation.update_statistics_(out.pre_acts.detach(), n_positions, out.statistics_sample)


class SAE(BaseSAE):
    """A per-position SAE: z = act(W_enc (x - b_dec) + b_enc), x_hat = W_dec z + b_dec, in
    normalised units. Innovations and state are the same codes."""

    def encode(self, x: Tensor) -> Tensor:
        """Raw activations (..., D) -> codes (..., F). Inference mode (BatchTopK thresholds)."""
        flat = x.reshape(-1, x.shape[-1])
        codes = self.activation.encode(flat * self.act_scale - self.b_dec_D, self.W_enc_FD, self.b_enc_F).dense
        return codes.reshape(*x.shape[:-1], -1)

    def decode(self, codes: Tensor) -> Tensor:
        """Codes (..., F) -> reconstruction (..., D), raw units."""
        return self.decode_codes(codes)

    def forward(self, x: Tensor, axis: ContextAxis | None = None, reference: bool = False) -> SAEOutput:
        """Windows x (B, T, D) -> SAEOutput. The axis is ignored: each position is coded alone.
        `reference` runs the plain dense-autograd path (for tests)."""
        self.check_input(x)
        b, t, d = x.shape
        x_c = x.reshape(-1, d) * self.act_scale - self.b_dec_D
        pooled = self.training  # BatchTopK shares its budget across the batch in training only
        if reference:
            enc = self.activation.encode_reference(x_c, self.W_enc_FD, self.b_enc_F, pooled)
        else:
            enc = self.activation.encode(x_c, self.W_enc_FD, self.b_enc_F, pooled, dense=False)
        recon = enc.dense @ self.W_dec_FD if enc.sparse is None else enc.sparse.decode(self.W_dec_FD)
        x_hat = ((recon + self.b_dec_D) / self.act_scale).reshape(b, t, d)
        codes, fired = self._codes_of(enc, (b, t, -1))
        return SAEOutput(x_hat, codes, codes, enc.pre.reshape(b, t, -1), x_c.reshape(b, t, d), fired=fired,
                         statistics_sample=enc.sample)

    @staticmethod
    def _codes_of(enc: Encoded, shape: tuple[int, ...]) -> tuple[Built, Built | None]:
        """The dense codes (built on read when only COO codes exist) and the features that fired."""
        if enc.dense is not None:
            return enc.dense.reshape(shape), None
        sparse = enc.sparse
        codes = functools.cache(lambda: sparse.to_dense().reshape(shape))  # innovations and state: one tensor
        return codes, lambda: steps_features([sparse])


for _kind in ACTIVATION_CONFIGS:  # a per-position SAE is named after its activation
    ARCHITECTURES.register(_kind, SAE)
