"""The package's shape: no import cycles, and every command lives in ``loftr_kd.cli``."""

from __future__ import annotations

import ast
from importlib import metadata
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _modules() -> dict[str, Path]:
    modules = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def import_graph() -> dict[str, set[str]]:
    """Module -> package modules it imports (anywhere in the file, lazy imports and code under
    ``if __name__ == "__main__":`` included: a module-level shim that runs a command is an arrow too)."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parent + ([node.module] if node.module else []))
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles_inside_the_package():
    graph = import_graph()
    assert "loftr_kd.models.fast_backbone" in graph["loftr_kd.models.backbone"]  # the graph sees imports
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_command_lives_in_cli():
    scripts = {
        e.name: e.value
        for e in metadata.distribution("loftr-kd").entry_points
        if e.group == "console_scripts"
    }
    assert len(scripts) >= 10
    outside = {name: target for name, target in scripts.items() if not target.startswith("loftr_kd.cli.")}
    assert outside == {}
    graph = import_graph()
    library = [m for m in graph if not m.startswith("loftr_kd.cli")]
    # Library code never reaches into the commands.
    assert {m: sorted(t for t in graph[m] if t.startswith("loftr_kd.cli")) for m in library} == {
        m: [] for m in library
    }


def test_training_knows_nothing_of_the_search():
    """``train()`` drives a sweep's trial through the hook its config builds (``search._target_``), and
    only the command layer talks to the Optuna sweeper (its private modules included)."""
    graph = import_graph()
    assert graph["loftr_kd.train"] and not {
        t for t in graph["loftr_kd.train"] if t == "loftr_kd.search" or t.startswith("loftr_kd.search.")
    }
    sweeper_users = set()
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            modules = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            if any(m.startswith("hydra_plugins") for m in modules):
                sweeper_users.add(name)
    assert sweeper_users == {"loftr_kd.cli.search_sweeper"}


def test_architecture_table_names_every_module():
    """docs/ARCHITECTURE.md's tables and the tree agree (``loftr_kd.pkg.{a,b}`` rows name several)."""
    import re

    doc = (SRC.parent / "docs" / "ARCHITECTURE.md").read_text()
    groups = {
        (pkg, leaf.strip())
        for pkg, leaves in re.findall(r"`(loftr_kd[\w.]*)\.\{([^}]*)\}`", doc)
        for leaf in leaves.split(",")
    }
    shared_row = re.search(r"\| `loftr_kd\.config` /([^|]*)\|", doc)
    named = (
        {f"loftr_kd.{leaf}" for leaf in re.findall(r"`(\w+)`", shared_row.group(1))} if shared_row else set()
    )
    missing = []
    for module in _modules():
        pkg, _, leaf = module.rpartition(".")
        if module.count(".") == 0 or (SRC / Path(*module.split("."))).is_dir():
            continue  # the packages themselves
        if f"`{module}`" not in doc and (pkg, leaf) not in groups and module not in named:
            missing.append(module)
    assert missing == []


def test_library_modules_have_no_main_blocks():
    """Commands live in ``loftr_kd.cli``: no library module doubles as a script."""
    shims = []
    for name, path in _modules().items():
        if name.startswith("loftr_kd.cli"):
            continue
        tree = ast.parse(path.read_text())
        if any(isinstance(n, ast.If) and "__main__" in ast.unparse(n.test) for n in tree.body):
            shims.append(name)
    assert shims == []


def test_no_import_cycles_between_the_packages():
    """Collapsed to ``loftr_kd.<package>``, the arrows still go one way (no arrow back up a layer)."""
    packages: dict[str, set[str]] = {}
    for name, targets in import_graph().items():
        top = ".".join(name.split(".")[:2])
        packages.setdefault(top, set()).update(".".join(t.split(".")[:2]) for t in targets)
    for top, targets in packages.items():
        targets.discard(top)
    assert cycles(packages) == []
