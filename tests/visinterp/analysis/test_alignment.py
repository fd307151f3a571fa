import pytest
import torch

from visinterp.analysis.alignment import alignment_table, auroc, correlation, unnamed_features


def test_auroc_hand_computed_with_ties():
    # positives score 3 and 1, negatives 2 and 1: pairs (3>2), (3>1), (1<2), (1=1 half) -> 2.5 / 4
    scores = torch.tensor([3.0, 1.0, 2.0, 1.0])
    labels = torch.tensor([True, True, False, False])
    assert auroc(scores, labels).item() == pytest.approx(0.625)
    assert auroc(torch.tensor([0.0, 0.0, 0.0]), torch.tensor([True, False, False])).item() == pytest.approx(0.5)
    assert torch.isnan(auroc(scores, torch.ones(4, dtype=torch.bool)))


def test_auroc_matches_the_pairwise_definition():
    scores = torch.randint(0, 4, (60, 3)).float()
    labels = torch.rand(60) < 0.4
    pos, neg = scores[labels], scores[~labels]
    pairwise = ((pos[:, None] > neg[None]).float() + 0.5 * (pos[:, None] == neg[None]).float()).mean((0, 1))
    torch.testing.assert_close(auroc(scores, labels), pairwise)


def test_auroc_of_several_label_columns_in_blocks_matches_the_pairwise_definition(monkeypatch):
    """Many label columns scored at once, the scores ranked a few columns at a time, give each
    column's pairwise AUROC; a column that is all one class gives NaN."""
    import visinterp.analysis.alignment as alignment

    monkeypatch.setattr(alignment, "_BLOCK_ELEMENTS", 2 * 50)  # 2 score columns a block
    g = torch.Generator().manual_seed(1)
    scores = torch.randint(0, 3, (50, 5), generator=g).float() * (torch.rand(50, 5, generator=g) < 0.5)
    labels = torch.stack([torch.rand(50, generator=g) < p for p in (0.2, 0.5, 0.8)] + [torch.zeros(50, dtype=torch.bool)], 1)
    got = auroc(scores, labels)
    assert got.shape == (4, 5) and torch.isnan(got[3]).all()
    for j in range(3):
        pos, neg = scores[labels[:, j]], scores[~labels[:, j]]
        pairwise = ((pos[:, None] > neg[None]).float() + 0.5 * (pos[:, None] == neg[None]).float()).mean((0, 1))
        torch.testing.assert_close(got[j], pairwise)


def test_correlation_hand_computed():
    scores = torch.tensor([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0]])
    r = correlation(scores, torch.tensor([2.0, 4.0, 6.0]))
    assert r.tolist() == pytest.approx([1.0, 0.0])


def test_alignment_table_finds_the_planted_feature_and_the_unnamed_one():
    g = torch.Generator().manual_seed(0)
    n = 400
    kind = torch.randint(0, 3, (n,), generator=g)
    codes = torch.rand(n, 4, generator=g) * 0.1
    codes[:, 2] += (kind == 1).float()  # feature 2 is "kind 1"
    codes[:, 3] = (torch.rand(n, generator=g) < 0.3).float()  # feature 3 fires on nothing known
    out = alignment_table(codes, {"kind": kind}, names={"kind": ("sphere", "box", "torus")})
    assert out["factors"]["kind"]["box"] == {"feature": 2, "auroc": 1.0}
    # features 0 and 1 are noise (always on), 3 fires 30% of the time on nothing known; 2 is named
    unnamed = unnamed_features(out["best_by_feature"], codes, threshold=0.75)
    assert sorted(unnamed[:2]) == [0, 1] and unnamed[2:] == [3]


def test_within_labelled_scores_identity_among_labelled_positions_only():
    # 0..59 empty space (-1), 60..99 object 0, 100..139 object 1; feature 0 marks any surface,
    # feature 1 marks object 1 only
    lab = torch.cat([torch.full((60,), -1), torch.zeros(40, dtype=torch.long), torch.ones(40, dtype=torch.long)])
    codes = torch.stack([(lab >= 0).float(), (lab == 1).float()], dim=1)
    plain = alignment_table(codes, {"object_id": lab})["factors"]["object_id"]
    inside = alignment_table(codes, {"object_id": lab}, within_labelled=("object_id",))["factors"]["object_id"]
    # one-vs-rest over everything: the surface marker scores (40*60 + 0.5*40*40) / (40*100) = 0.8 for object 0
    assert plain["0"] == {"feature": 0, "auroc": pytest.approx(0.8)}
    # among surface positions only the marker says nothing (0.5), and no feature fires on object 0 alone
    assert inside["0"]["auroc"] == pytest.approx(0.5) and inside["1"] == {"feature": 1, "auroc": 1.0}
    assert "-1" not in inside and "-1" in plain  # unlabelled positions get no row of their own inside


def test_a_linear_probe_finds_a_factor_that_is_spread_over_features():
    """label = x0 + x1 > 0 for Gaussian x: each coordinate alone ranks it with AUROC 5/6
    (0.8334 measured over 400k samples), a probe on both with 1. A continuous factor x0 - 2 x1
    correlates 2 / sqrt(5) with x1 alone and 1 with the probe."""
    from visinterp.analysis.alignment import probe_table

    g = torch.Generator().manual_seed(0)
    train, held = torch.randn(4000, 3, generator=g), torch.randn(2000, 3, generator=g)

    def factors(x):
        return {"side": (x[:, 0] + x[:, 1] > 0).long(), "depth": x[:, 0] - 2 * x[:, 1]}

    single = alignment_table(held, factors(held), continuous=("depth",))["factors"]
    probe = probe_table(train, factors(train), held, factors(held), continuous=("depth",))
    assert single["side"]["1"]["auroc"] == pytest.approx(5 / 6, abs=0.02)
    assert probe["side"]["1"]["auroc"] > 0.999 and probe["side"]["0"]["auroc"] > 0.999
    assert abs(single["depth"]["correlation"]) == pytest.approx(2 / 5**0.5, abs=0.02)
    assert probe["depth"]["correlation"] > 0.999
