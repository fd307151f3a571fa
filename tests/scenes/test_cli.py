import json

import numpy as np
import pytest
from PIL import Image

from scenes.cli import main
from scenes.io import read_truth
from scenes.render import srgb
from scenes.spec import Scene


def test_render_writes_images_truth_factors_and_contact_sheet(tmp_path):
    out = tmp_path / "r"
    assert main(["render", "--n", "2", "--size", "16", "--seed", "5", "--aa", "1", "--out", str(out), "--no-progress"]) == 0
    rows = [json.loads(line) for line in (out / "factors.jsonl").read_text().splitlines()]
    assert [r["seed"] for r in rows] == [5, 6]
    for r in rows:
        img = np.asarray(Image.open(out / "images" / f"{r['image']}.png"))
        truth = read_truth(out / "truth" / f"{r['image']}.npz")
        assert img.shape == (16, 16, 3) and truth["depth"].shape == (16, 16) and truth["normal"].shape == (16, 16, 3)
        assert np.abs(srgb(truth["rgb"]) * 255 - img).max() <= 0.51  # the PNG is the render, sRGB-encoded and rounded
        for o in r["objects"]:
            assert o["pixel_fraction"] == pytest.approx((truth["object_id"] == o["object_id"]).mean())
        scene = Scene.from_json((out / "scenes" / f"{r['image']}.json").read_text())
        assert scene.seed == r["seed"]
        bg = truth["object_id"] < 0
        assert np.isinf(truth["depth"][bg]).all() and np.isfinite(truth["depth"][~bg]).all()
    sheet = Image.open(out / "contact_sheet.png")
    assert sheet.size == (2 * (3 * 16 + 2) + 2, 16 + 4)


def test_render_a_given_scene_file(tmp_path):
    scene = {"objects": [{"kind": "sphere", "size": [1, 0, 0]}], "camera": {"eye": [0, 0, 5], "target": [0, 0, 0]}}
    (tmp_path / "s.json").write_text(json.dumps(scene))
    assert main(["render", "--scene", str(tmp_path / "s.json"), "--size", "9", "--aa", "1", "--out",
                 str(tmp_path / "o"), "--no-progress"]) == 0
    truth = read_truth(tmp_path / "o" / "truth" / "00000.npz")
    assert truth["object_id"][4, 4] == 0 and truth["object_id"][0, 0] == -1


@pytest.mark.parametrize("setup, argv, words", [
    (lambda p: p.joinpath("s.json").write_text('{"objects": [{"kind": "sphere", "size": [-1, 0, 0]}]}'),
     ["--scene", "{p}/s.json"], "object.size"),
    (lambda p: p.joinpath("c.json").write_text('{"n_objects": [1, 2], "colours": 3}'),
     ["--sampler", "{p}/c.json"], "unknown field(s) colours"),
    (lambda p: p.joinpath("c.json").write_text('{"n_objects": '), ["--sampler", "{p}/c.json"], "not valid JSON"),
    (lambda p: None, ["--scene", "{p}/missing.json"], "missing.json: missing scene"),
])
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, capsys, setup, argv, words):
    setup(tmp_path)
    out = tmp_path / "out"
    code = main(["render", "--size", "8", "--out", str(out), "--no-progress", *[a.format(p=tmp_path) for a in argv]])
    err = capsys.readouterr().err
    assert code == 2 and words in err and err.count("\n") == 1
    assert not out.exists()


def test_bad_flag_exits_2(capsys):
    assert main(["render", "--out", "x", "--size", "0"]) == 2
    assert "must be at least 1" in capsys.readouterr().err
