"""The house rules of the layout, checked from the code's own imports.

Owns the shape of the source tree as DESIGN.md ("Rooms") and each room's ``__init__.py``
("May import: ...") draw it: no import cycles; rooms import only downward, along the
arrows declared below as data; only the HTTP edge imports ``tornado.web``; the in-kernel
package imports nothing of the server or of the analysts' client; every room says what it
may import; and no module grows past 600 lines. Every module under ``server/`` and
``kernel_image/`` is parsed with ``ast`` (nothing is imported), so imports inside functions
count as much as those at the top.
"""

from __future__ import annotations

import ast
import configparser
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {
    "server": ROOT / "server",
    "dataexec_kernel": ROOT / "kernel_image" / "dataexec_kernel",
    "dataexec_client": ROOT / "kernel_image" / "dataexec_client",
}
MAX_LINES = 600
# Modules allowed past MAX_LINES, with why. Data tables may grow (server/config/settings.py's
# settings table, server/sql/guard.py's grammar of allowed SQL), but neither is over the
# limit today, so none is listed: an exception is added only when one really is over.
LONG_MODULES: dict[str, str] = {}

# The kernel protocol the server takes from the in-kernel package: protocol.py, the
# exceptions it raises and maps by type (errors.py) and the one implementation of an
# answer's preview and statistics (answers.py); the three are one contract.
KERNEL_PROTOCOL = {"dataexec_kernel.protocol", "dataexec_kernel.errors", "dataexec_kernel.answers"}

ROOMS = {
    *("handlers", "sessions", "kernels", "broker", "sql"),
    *("cache", "notebook", "store", "embedded", "ops"),
    "platform",
}
# The top: modules every room may stand on. ``config`` is a package (its declarations and
# its loading), but a top unit like the others, not a room; so is ``telemetry`` (the metrics
# and log lines the rooms report to; it imports nothing of the server).
TOP = {"config", "database_url", "errors", "clock", "auth", "telemetry"}
# The arrows: what each unit may import besides itself. A unit is a room folder of
# server/, a top module of server/, "protocol" (KERNEL_PROTOCOL), "kernel_package" (the rest
# of dataexec_kernel) or "client" (dataexec_client). The package root ``server`` only holds
# ``__version__`` and imports nothing (asserted below), so every unit may import it.
ALLOWED: dict[str, set[str]] = {
    # the top: app joins the handlers' routes, cli runs it (handlers/__init__: "Nothing
    # imports handlers but app"; embedded/__init__: "Used by runtime (and tests) only")
    "app": (ROOMS - {"embedded"}) | TOP | {"runtime", "protocol"},
    "cli": (ROOMS - {"handlers", "embedded"}) | TOP | {"app", "runtime", "protocol"},
    "__main__": {"cli"},
    # the one wiring module (DESIGN.md): builds every room
    "runtime": (ROOMS - {"handlers"}) | TOP | {"protocol"},
    # handlers/__init__: every room below (through runtime's services), auth, config, errors
    "handlers": (ROOMS - {"handlers", "embedded"}) | TOP | {"runtime", "protocol"},
    # sessions/__init__ (and DESIGN.md: handlers -> sessions -> {kernels, broker})
    "sessions": {"kernels", "broker", "cache", "notebook", "store", "sql"}
    | {"config", "errors", "clock", "protocol", "telemetry"},
    # broker/__init__: sql, cache, config, errors, and the kernel protocol
    "broker": {"sql", "cache", "config", "errors", "protocol", "telemetry"},
    # cache/__init__: store, config, errors, clock, and the kernel protocol
    "cache": {"store", "config", "errors", "clock", "protocol", "telemetry"},
    # notebook/__init__: errors, clock
    "notebook": {"errors", "clock"},
    "store": {"errors"},
    # kernels/__init__: config, errors, and the kernel protocol
    "kernels": {"config", "errors", "protocol"},
    "embedded": {"errors"},
    # platform/__init__: config, errors, clock (the runtime hands in what it reports)
    "platform": {"config", "errors", "clock"},
    # ops/__init__: kernels (the Docker engine client), config, errors, and the kernel
    # package it builds into images and wheels
    "ops": {"kernels", "config", "errors", "protocol", "kernel_package"},
    # sql/__init__: config, errors, and the kernel package's errors (the connection failures
    # it shares with the analysts' client)
    "sql": {"config", "errors", "protocol", "telemetry"},
    # the top modules import only below them
    "auth": {"config", "errors"},
    "config": {"errors", "database_url"},
    "database_url": set(),
    "errors": set(),
    "clock": set(),
    "telemetry": set(),
    "server": set(),
    # the in-kernel package and the analysts' client (rule (d) also checks imports by name)
    "protocol": set(),
    "kernel_package": {"protocol"},
    "client": {"kernel_package", "protocol"},
}
HTTP_EDGE = {"handlers", "app", "cli"}


