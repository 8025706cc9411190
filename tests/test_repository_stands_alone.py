"""A clone with nothing beside it must pass its tests and run: no test and no product code may read
a path outside the repository (the team keeps a folder beside the repository, which a user's
clone does not have).

Two guards:
- at run time, the whole suite is collected (every test module imported, every parametrisation
  computed) and every fixture body loaded under an audit hook that records each file opened or
  listed; nothing may lie beside the repository;
- in the source, no tracked or new file walks out of the repository: no `../shared`-style path,
  no `Path(__file__).parents[k]` or `.parent` chain that climbs above the repository's root.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
UP = ".."  # kept apart so this file does not match its own pattern
OUTSIDE_MARKERS = (UP + "/shared", UP + "\\shared", "waha-fixtures")
SOURCE_SUFFIXES = {".py", ".toml", ".cfg", ".ini", ".yaml", ".yml", ".sh", ".lua", ".template"}
SOURCE_NAMES = {"Makefile", "Dockerfile", "compose.yaml", ".env.example"}

# Runs in a child: an audit hook notes every path opened or listed, then pytest collects the
# suite and the WAHA fixtures are all loaded. The child prints what it saw as JSON.
AUDIT = r"""
import json, os, sys

seen = set()

def hook(event, args):
    if event in ("open", "os.listdir", "os.scandir") and args and isinstance(args[0], (str, bytes)):
        path = os.fsdecode(args[0])
        seen.add(os.path.abspath(path))

sys.addaudithook(hook)
import pytest

code = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", "tests"])
from tests.support.waha import fixture_names, load_fixture

for name in fixture_names() + ["hmac-test-vector.json"]:
    load_fixture(name)
print("AUDIT" + json.dumps({"code": int(code), "seen": sorted(seen)}))
"""


def beside_the_repository(path: Path) -> bool:
    """In the repository's parent folder but not in the repository (nor Python's own dirs)."""
    parent = ROOT.parent
    if not path.is_relative_to(parent) or path.is_relative_to(ROOT):
        return False
    first = path.relative_to(parent).parts[:1]
    if not first or first[0].startswith("."):
        return False  # the parent itself, or a hidden tool folder such as ~/.cache
    python_dirs = {Path(p).resolve() for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    python_dirs |= {Path(p).resolve() for p in sys.path if p and not Path(p).is_relative_to(ROOT)}
    return not any(path.is_relative_to(d) for d in python_dirs if d != parent)


def test_the_suite_reads_nothing_beside_the_repository() -> None:
    result = subprocess.run(
        [sys.executable, "-c", AUDIT],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    line = next((x for x in result.stdout.splitlines() if x.startswith("AUDIT")), None)
    assert line is not None, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(line.removeprefix("AUDIT"))
    outside = [p for p in report["seen"] if beside_the_repository(Path(p))]
    assert outside == [], f"read beside the repository: {outside}"
    assert report["code"] == 0, "collection failed:\n" + result.stdout[-3000:]
    # The guard saw the reads it is meant to judge.
    assert any(Path(p).is_relative_to(ROOT / "tests" / "fixtures" / "waha") for p in report["seen"])


def repository_files() -> list[Path]:
    """The repository's source files: tracked and new ones (git), or, in a copy that is not a
    git checkout (an unpacked archive), every file outside ignored and hidden folders."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if listed.returncode == 0:
        files = [ROOT / name for name in listed.stdout.splitlines()]
    else:
        skipped = {"var", "build", "dist", "__pycache__"}
        files = [
            f
            for f in ROOT.rglob("*")
            if not any(
                part.startswith(".") or part in skipped or part.endswith(".egg-info")
                for part in f.relative_to(ROOT).parts[:-1]
            )
        ]
    return [
        f
        for f in files
        if f.is_file()
        and (f.suffix in SOURCE_SUFFIXES or f.name in SOURCE_NAMES or ".ci" in f.parts)
    ]


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def escapes_in_python(relative: Path, source: str) -> list[str]:
    """Paths built from `__file__` that climb above the root, and `../shared`-like strings, in
    the source of the repository's file `relative`."""
    tree = ast.parse(source, str(relative))
    depth = len(relative.parts)  # parents[depth - 1] is the repository's root
    docstrings = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        where = f"{relative}:{getattr(node, 'lineno', '?')}"
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings
            and any(marker in node.value for marker in OUTSIDE_MARKERS)
        ):
            found.append(f"{where}: {node.value!r}")
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "parents"
            and isinstance(node.slice, ast.Constant)
            and isinstance(node.slice.value, int)
            and "__file__" in ast.unparse(node.value)
            and node.slice.value >= depth
        ):
            found.append(f"{where}: {ast.unparse(node)}")
        if isinstance(node, ast.Attribute) and node.attr == "parent":
            chain = 0
            inner: ast.expr = node
            while isinstance(inner, ast.Attribute) and inner.attr == "parent":
                chain, inner = chain + 1, inner.value
            if "__file__" in ast.unparse(inner) and chain > depth:
                found.append(f"{where}: {ast.unparse(node)}")
        if isinstance(node, ast.Call):  # os.path.join(here, "..", "..", "shared")
            parts = [a.value for a in node.args if isinstance(a, ast.Constant)]
            if UP in parts and "shared" in parts[parts.index(UP) :]:
                found.append(f"{where}: {ast.unparse(node)}")
    return found


