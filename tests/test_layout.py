"""Imports flow one way: scenes / model adapters -> activation store -> ctxsae_core -> analysis.
ctxsae_core never imports visinterp or scenes; scenes knows nothing of SAEs or of visinterp."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"ctxsae_core": {"visinterp", "scenes"}, "scenes": {"visinterp", "ctxsae_core"}}


def _imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_flow_one_way(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, package
    bad = {str(f.relative_to(ROOT)): sorted(_imported_packages(f) & FORBIDDEN[package]) for f in files}
    assert not {f: v for f, v in bad.items() if v}


def test_no_script_outside_tests_looks_like_a_test():
    tops = [d for d in ROOT.iterdir() if d.is_dir() and not d.name.startswith(".") and d.name not in ("tests", "runs")]
    stray = [p for d in tops for p in d.rglob("test_*.py")]
    assert not stray


def test_notebooks_import_and_define_nothing():
    import json

    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert notebooks
    for nb in notebooks:
        cells = json.loads(nb.read_text())["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        tree = ast.parse("\n".join(l for l in code.splitlines() if not l.startswith("%")))
        defined = [n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
        assert defined == [], f"{nb.name} defines {defined}: move them into the package"