@dataclass(frozen=True)
class Import:
    importer: str  # module name
    target: str  # the imported module (ours: resolved to a module we have)
    line: int
    type_checking: bool  # under ``if TYPE_CHECKING:``

    def where(self) -> str:
        return f"{module_path(self.importer)}:{self.line}"


@cache
def modules() -> dict[str, Path]:
    """Every module of the three packages, by dotted name."""
    found = {}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def module_path(name: str) -> str:
    return str(modules()[name].relative_to(ROOT))


@cache
def tree_of(name: str) -> ast.Module:
    return ast.parse(modules()[name].read_text(), filename=str(modules()[name]))


def is_package(name: str) -> bool:
    return modules()[name].name == "__init__.py"


def resolve(name: str) -> str:
    """The longest prefix of a dotted name that is one of our modules (or the name)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules():
            return ".".join(parts[:end])
    return name


def _type_checking_nodes(tree: ast.Module) -> set[int]:
    inside = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                inside |= {id(n) for n in ast.walk(child)}
    return inside


@cache
def raw_imports(name: str) -> tuple[tuple[str, int, bool], ...]:
    """(imported dotted name, line, under TYPE_CHECKING) of every import statement."""
    tree = tree_of(name)
    guarded = _type_checking_nodes(tree)
    package = name if is_package(name) else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append((alias.name, node.lineno, id(node) in guarded))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                found.append((f"{base}.{alias.name}", node.lineno, id(node) in guarded))
    return tuple(found)


def our_imports(name: str) -> list[Import]:
    """The imports of ``name`` that reach a module of the three packages."""
    return [
        Import(name, resolve(dotted), line, guarded)
        for dotted, line, guarded in raw_imports(name)
        if dotted.split(".")[0] in PACKAGES
    ]


def unit(name: str) -> str:
    """The room, top module or kernel-side part a module belongs to."""
    parts = name.split(".")
    if parts[0] == "server":
        return "server" if len(parts) == 1 else parts[1]
    if name in KERNEL_PROTOCOL:
        return "protocol"
    return "kernel_package" if parts[0] == "dataexec_kernel" else "client"


# --- (a) no cycles -------------------------------------------------------------------------


def test_every_import_resolves_to_a_module_of_ours() -> None:
    unknown = [
        f"{i.where()} imports {i.target}"
        for name in modules()
        for i in our_imports(name)
        if i.target not in modules()
    ]
    assert not unknown, "\n".join(unknown)


def test_the_import_graph_has_no_cycle() -> None:
    # Imports under TYPE_CHECKING are left out: they never run, and naming a type of a
    # module that imports you is how a cycle is avoided. Imports inside functions count.
    # Importing a.b also runs a/__init__.py; those implicit parent edges are not drawn
    # (a package's __init__ may import its own modules lazily).
    graph: dict[str, dict[str, int]] = {name: {} for name in modules()}
    for name in modules():
        for i in our_imports(name):
            if not i.type_checking and i.target in modules() and i.target != name:
                graph[name].setdefault(i.target, i.line)
    cycles = [component for component in strongly_connected(graph) if len(component) > 1]
    described = [
        " -> ".join(f"{m} ({module_path(m)}:{graph[m][n]})" for m, n in cycle_path(graph, c))
        for c in cycles
    ]
    assert not described, "\n".join(described)


def strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's strongly connected components, without recursion."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(component)
    return components


def test_the_cycle_finder_finds_a_cycle_and_nothing_else() -> None:
    graph = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3}, "d": {"a": 4}, "e": {}}
    components = [sorted(c) for c in strongly_connected(graph) if len(c) > 1]
    assert components == [["a", "b", "c"]]
    assert cycle_path(graph, components[0]) == [("a", "b"), ("b", "c"), ("c", "a")]


def cycle_path(graph: dict[str, dict[str, int]], component: list[str]) -> list[tuple[str, str]]:
    """One cycle through a component, as (importer, imported) pairs."""
    members = set(component)
    start = min(component)
    path, node, seen = [], start, {start}
    while True:
        following = min(t for t in graph[node] if t in members)
        path.append((node, following))
        if following in seen:
            return path
        seen.add(following)
        node = following


# --- (b) arrows point down -----------------------------------------------------------------


def test_the_arrows_name_every_room_and_top_module_there_is() -> None:
    units = {unit(name) for name in modules()}
    assert units <= set(ALLOWED), f"units without arrows: {units - set(ALLOWED)}"
    folders = {p.parent.name for p in (ROOT / "server").glob("*/__init__.py")}
    assert ROOMS == folders - TOP


def test_the_package_root_imports_nothing_so_anyone_may_import_it() -> None:
    assert raw_imports("server") == ()


def test_rooms_import_only_downward() -> None:
    wrong = []
    for name in modules():
        source = unit(name)
        for i in our_imports(name):
            target = unit(i.target)
            if target in (source, "server") or target in ALLOWED[source]:
                continue
            wrong.append(f"{i.where()}: {name} imports {i.target} ({source} -> {target})")
    assert not wrong, "\n".join(wrong)


def test_only_app_imports_the_handlers() -> None:
    importers = {
        unit(name) for name in modules() for i in our_imports(name) if unit(i.target) == "handlers"
    }
    assert importers <= {"app", "handlers"}


# --- (c) tornado.web only at the HTTP edge -------------------------------------------------


def test_nothing_below_the_http_edge_imports_tornado_web() -> None:
    found = []
    for name in modules():
        if unit(name) in HTTP_EDGE:
            continue
        for dotted, line, _ in raw_imports(name):
            if dotted == "tornado.web" or dotted.startswith("tornado.web."):
                found.append(f"{module_path(name)}:{line} imports {dotted}")
        for node in ast.walk(tree_of(name)):
            if isinstance(node, ast.Attribute) and ast.unparse(node).startswith("tornado.web"):
                found.append(f"{module_path(name)}:{node.lineno} uses {ast.unparse(node)}")
    assert not found, "\n".join(found)


# --- (d) the in-kernel package stands alone ------------------------------------------------


def _forbidden(dotted: str, packages: tuple[str, ...]) -> bool:
    return dotted.split(".")[0] in packages


def _code_strings(name: str) -> list[tuple[str, int]]:
    """Every string constant of a module that is not a docstring, with its line."""
    tree = tree_of(name)
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    return [
        (node.value, node.lineno)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    ]


MODULE_NAME = re.compile(r"^(server|dataexec_client)(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def test_the_kernel_package_imports_nothing_of_the_server_or_the_client() -> None:
    found = []
    for name in modules():
        if unit(name) not in ("protocol", "kernel_package"):
            continue
        for dotted, line, _ in raw_imports(name):
            if _forbidden(dotted, ("server", "dataexec_client")):
                found.append(f"{module_path(name)}:{line} imports {dotted}")
    assert not found, "\n".join(found)


def test_the_kernel_package_names_the_client_only_for_its_one_lazy_plug_in() -> None:
    # dataexec_kernel/helpers.py finds the analysts' client by name (importlib), when it is
    # installed; that is the one allowed mention. Any other module name of the server or the
    # client in the kernel package's code is an import by another door.
    mentions = [
        f"{module_path(name)}:{line} names {value!r}"
        for name in modules()
        if unit(name) in ("protocol", "kernel_package")
        for value, line in _code_strings(name)
        if MODULE_NAME.match(value)
    ]
    helpers = tree_of("dataexec_kernel.helpers")
    plug_in = [
        node
        for node in ast.walk(helpers)
        if isinstance(node, ast.Assign)
        and ast.unparse(node) == "CLIENT_PACKAGE = 'dataexec_client'"
    ]
    assert len(plug_in) == 1
    allowed = (
        f"{module_path('dataexec_kernel.helpers')}:{plug_in[0].lineno} names 'dataexec_client'"
    )
    assert mentions == [allowed], "\n".join(mentions)
    calls = [
        node
        for node in ast.walk(helpers)
        if isinstance(node, ast.Call) and ast.unparse(node.func).endswith("import_module")
    ]
    assert [ast.unparse(c) for c in calls] == ["importlib.import_module(CLIENT_PACKAGE)"]


def test_the_analysts_client_imports_nothing_of_the_server() -> None:
    found = [
        f"{module_path(name)}:{line} imports {dotted}"
        for name in modules()
        if unit(name) == "client"
        for dotted, line, _ in raw_imports(name)
        if _forbidden(dotted, ("server",))
    ]
    found += [
        f"{module_path(name)}:{line} names {value!r}"
        for name in modules()
        if unit(name) == "client"
        for value, line in _code_strings(name)
        if MODULE_NAME.match(value) and value.split(".")[0] == "server"
    ]
    assert not found, "\n".join(found)


# --- (e) every room says what it may import ------------------------------------------------


def test_every_room_says_what_it_may_import() -> None:
    missing = []
    for init in sorted((ROOT / "server").glob("*/__init__.py")):
        docstring = ast.get_docstring(ast.parse(init.read_text())) or ""
        if "May import" not in docstring:
            missing.append(str(init.relative_to(ROOT)))
    assert not missing, "\n".join(missing)


# --- (f) modules stay small ----------------------------------------------------------------


def test_no_module_exceeds_600_lines() -> None:
    long = {}
    for name, path in modules().items():
        lines = len(path.read_text().splitlines())
        if lines > MAX_LINES and module_path(name) not in LONG_MODULES:
            long[module_path(name)] = lines
    assert not long, "\n".join(f"{path}: {n} lines" for path, n in long.items())


def test_every_package_is_installed_by_setup_cfg() -> None:
    """A package missing from setup.cfg works in the editable checkout and is absent from a
    built wheel or image (``pip install .``)."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    listed = set(config["options"]["packages"].split())
    found = {name for name in modules() if is_package(name)}
    assert found - listed == set()
