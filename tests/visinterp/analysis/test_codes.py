"""One pass for scores and codes agrees with ctxsae_core.evaluate and with the codes alone."""

import pytest
import torch

from ctxsae_core import BatchTopK, ContextualConfig, make_axis
from ctxsae_core.checkpoint import build_sae
from ctxsae_core.evaluate import evaluate
from visinterp.analysis.codes import evaluate_with_codes, window_codes


@pytest.mark.parametrize("shuffle", [False, True])
def test_evaluate_with_codes_matches_evaluate_and_window_codes(shuffle):
    torch.manual_seed(0)
    model = build_sae(ContextualConfig(d_in=8, width=32, activation=BatchTopK(k=2), carry="gated")).eval()
    x = torch.randn(70, 6, 8)  # more than one batch of 64 windows
    model.init_from_data_(x)
    axis = make_axis("tokens", 6)
    scores, codes = evaluate_with_codes(model, x, axis, shuffle, seed=3)
    reference = evaluate(model, x, axis, shuffle_context=shuffle, seed=3)
    for key in ("fvu", "mse", "l0", "state_l0", "dead_fraction", "n_positions"):
        assert scores[key] == pytest.approx(reference[key], rel=1e-6), key
    alone = window_codes(model, x, axis, shuffle, seed=3)
    for key in ("x_hat", "innovations", "state"):
        torch.testing.assert_close(codes[key], alone[key])
    assert scores["l0"] > 0 and scores["state_l0"] >= scores["l0"]
