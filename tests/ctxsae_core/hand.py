"""A hand-built contextual SAE the tests compute exact values against."""

import torch

from ctxsae_core import ContextualConfig, ContextualSAE


def identity_sae(**config) -> ContextualSAE:
    """d = F = 4, identity dictionary, encoder bias -0.01, no decoder bias, resets off (their
    factors' logits -30) and persistence logit 20 (gate 1) unless `config` says otherwise; the
    rest of the ContextualConfig (activation, carry, ...) from `config`. In training mode."""
    m = ContextualSAE(ContextualConfig(**{"d_in": 4, "width": 4, "reset_rank": 1, "init_persistence": 20.0,
                                          "carry_threshold": 0.01, **config}))
    with torch.no_grad():
        m.W_dec_FD.copy_(torch.eye(4))
        m.W_enc_FD.copy_(torch.eye(4))
        m.b_enc_F.fill_(-0.01)
        m.b_dec_D.zero_()
        m.carry.reset_in_raw.fill_(-30.0)
        m.carry.reset_out_raw.fill_(-30.0)
    return m
