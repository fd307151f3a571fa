import numpy as np

from visinterp.image.factors import COLOURS, colour_bin, grid_factors, pixel_factors


def _truth():
    """A 4 x 4 render: background on the left half, one red glossy box (id 0) on the right,
    its bottom row shadowed from the only light."""
    oid = np.full((4, 4), -1, np.int8)
    oid[:, 2:] = 0
    rgb = np.zeros((4, 4, 3), np.float32)
    rgb[:, :2] = [0.5, 0.5, 0.5]  # grey background
    rgb[:, 2:] = [0.9, 0.1, 0.1]  # red box
    lit = np.zeros((4, 4, 1), bool)
    lit[:3, 2:] = True
    normal = np.zeros((4, 4, 3), np.float32)
    normal[:, 2:] = [0, 0, 1]
    depth = np.full((4, 4), np.inf, np.float32)
    depth[:, 2:] = 2.0
    return {"object_id": oid, "kind_id": np.where(oid >= 0, 1, -1).astype(np.int8),
            "material_id": np.where(oid >= 0, 1, -1).astype(np.int8), "texture_id": np.where(oid >= 0, 0, -1).astype(np.int8),
            "lit": lit, "normal": normal, "depth": depth, "rgb": rgb}


def test_colour_bins_by_hue_sector_and_grey():
    rgb = np.array([[[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 1, 1], [0, 0, 1], [1, 0, 1], [0.5, 0.5, 0.5], [0.95, 0.05, 0.5]]],
                   np.float32)
    names = [COLOURS[i] for i in colour_bin(rgb)[0].tolist()]
    assert names == ["red", "yellow", "green", "cyan", "blue", "magenta", "grey", "red"]  # hue 330: red sector


def test_pixel_factors_label_background_shadow_normal_and_depth():
    f = pixel_factors(_truth())
    assert f["background"][:, 0].tolist() == [1] * 4 and f["background"][:, 3].tolist() == [0] * 4
    assert f["shadowed"][:, 3].tolist() == [0, 0, 0, 1] and f["shadowed"][0, 0] == -1
    assert f["normal_bin"][0, 3] == 4 and f["normal_bin"][0, 0] == -1  # +z
    assert f["depth"][0, 0] == 2.0  # background takes the farthest surface depth
    assert [COLOURS[i] for i in f["colour"][0].tolist()] == ["grey", "grey", "red", "red"]


def test_grid_factors_read_each_patch_centre_in_window_order():
    g = grid_factors([_truth(), _truth()], (2, 2), tile=0)  # 2 x 2 patches of 2 x 2 pixels, one window each
    assert g["background"].shape == (2, 4)
    assert g["background"][0].tolist() == [1, 0, 1, 0]  # row-major: left patches background
    assert g["shadowed"][0].tolist() == [-1, 0, -1, 1]  # bottom-right patch centre (3, 3) is shadowed
