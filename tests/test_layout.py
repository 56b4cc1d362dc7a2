"""The layout docs/architecture.md and the README describe is the real tree, and the import
rules hold: no circle (function-local imports included), no layer crossed, no private name
imported from another module."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "client", "server", "simulations")


def modules(root: Path) -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (root / pkg).rglob("*.py") if (root / pkg).is_dir() else []:
            name = ".".join(path.relative_to(root).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = path
    return out


def imports(root: Path) -> dict[str, set[tuple[str, str | None]]]:
    """Module -> the project modules it imports, anywhere in its body: (module, name) pairs,
    name being the imported name for ``from m import name`` (None for ``import m``)."""
    mods = modules(root)

    def owner(dotted: str) -> str | None:
        while dotted and dotted not in mods:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    graph: dict[str, set[tuple[str, str | None]]] = {}
    for mod, path in mods.items():
        deps: set[tuple[str, str | None]] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps |= {(o, None) for a in node.names if (o := owner(a.name))}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for a in node.names:
                    full = owner(f"{node.module}.{a.name}")
                    if full and full != owner(node.module):  # `from pkg import module`
                        deps.add((full, None))
                    elif (o := owner(node.module)) is not None:
                        deps.add((o, a.name))
        graph[mod] = {d for d in deps if d[0] != mod}
    return graph


def cycles(graph: dict[str, set[tuple[str, str | None]]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    edges = {m: {d for d, _ in deps} for m, deps in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def test_no_import_circle_among_the_projects_modules():
    assert cycles(imports(ROOT)) == []


def test_the_circle_check_finds_a_circle_through_a_function_local_import(tmp_path):
    pkg = tmp_path / "common"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from common.b import g\n\ndef f():\n    return g()\n")
    (pkg / "b.py").write_text("def g():\n    from common.a import f  # hidden in a function\n    return f\n")
    (pkg / "c.py").write_text("from common import a\n")
    assert cycles(imports(tmp_path)) == [["common.a", "common.b"]]


def test_layers_common_never_imports_the_apps_and_the_apps_not_each_other():
    bad = []
    for mod, deps in imports(ROOT).items():
        for dep, _ in deps:
            a, b = mod.split(".")[0], dep.split(".")[0]
            if (a == "common" and b in ("client", "server", "simulations")) or {a, b} == {"client", "server"}:
                bad.append(f"{mod} -> {dep}")
    assert bad == []


def test_no_private_name_is_imported_from_another_module():
    bad = [
        f"{mod}: {dep}.{name}"
        for mod, deps in imports(ROOT).items()
        for dep, name in deps
        if name and name.startswith("_") and not name.startswith("__")
    ]
    assert bad == []


def _architecture_folders() -> list[str]:
    text = (ROOT / "docs" / "architecture.md").read_text()
    return re.findall(r"^\| `([a-z_/]+)/` \|", text, flags=re.M)


def test_architecture_lists_every_folder_and_only_real_ones():
    listed = set(_architecture_folders())
    assert listed, "docs/architecture.md lists no folder"
    assert {f for f in listed if not (ROOT / f).is_dir()} == set()
    # every package folder of the project, one level below common/ and simulations/ too
    real = {
        p.relative_to(ROOT).as_posix()
        for pkg in ("common", "simulations")
        for p in (ROOT / pkg).iterdir()
        if p.is_dir() and (p / "__init__.py").exists()
    }
    real |= {"conf", "common", "client", "server", "simulations", "benchmarks", "deploy", "docs", "tests"}
    assert real - listed == set()


def test_readme_layout_names_the_real_top_level_folders():
    block = (ROOT / "README.md").read_text().split("## Layout", 1)[1].split("```")[1]
    named = {line.split()[0].rstrip("/") for line in block.strip().splitlines() if line.strip()}
    top = {
        p.name
        for p in ROOT.iterdir()
        if p.is_dir()
        and not p.name.startswith(".")
        and p.name not in ("outputs", "multirun", "runs")
        and not p.name.endswith(".egg-info")
    }
    assert named == top


def test_common_has_at_most_six_loose_modules():
    loose = [p.name for p in (ROOT / "common").glob("*.py") if p.name != "__init__.py"]
    assert len(loose) <= 6, loose


@pytest.mark.parametrize("package", PACKAGES)
def test_no_module_cites_a_file_the_repository_does_not_hold(package):
    for path in (ROOT / package).rglob("*.py"):
        text = path.read_text()
        assert "DESIGN.md" not in text and "../shared" not in text, path


def test_no_source_file_is_hidden_by_gitignore():
    """A module the ignore rules hide is missing from every clone (a too-broad `runs/` once hid
    common/tracking/summary.py, and CI could not import the harness)."""
    import shutil
    import subprocess

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    sources = [
        str(p.relative_to(ROOT)) for pkg in (*PACKAGES, "tests", "benchmarks") for p in (ROOT / pkg).rglob("*.py")
    ]
    sources += [str(p.relative_to(ROOT)) for p in (ROOT / "conf").rglob("*.yaml")]
    found = subprocess.run(["git", "check-ignore", "--no-index", *sources], cwd=ROOT, capture_output=True, text=True)
    assert found.stdout.split() == [], f"ignored by .gitignore: {found.stdout.split()}"
