import pytest
import torch

from ctxsae_core.axes import make_axis, parse_grid
from ctxsae_common.errors import InputError


def test_tokens_and_raster_parents_are_the_previous_position():
    for axis in (make_axis("tokens", 6), make_axis("raster", 6, (2, 3))):
        assert axis.parent.tolist() == [-1, 0, 1, 2, 3, 4]
        assert axis.input_step.tolist() == list(range(6))
        x = torch.randn(2, 6, 3)
        assert torch.equal(axis.expand(x), x)


def test_quadtree_pools_coarse_cells_from_leaves():
    axis = make_axis("quadtree", 16)  # 4x4 -> levels 1x1, 2x2, 4x4
    assert axis.levels == ((1, 1), (2, 2), (4, 4))
    assert axis.n_steps == 21
    parent = axis.parent.tolist()
    assert parent[:5] == [-1, 0, 0, 0, 0]
    assert parent[5:9] == [1, 1, 2, 2]  # leaf row 0: cells (0,0),(0,1) under (0,0); (0,2),(0,3) under (0,1)
    assert all(p < s for s, p in enumerate(parent))
    x = torch.arange(16.0).view(1, 16, 1)
    steps = axis.expand(x)[0, :, 0]
    assert steps[0] == pytest.approx(7.5)  # mean of 0..15
    assert steps[1:5].tolist() == pytest.approx([2.5, 4.5, 10.5, 12.5])  # e.g. mean(0, 1, 4, 5)
    assert torch.equal(steps[axis.input_step], x[0, :, 0])


def test_quadtree_on_odd_grid_averages_only_covered_leaves():
    axis = make_axis("quadtree", 15, (3, 5))
    assert axis.levels == ((1, 1), (1, 2), (2, 3), (3, 5))
    x = torch.arange(15.0).view(1, 15, 1)
    steps = axis.expand(x)[0, :, 0]
    assert steps[0] == pytest.approx(7.0)
    # level (2, 3): cell (1, 2) covers leaf (2, 4) only -> 14; cell (0, 0) covers 0, 1, 5, 6 -> 3
    level2 = steps[3:9].view(2, 3)
    assert level2[1, 2] == pytest.approx(14.0)
    assert level2[0, 0] == pytest.approx(3.0)


@pytest.mark.parametrize("kind,T,grid,match", [
    ("raster", 10, None, "not a square"),
    ("raster", 12, (3, 3), "has 9 cells"),
    ("spiral", 4, None, "unknown axis"),
])
def test_axis_errors_name_the_fix(kind, T, grid, match):
    with pytest.raises(InputError, match=match):
        make_axis(kind, T, grid)


def test_parse_grid():
    assert parse_grid("16x8") == (16, 8)
    with pytest.raises(InputError, match="HxW"):
        parse_grid("16")


def test_axis_round_trips_through_a_dict():
    axis = make_axis("quadtree", 12, (3, 4))
    again = type(axis).from_dict(axis.to_dict())
    assert torch.equal(again.parent, axis.parent) and again.grid == (3, 4)
