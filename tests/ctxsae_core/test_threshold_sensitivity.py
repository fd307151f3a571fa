"""An SAE's held-out figures with its inference threshold moved: exact values on a hand-built
contextual SAE where one more code, carried on, costs three later steps."""

import pytest
import torch

from ctxsae_core import SAE, BatchTopK, SAEConfig, TopK, make_axis
from ctxsae_core.evaluate import evaluate, fragile, threshold_sensitivity
from tests.ctxsae_core.hand import identity_sae


def _window() -> torch.Tensor:
    """One window of 4 steps: feature 1 (0.3) at step 0 only, feature 0 (0.8) throughout."""
    x = torch.zeros(1, 4, 4)
    x[0, :, 0] = 0.8
    x[0, 0, 1] = 0.3
    return x


def test_a_lower_threshold_codes_a_feature_that_is_then_carried_where_it_is_gone():
    model = identity_sae(activation=BatchTopK(k=1))
    model.eval()
    model.activation.set_threshold_(0.5)
    axis, x = make_axis("tokens", 4), _window()
    points = threshold_sensitivity(model, x, axis, scales=(0.5, 1.0))
    # threshold 0.5: step 0 codes feature 0 (0.79); it is carried, and steps 1-3 code nothing.
    # squared error 0.01^2 + 0.3^2 at step 0 and 0.01^2 at each later step: 0.0904; the centred
    # input's squared norm (feature 1: 0.3, 0, 0, 0 about its mean 0.075): 0.0675.
    # threshold 0.25: step 0 also codes feature 1 (0.29), carried on through steps 1-3 where it
    # is 0: 2 x 0.01^2 at step 0, then 0.01^2 + 0.29^2 three times: 0.2528.
    assert [p["scale"] for p in points] == [0.5, 1.0]
    assert points[0]["l0"] == pytest.approx(2 / 4) and points[1]["l0"] == pytest.approx(1 / 4)
    assert points[0]["fvu"] == pytest.approx(0.2528 / 0.0675, rel=1e-4)
    assert points[1]["fvu"] == pytest.approx(0.0904 / 0.0675, rel=1e-4)
    assert fragile(points, points[1]["fvu"])
    # the saved threshold is back, and the figures at it are evaluate's
    assert float(model.activation.threshold) == 0.5
    assert evaluate(model, x, axis)["fvu"] == pytest.approx(points[1]["fvu"], rel=1e-6)


def test_more_codes_of_a_per_position_identity_sae_only_help_and_topk_has_no_threshold():
    # identity dictionary: a coded coordinate leaves an error of 0.01 (the encoder bias), an
    # uncoded one its whole value, so a lower threshold can only lower the FVU
    model = SAE(SAEConfig(d_in=4, width=4, activation=BatchTopK(k=2)))
    with torch.no_grad():
        model.W_dec_FD.copy_(torch.eye(4))
        model.W_enc_FD.copy_(torch.eye(4))
        model.b_enc_F.fill_(-0.01)
        model.b_dec_D.zero_()
    model.eval()
    model.activation.set_threshold_(0.5)
    x = torch.rand(16, 3, 4, generator=torch.Generator().manual_seed(0))
    points = threshold_sensitivity(model, x, None)
    saved = evaluate(model, x, None)
    lower, higher = points
    assert lower["l0"] > saved["l0"] > higher["l0"]
    assert lower["fvu"] < saved["fvu"] < higher["fvu"]
    assert not fragile(points, saved["fvu"])
    assert threshold_sensitivity(SAE(SAEConfig(d_in=4, width=4, activation=TopK(k=2))), x, None) == []


def test_fragile_reads_only_the_lowered_thresholds():
    points = [{"scale": 0.95, "l0": 2.7, "fvu": 0.60}, {"scale": 1.05, "l0": 1.96, "fvu": 0.26}]
    assert fragile(points, 0.25)
    assert not fragile([{**points[0], "fvu": 0.20}, points[1]], 0.25)  # the higher threshold's worse FVU is expected
    assert not fragile([], 0.25)
