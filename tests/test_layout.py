"""The house rules that keep the layout readable: imports flow one way, from the plumbing
(`ctxsae_common`) through the scenes and the SAE core to `visinterp`, and inside `visinterp`
from its shared stages (inputs -> models -> harvest -> analysis -> report) to the jobs (image,
llm, coords), which never import each other, to the command line. The tests tree mirrors the
packages, scripts do not pose as tests, and notebooks only import."""

import ast
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ctxsae_common", "scenes", "ctxsae_core", "visinterp")
SHARED_STAGES = ("visinterp.inputs", "visinterp.models", "visinterp.harvest", "visinterp.analysis", "visinterp.report")
JOBS = ("visinterp.image", "visinterp.llm", "visinterp.coords")

# unit -> the units it may import (besides itself)
ALLOWED: dict[str, set[str]] = {
    "ctxsae_common": set(),
    "scenes": {"ctxsae_common"},
    "ctxsae_core": {"ctxsae_common"},
    "visinterp": set(),  # visinterp/__init__.py
}
_below = {"ctxsae_common", "scenes", "ctxsae_core"}
for _stage in SHARED_STAGES:
    ALLOWED[_stage] = set(_below)
    _below.add(_stage)
for _job in JOBS:
    ALLOWED[_job] = set(_below)
ALLOWED["visinterp.cli"] = _below | set(JOBS)


def unit_of(module: str) -> str | None:
    """The layout unit a dotted module name belongs to (the longest one that prefixes it)."""
    best = None
    for unit in ALLOWED:
        if (module == unit or module.startswith(unit + ".")) and (best is None or len(unit) > len(best)):
            best = unit
    return best


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _package_files() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def test_every_module_belongs_to_a_unit():
    assert [p for p in _package_files() if unit_of(_module_name(p)) is None] == []


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_flow_one_way(package):
    bad = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        mine = unit_of(_module_name(path))
        for name in _imports(path):
            theirs = unit_of(name)
            if theirs is not None and theirs != mine and theirs not in ALLOWED[mine]:
                bad.setdefault(str(path.relative_to(ROOT)), []).append(name)
    assert bad == {}


def test_the_rule_catches_an_upward_import():
    """The checker itself: a shared stage importing a job, a job importing another job, the core
    importing visinterp and the plumbing importing the core are all refused."""
    for mine, theirs in [("visinterp.analysis.codes", "visinterp.image.run"),
                         ("visinterp.llm.run", "visinterp.image.config"),
                         ("ctxsae_core.trainer", "visinterp.harvest.maps"),
                         ("ctxsae_common.files", "ctxsae_core.data"),
                         ("scenes.render", "ctxsae_core.axes"),
                         ("visinterp.models.causal_lm", "visinterp.harvest.tokens")]:
        assert unit_of(theirs) not in ALLOWED[unit_of(mine)], (mine, theirs)
    assert unit_of("visinterp.image.run") in ALLOWED[unit_of("visinterp.cli")]


def test_tests_mirror_the_package_tree():
    """Every test file sits in the folder of the package it tests (tests/<package path>/)."""
    stray = []
    for test in (ROOT / "tests").rglob("test_*.py"):
        folder = test.parent.relative_to(ROOT / "tests")
        if folder.parts and not (ROOT / folder).is_dir():
            stray.append(str(test.relative_to(ROOT)))
    assert stray == []


def test_no_script_outside_tests_looks_like_a_test():
    tops = [d for d in ROOT.iterdir() if d.is_dir() and not d.name.startswith(".") and d.name not in ("tests", "runs")]
    stray = [p for d in tops for p in d.rglob("test_*.py")]
    assert not stray


def test_notebooks_import_and_define_nothing():
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert notebooks
    for nb in notebooks:
        cells = json.loads(nb.read_text())["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        tree = ast.parse("\n".join(line for line in code.splitlines() if not line.startswith("%")))
        defined = [n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
        assert defined == [], f"{nb.name} defines {defined}: move them into the package"


def test_public_functions_and_classes_have_docstrings():
    """Every public function, class and method of the packages says what it does (a method
    that overrides a documented one inherits its docstring, as `inspect.getdoc` reads it)."""
    import importlib
    import inspect

    missing = []
    for path in _package_files():
        module = importlib.import_module(_module_name(path))
        for name, obj in vars(module).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            if not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            if not inspect.getdoc(obj):
                missing.append(f"{module.__name__}.{name}")
            if inspect.isclass(obj):
                for attr, member in vars(obj).items():
                    if attr.startswith("_") or not (inspect.isfunction(member) or isinstance(member, property)):
                        continue
                    if not inspect.getdoc(getattr(obj, attr)):
                        missing.append(f"{module.__name__}.{name}.{attr}")
    assert missing == []
