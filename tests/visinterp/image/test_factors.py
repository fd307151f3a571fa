import numpy as np
import pytest

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


def test_object_features_are_the_best_for_each_object_label_and_their_switch_rate_is_apart():
    """Five windows of 16 patches: background, then one object whose patches alternate lit and
    shadowed. Feature 0 holds over the object, feature 3 over the background but for one patch;
    feature 1 flickers everywhere and feature 2 follows the shadow (a factor that is not constant
    over an object) and flickers on the background."""
    import torch

    from visinterp.image.factors import feature_alignment

    n, t = 5, 16
    obj = torch.arange(t) >= 8
    odd = torch.arange(t) % 2 == 1
    factors = {"object_id": torch.where(obj, 0, -1), "kind_id": torch.where(obj, 1, -1), "material_id": torch.where(obj, 2, -1),
               "texture_id": torch.where(obj, 0, -1), "background": (~obj).long(), "shadowed": torch.where(obj, odd.long(), -1),
               "normal_bin": torch.where(obj, 4, -1), "colour": torch.zeros(t, dtype=torch.long), "depth": torch.arange(t).float()}
    factors = {k: v.expand(n, t).clone() for k, v in factors.items()}
    state = torch.zeros(n, t, 4)
    state[:, :, 0] = obj.float()
    state[:, :, 1] = (~odd).float()
    state[:, :, 2] = odd.float()  # shadowed object patches, and odd background ones
    state[:, :, 3] = (~obj).float()
    state[:, 4, 3] = 0.0
    out = feature_alignment(state, factors, threshold=0.75)
    # the object labels scored: object and background (one kind, material, texture: no negatives)
    assert out["factors"]["background"] == {"object": {"feature": 0, "auroc": 1.0},
                                            "background": {"feature": 3, "auroc": 7 / 8 + 1 / 8 * 0.5}}
    assert out["object_features"] == [0, 3] and out["object_label_auroc"] == pytest.approx((1 + 0.9375) / 2)
    # 14 same-region pairs a window (7 in the background, 7 in the object): feature 0 never flips,
    # 1 and 2 flip at all 14, feature 3 at 2 (into and out of position 4)
    assert out["switch_rate_of_object_features"] == pytest.approx((0 + 2 / 14) / 2)
    assert out["within_object_switch_rate"] == pytest.approx((0 + 1 + 1 + 2 / 14) / 4)
    assert out["factors"]["shadowed"]["shadowed"] == {"feature": 2, "auroc": 1.0}  # aligned, not with an object label
