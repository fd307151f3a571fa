"""The LLM null baselines on hand-computed cases: the unigram table's means (across batches, with
unseen tokens falling back to the overall mean), the previous-positions means, and FVUs of 0 where
a baseline predicts exactly."""

import pytest
import torch

from visinterp.analysis.baselines import UnigramTable, null_fvus, previous_mean, unigram_table


def test_unigram_means_across_batches_and_the_fallback():
    table = UnigramTable()
    table.add(torch.tensor([[1, 2, 1]]), torch.tensor([[[1.0, 0.0], [5.0, 5.0], [3.0, 2.0]]]))
    table.add(torch.tensor([[2]]), torch.tensor([[[7.0, 1.0]]]))
    pred = table.predict(torch.tensor([[1, 2, 9]]))
    # token 1: mean of (1, 0) and (3, 2); token 2: of (5, 5) and (7, 1); 9 unseen: mean of all four
    torch.testing.assert_close(pred, torch.tensor([[[2.0, 1.0], [6.0, 3.0], [4.0, 2.0]]]))


def test_previous_means_use_the_positions_there_are():
    x = torch.arange(6.0).reshape(1, 6, 1)  # x_t = t
    assert previous_mean(x, 1)[0, :, 0].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]  # positions 1..5
    assert previous_mean(x, 4)[0, :, 0].tolist() == [0.0, 0.5, 1.0, 1.5, 2.5]  # means of t-4..t-1, clipped at 0


def test_null_fvus_are_zero_where_the_baseline_is_exact():
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(10, 3, generator=g)
    ids = torch.randint(0, 10, (20, 8), generator=g)
    table = unigram_table([(ids, emb[ids])])
    out = null_fvus(emb[ids], ids, table)
    assert out["unigram"] == pytest.approx(0.0, abs=1e-10)  # the activation is a function of the token
    flat = torch.randn(20, 1, 3, generator=g).expand(20, 8, 3)  # constant along each window
    out = null_fvus(flat, ids, table)
    assert out["previous_1"] == pytest.approx(0.0, abs=1e-10) and out["previous_4"] == pytest.approx(0.0, abs=1e-10)
    assert out["unigram"] > 0.5
