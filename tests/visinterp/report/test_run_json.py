"""run.json: one-line errors for folders that hold no finished run, and relative run folders found
from the repository root when the working directory is elsewhere (a notebook in notebooks/)."""

import json

import pytest

from ctxsae_common.errors import InputError
from visinterp.report import run_json
from visinterp.report.run_json import find_run_folder, read_run, write_run


def test_write_then_read(tmp_path):
    write_run(tmp_path, "llm", held_ids=[3, 1], axis="tokens")
    assert read_run(tmp_path, "llm") == {"job": "llm", "format": 1, "held_ids": [3, 1], "axis": "tokens"}


@pytest.mark.parametrize("content,match", [
    (None, "no run.json, so no finished image run is there: run `visinterp run --out"),
    ({"job": "llm", "format": 1}, "a 'llm' run, not a 'image' run"),
    ({"job": "image", "format": 7}, "format 7 is not 1: run the job again"),
])
def test_bad_folders(tmp_path, content, match):
    if content is not None:
        (tmp_path / "run.json").write_text(json.dumps(content))
    with pytest.raises(InputError, match=match):
        read_run(tmp_path, "image")


def test_relative_folder_from_the_repository_root(tmp_path, monkeypatch):
    root, elsewhere = tmp_path / "repo", tmp_path / "repo" / "notebooks"
    elsewhere.mkdir(parents=True)
    write_run(root / "runs" / "quick", "image")
    monkeypatch.setattr(run_json, "REPO_ROOT", root)
    monkeypatch.chdir(elsewhere)
    assert find_run_folder("runs/quick") == root / "runs" / "quick"
    assert read_run(find_run_folder("runs/quick"), "image")["job"] == "image"
    (elsewhere / "runs" / "quick").mkdir(parents=True)  # a folder that exists where the user is wins
    assert find_run_folder("runs/quick").resolve() == (elsewhere / "runs" / "quick").resolve()
    assert find_run_folder("runs/none") == run_json.Path("runs/none")  # not found anywhere: as given, for the error
