"""The layout's boundaries: the core never imports an adapter at module level; flows stay pure.

Core: everything in flowvi/ outside the adapters. Adapters (leaves): flowvi/numpyro/, flowvi/__main__.py,
flowvi/cli/, flowvi/arviz.py, flowvi/plots.py. See shared/design.md, "Layers".
"""

import ast
import pathlib
import subprocess
import sys

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "flowvi"
ADAPTERS = ("flowvi.numpyro", "flowvi.cli", "flowvi.arviz", "flowvi.plots", "flowvi.__main__")
HEAVY = ("numpyro", "arviz", "matplotlib")


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_adapter(name: str) -> bool:
    return any(name == a or name.startswith(a + ".") for a in ADAPTERS)


def imports(path: pathlib.Path, top_level_only: bool) -> list[tuple[str, int]]:
    """Absolute module names imported by `path` (with line numbers); module level only when asked."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, node.lineno))
            # `from flowvi import numpyro` imports the submodule flowvi.numpyro.
            if node.module == "flowvi":
                found += [(f"flowvi.{alias.name}", node.lineno) for alias in node.names]
    return found


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_the_scan_sees_the_whole_package():
    names = {module_name(p) for p in SOURCES}
    assert {"flowvi.reverse_kl", "flowvi.numpyro.target", "flowvi.cli.main", "flowvi.arviz"} <= names


@pytest.mark.parametrize("path", [p for p in SOURCES if not is_adapter(module_name(p))],
                         ids=lambda p: module_name(p))
def test_core_modules_import_no_adapter_at_module_level(path):
    bad = [(name, line) for name, line in imports(path, top_level_only=True)
           if is_adapter(name) or name.split(".")[0] in HEAVY]
    assert not bad, f"{module_name(path)} imports an adapter or {HEAVY} at module level: {bad}"


def layer(name: str) -> str:
    """``flowvi.flows.base`` -> ``flows``; ``flowvi`` -> ``""``."""
    return (name.split(".") + [""])[1]


@pytest.mark.parametrize("path", [p for p in SOURCES if layer(module_name(p)) in ("flows", "bijectors", "nn")],
                         ids=lambda p: module_name(p))
def test_flows_and_bijectors_never_import_numpyro_arviz_or_matplotlib(path):
    bad = [(name, line) for name, line in imports(path, top_level_only=False)
           if name.split(".")[0] in HEAVY or (name.startswith("flowvi.") and
                                              layer(name) not in ("flows", "bijectors", "nn", "validation"))]
    assert not bad, f"{module_name(path)} imports outside the flow layer: {bad}"


def test_no_import_cycle_among_module_level_imports():
    graph = {module_name(p): {n for n, _ in imports(p, top_level_only=True) if n.startswith("flowvi")}
             for p in SOURCES}
    # Only edges between modules of the package (a package import counts as its __init__).
    graph = {m: {n for n in deps if n in graph and n != m} for m, deps in graph.items()}
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for n in graph[m]:
            if state.get(n) == 1 and not m.startswith(n + "."):  # a submodule importing its package is fine
                raise AssertionError(f"import cycle: {' -> '.join(stack + [m, n])}")
            if n not in state:
                visit(n, stack + [m])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [])


def test_plain_import_loads_no_adapter_and_no_heavy_library():
    code = ("import sys, flowvi, flowvi.flows; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('numpyro', 'arviz', 'matplotlib') "
            "or m in ('flowvi.plots', 'flowvi.arviz', 'flowvi.numpyro', 'flowvi.cli')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_adapters_load_on_first_attribute_access():
    code = "import flowvi; print(flowvi.numpyro.AutoFlow.__name__, flowvi.plots.losses.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["AutoFlow", "losses"]