def escapes_in_text(path: Path) -> list[str]:
    found = []
    for number, line in enumerate(path.read_text("utf-8", errors="replace").splitlines(), 1):
        if line.lstrip().startswith("#"):
            continue
        if any(marker in line for marker in OUTSIDE_MARKERS):
            found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    return found


def test_no_source_walks_out_of_the_repository() -> None:
    files = repository_files()
    assert ROOT / "Makefile" in files and ROOT / "tests" / "support" / "waha.py" in files
    found: list[str] = []
    for path in files:
        if path == Path(__file__).resolve():
            continue
        if path.suffix == ".py":
            found += escapes_in_python(path.relative_to(ROOT), path.read_text("utf-8"))
        else:
            found += escapes_in_text(path)
    assert found == [], "paths outside the repository:\n" + "\n".join(found)


def test_the_source_check_sees_the_escapes_it_forbids() -> None:
    # The check against known escapes (and known non-escapes), as if each line were in
    # tests/support/ (three levels: parents[2] is the root), so a mistake in it cannot pass.
    samples = {
        'A = Path(__file__).resolve().parents[3] / "shared"': 1,
        "B = Path(__file__).resolve().parent.parent.parent.parent": 1,
        'C = os.path.join(HERE, "..", "shared", "x")': 1,
        'D = "../shared/waha-fixtures/message-text.json"': 1,
        'E = Path(__file__).resolve().parents[2] / "tests"': 0,
        "F = Path(__file__).resolve().parent.parent.parent": 0,
        'G = tmp_path.parents[5] / "x"': 0,
        '"""Docstrings may name ../shared/waha-fixtures as the origin of a copy."""': 0,
    }
    for sample, expected in samples.items():
        found = escapes_in_python(Path("tests/support/probe.py"), sample + "\n")
        assert len(found) == expected, (sample, found)


# --- what a fresh clone installs ---------------------------------------------------------------
PRODUCT = ("gateway", "worker", "shared", "engine", "api", "wsm")


def declared_distributions(extras: tuple[str, ...] = ()) -> set[str]:
    """The distributions `pip install -e '.[extras]'` brings: pyproject's requirements and,
    through the installed metadata, everything they require in turn."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]
    wanted = [Requirement(r) for r in project["dependencies"]]
    for extra in extras:
        wanted += [Requirement(r) for r in project["optional-dependencies"][extra]]
    seen: set[tuple[str, frozenset[str]]] = set()
    names: set[str] = set()
    while wanted:
        requirement = wanted.pop()
        key = (canonicalize_name(requirement.name), frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        names.add(key[0])
        try:
            requires = importlib.metadata.requires(requirement.name) or []
        except importlib.metadata.PackageNotFoundError:
            continue  # not installed here: the import check below says so
        for child in map(Requirement, requires):
            extras_asked = requirement.extras or {""}
            if child.marker is None or any(
                child.marker.evaluate({"extra": e}) for e in extras_asked
            ):
                wanted.append(child)
    return names


def third_party_imports(path: Path) -> set[str]:
    """Top-level modules a file imports unconditionally (not under `try: … except ImportError`
    nor `if TYPE_CHECKING:`), other than the standard library and the project's own."""
    found: set[str] = set()
    own = {*PRODUCT, "tests", "bench"}

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Try) and any(
            isinstance(h.type, ast.Name) and h.type.id in {"ImportError", "ModuleNotFoundError"}
            for h in node.handlers
        ):
            return
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text("utf-8"), str(path)))
    return {m for m in found if m not in sys.stdlib_module_names and m not in own}


def undeclared_imports(folders: tuple[str, ...], extras: tuple[str, ...]) -> list[str]:
    declared = declared_distributions(extras)
    providers = importlib.metadata.packages_distributions()
    missing = []
    for path in repository_files():
        if path.suffix != ".py" or path.relative_to(ROOT).parts[0] not in folders:
            continue
        for module in sorted(third_party_imports(path)):
            dists = {canonicalize_name(d) for d in providers.get(module, [])}
            if not dists & declared:
                missing.append(f"{path.relative_to(ROOT)}: {module} ({sorted(dists) or '?'})")
    return missing


def test_the_product_imports_only_what_pyproject_installs() -> None:
    # `make run` on a fresh clone installs pyproject's dependencies and nothing else.
    missing = undeclared_imports(PRODUCT, ())
    assert missing == [], "imported, not in pyproject's dependencies:\n" + "\n".join(missing)


def test_the_tests_import_only_what_pyproject_installs() -> None:
    # `make test` installs the dependencies and the `test` extra.
    missing = undeclared_imports(("tests",), ("test",))
    assert missing == [], "imported, not in pyproject (dependencies, test):\n" + "\n".join(missing)
