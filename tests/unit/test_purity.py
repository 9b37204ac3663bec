"""The pure core does no I/O and reads no clock or environment (STYLE.md).

The pure core is every module in geo/ and these in dispatch/: model, codec, errors,
lifecycle, policy, dispatcher, records, roster, timers, effects, wire, coverage,
config, moves. This test reads their source with `ast`, follows their imports of project
modules transitively (a module's parent packages included, since importing
dispatch.model runs dispatch/__init__.py), and fails if any of them imports asyncio,
redis, aiomqtt, aiohttp, time or socket, or touches os.environ / os.getenv. config.py
gets its environment as a mapping from the CLI.

Imports under ``if TYPE_CHECKING:`` are not followed and not counted: they never
run. The layering checks (geo never imports dispatch; neither imports simulators or
benchmarks) count them too, since a type-only import still couples the code.

The seams (STYLE.md section 12) are checked here too: only the composition root imports
the cluster (the web layer reads and acts through the ports); no module uses another
module's private names; and the project's modules import each other without cycles.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PURE_DISPATCH = (
    "model",
    "codec",
    "errors",
    "lifecycle",
    "policy",
    "dispatcher",
    "duplicates",
    "config",
    "effects",
    "coverage",
    "records",
    "roster",
    "timers",
    "wire",
    "moves",
)
FORBIDDEN_MODULES = frozenset({"asyncio", "redis", "aiomqtt", "aiohttp", "time", "socket"})
ENV_NAMES = frozenset({"environ", "environb", "getenv", "getenvb", "putenv", "unsetenv"})


@dataclass(frozen=True)
class Found:
    module: str  # absolute dotted name of what is imported or used
    line: int
    runtime: bool  # False when under `if TYPE_CHECKING:`


def module_path(root: Path, name: str) -> Path | None:
    """The source file of a project module, or None if it is not one of ours."""
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_name(root: Path, path: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST, runtime: bool = True) -> Iterator[tuple[ast.AST, bool]]:
    """Every node with whether it runs at import/run time (not TYPE_CHECKING-only)."""
    yield node, runtime
    if isinstance(node, ast.If) and _is_type_checking(node.test):
        yield node.test, runtime
        for child in node.body:
            yield from _walk(child, False)
        for child in node.orelse:
            yield from _walk(child, runtime)
        return
    for sub in ast.iter_child_nodes(node):
        yield from _walk(sub, runtime)


def scan(root: Path, path: Path) -> tuple[list[Found], list[Found]]:
    """(imports, environment uses) of one source file.

    Imports are absolute module names; ``from pkg import sub`` yields pkg.sub when
    that is a project module, else pkg. Environment uses are reported as
    os.environ, os.getenv, ...
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    this = module_name(root, path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    imports: list[Found] = []
    env: list[Found] = []
    os_aliases: set[str] = set()
    for node, runtime in _walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                imports.append(Found(alias.name, node.lineno, runtime))
                if alias.name == "os":
                    os_aliases.add(alias.asname or "os")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                anchor = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*anchor, node.module] if node.module else anchor)
            else:
                base = node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                target = sub if module_path(root, sub) is not None else base
                imports.append(Found(target, node.lineno, runtime))
                if base == "os" and alias.name in ENV_NAMES:
                    env.append(Found(f"os.{alias.name}", node.lineno, runtime))
        elif (
            isinstance(node, ast.Attribute)
            and node.attr in ENV_NAMES
            and isinstance(node.value, ast.Name)
            and node.value.id in os_aliases | {"os"}
        ):
            env.append(Found(f"os.{node.attr}", node.lineno, runtime))
    return imports, env


def _parents(name: str) -> Iterator[str]:
    parts = name.split(".")
    for i in range(1, len(parts)):
        yield ".".join(parts[:i])


def purity_violations(root: Path, modules: Iterable[str]) -> list[str]:
    """What the given modules, and the project modules they import, must not do."""
    via: dict[str, str | None] = {}
    queue: list[str] = []

    def visit(name: str, parent: str | None) -> None:
        if name not in via and module_path(root, name) is not None:
            via[name] = parent
            queue.append(name)

    for name in modules:
        visit(name, None)
    problems: list[str] = []
    while queue:
        name = queue.pop(0)
        path = module_path(root, name)
        assert path is not None
        for parent in _parents(name):
            visit(parent, name)
        imports, env = scan(root, path)
        chain = [name]
        while (up := via[chain[-1]]) is not None:
            chain.append(up)
        where = " <- ".join(chain)
        for imp in imports:
            if not imp.runtime:
                continue
            if imp.module.split(".")[0] in FORBIDDEN_MODULES:
                problems.append(
                    f"{path.relative_to(root)}:{imp.line}: imports {imp.module} ({where})"
                )
            visit(imp.module, name)
        for use in env:
            if use.runtime:
                problems.append(f"{path.relative_to(root)}:{use.line}: uses {use.module} ({where})")
    return problems


def pure_modules(root: Path) -> list[str]:
    """The pure core's modules that exist so far."""
    names = [module_name(root, p) for p in sorted((root / "geo").rglob("*.py"))]
    names += [f"dispatch.{m}" for m in PURE_DISPATCH if (root / "dispatch" / f"{m}.py").is_file()]
    return names


def layering_violations(root: Path, package: str, banned: Iterable[str]) -> list[str]:
    """Every import (type-only ones too) from package/ of a banned top-level package."""
    banned = frozenset(banned)
    problems = []
    for path in sorted((root / package).rglob("*.py")):
        imports, _ = scan(root, path)
        problems += [
            f"{path.relative_to(root)}:{imp.line}: imports {imp.module}"
            for imp in imports
            if imp.module.split(".")[0] in banned
        ]
    return problems


# --- the project ---------------------------------------------------------------------


def test_pure_core_is_there() -> None:
    # Guards the tests below against checking nothing after a move or rename.
    real = [m for m in pure_modules(ROOT) if m not in ("geo", "dispatch")]
    assert real, f"none of geo/*.py or dispatch/{{{','.join(PURE_DISPATCH)}}}.py exists"


def test_pure_core_does_no_io_and_reads_no_environment() -> None:
    problems = purity_violations(ROOT, pure_modules(ROOT))
    assert not problems, "the pure core must stay pure:\n" + "\n".join(problems)


def test_geo_does_not_import_dispatch() -> None:
    problems = layering_violations(ROOT, "geo", {"dispatch"})
    assert not problems, "geo/ is a library below dispatch/:\n" + "\n".join(problems)


# The command line is the composition root: its `demo` subcommand starts the simulators
# (imported inside that subcommand only). Nothing else in the engine may.
ENTRY_POINTS = frozenset({"dispatch/cli.py"})


@pytest.mark.parametrize("package", ["dispatch", "geo"])
def test_engine_does_not_import_simulators_or_benchmarks(package: str) -> None:
    problems = [
        p
        for p in layering_violations(ROOT, package, {"simulators", "benchmarks"})
        if not (p.split(":")[0] in ENTRY_POINTS and "imports simulators" in p)
    ]
    assert not problems, "the engine must not depend on its test tools:\n" + "\n".join(problems)


# Several instances are a set of collaborators plugged in by the composition root; the
# web layer still branches on it (issue 13 leaves that to its owner), nothing else may.
CLUSTER_IMPORTERS = frozenset({"dispatch/wiring.py"})
PACKAGES = ("dispatch", "geo", "simulators", "benchmarks")
# Reaches into a third-party object's privates, each with its reason; a new one needs one.
PRIVATE_REACHES_ALLOWED = frozenset(
    {
        # aiomqtt keeps paho's client and its message queue private; the bus uses both.
        ("dispatch/bus.py", "client._client"),
        ("dispatch/bus.py", "client._queue"),
        # The bus replaces aiomqtt's socket reader (one packet per wake, issue 16): it
        # reports a broken link the way that reader does, and hands paho a socket whose
        # small reads come from one large one (paho has no public way to set it).
        ("dispatch/bus.py", "client._disconnected"),
        ("dispatch/bus.py", "paho._sock"),
        # paho keeps 20 QoS 1 messages in flight whatever the broker's CONNACK allows, and
        # its setter refuses once connected: the bus sets it at the CONNACK.
        ("dispatch/bus.py", "paho._max_inflight_messages"),
        # paho decodes every PUBACK into new objects, then walks every unacknowledged
        # message (quadratic in a burst; issue 16): the bus takes a PUBACK that carries only
        # its packet id as paho's handler would, and skips the walk when none is held back.
        ("dispatch/bus.py", "paho._handle_pubackcomp"),
        ("dispatch/bus.py", "paho._in_packet"),
        ("dispatch/bus.py", "paho._out_message_mutex"),
        ("dispatch/bus.py", "paho._out_messages"),
        ("dispatch/bus.py", "paho._do_on_publish"),
        ("dispatch/bus.py", "paho._update_inflight"),
        ("dispatch/bus.py", "paho._inflight_messages"),
        # paho reads every packet, a PUBACK too, in three or four recv calls and a dozen
        # steps (issue 16): at a packet boundary the bus takes the whole PUBACKs it has
        # read ahead, and notes the time bytes came in, which paho's keepalive reads.
        ("dispatch/bus.py", "paho._packet_read"),
        ("dispatch/bus.py", "paho._msgtime_mutex"),
        ("dispatch/bus.py", "paho._last_bytes_received"),
        # paho's publish validates, logs, makes a lock and a condition per QoS 1 message
        # and packs it field by field (issue 16): the bus queues its own alerts,
        # assignments and states with paho's own bookkeeping (its limits, packet ids and
        # packet queue).
        ("dispatch/bus.py", "paho._max_queued_messages"),
        ("dispatch/bus.py", "paho._mid_generate"),
        ("dispatch/bus.py", "paho._packet_queue"),
    }
)


def importers_of(root: Path, target: str, packages: Iterable[str]) -> list[str]:
    """Every file in ``packages`` importing ``target`` or a module below it (type-only too)."""
    found = []
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            imports, _ = scan(root, path)
            for imp in imports:
                if imp.module == target or imp.module.startswith(target + "."):
                    found.append(f"{path.relative_to(root)}:{imp.line}")
    return found


def private_reaches(root: Path, packages: Iterable[str]) -> list[tuple[str, int, str]]:
    """(file, line, what) for every use of another module's or object's private name.

    ``from x import _y`` of a project module, and ``name._y`` where ``name`` is not
    ``self`` or ``cls`` (an imported module, another object). Dunders are not private.
    """
    ours = frozenset(packages)
    found: list[tuple[str, int, str]] = []
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            rel = str(path.relative_to(root))
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=rel)
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and (
                    node.level or (node.module or "").split(".")[0] in ours
                ):
                    found += [
                        (rel, node.lineno, f"from {node.module or '.'} import {alias.name}")
                        for alias in node.names
                        if _is_private(alias.name)
                    ]
                elif (
                    isinstance(node, ast.Attribute)
                    and _is_private(node.attr)
                    and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
                ):
                    found.append((rel, node.lineno, ast.unparse(node)))
    return found


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def import_cycles(root: Path, packages: Iterable[str]) -> list[list[str]]:
    """The project's import cycles (type-only and function-level imports count), each as
    the sorted modules of one strongly connected component of the import graph."""
    graph: dict[str, set[str]] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            name = module_name(root, path)
            imports, _ = scan(root, path)
            graph.setdefault(name, set()).update(
                imp.module
                for imp in imports
                if imp.module != name and module_path(root, imp.module) is not None
            )
    # Tarjan's algorithm, iteratively (no recursion limit to meet).
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    cycles: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph.get(nxt, ())))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
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
                    if len(component) > 1:
                        cycles.append(sorted(component))
    return cycles


def test_only_the_composition_root_imports_the_cluster() -> None:
    found = importers_of(ROOT, "dispatch.cluster", PACKAGES)
    problems = [f for f in found if f.split(":")[0] not in CLUSTER_IMPORTERS]
    assert not problems, (
        "several instances are plugged in by dispatch/wiring.py through the ports of "
        "dispatch/ports.py; nothing else imports dispatch.cluster:\n" + "\n".join(problems)
    )
    assert any(f.startswith("dispatch/wiring.py:") for f in found), "nothing wires the cluster"


# Effects are domain values; only the shell turns them into topics and JSON (STYLE.md 12).
# The bus and the service worker's replies send `Publish` messages, and so does a location
# gateway (its batches and rejections, no effects of the core); only the engine renders.
# A push worker reads the engine's alerts back off the wire (`read_alert`), in the shell.
WIRE_IMPORTERS = frozenset(
    {
        "dispatch/engine.py",
        "dispatch/bus.py",
        "dispatch/push_routes.py",
        "dispatch/gateway.py",
        "dispatch/push_worker.py",
    }
)


def test_only_the_shell_knows_the_wire() -> None:
    found = importers_of(ROOT, "dispatch.wire", PACKAGES)
    problems = [f for f in found if f.split(":")[0] not in WIRE_IMPORTERS]
    assert not problems, (
        "the core returns SendAlert, SendAssignment and StateChanged; dispatch/engine.py "
        "alone renders them with dispatch/wire.py:\n" + "\n".join(problems)
    )


def test_no_module_uses_another_modules_private_names() -> None:
    problems = [
        f"{file}:{line}: {what}"
        for file, line, what in private_reaches(ROOT, PACKAGES)
        if (file, what) not in PRIVATE_REACHES_ALLOWED
    ]
    assert not problems, (
        "a private name used from outside its module is a missing seam: add the public "
        "call (STYLE.md section 12):\n" + "\n".join(problems)
    )


def test_no_import_cycles() -> None:
    cycles = import_cycles(ROOT, PACKAGES)
    assert not cycles, "modules that import each other, directly or around a loop:\n" + (
        "\n".join(" <-> ".join(c) for c in cycles)
    )


# --- the checker itself ----------------------------------------------------------------


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import asyncio\n", "imports asyncio"),
        ("import redis.asyncio as r\n", "imports redis.asyncio"),
        ("from time import monotonic\n", "imports time"),
        ("from socket import socket\n", "imports socket"),
        ("import os\nx = os.environ['X']\n", "uses os.environ"),
        ("import os\nx = os.getenv('X')\n", "uses os.getenv"),
        ("import os as o\nx = o.environ.get('X')\n", "uses os.environ"),
        ("from os import environ\n", "uses os.environ"),
        ("def f():\n    import aiomqtt\n", "imports aiomqtt"),
    ],
)
def test_checker_finds(tmp_path: Path, source: str, expected: str) -> None:
    root = _tree(tmp_path, {"pkg/__init__.py": "", "pkg/mod.py": source})
    problems = purity_violations(root, ["pkg.mod"])
    assert len(problems) == 1
    assert expected in problems[0]


def test_checker_follows_imports_and_parent_packages(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "pkg/__init__.py": "import aiohttp\n",
            "pkg/a.py": "from pkg import b\n",
            "pkg/b.py": "from . import c\n",
            "pkg/c.py": "import time\n",
        },
    )
    problems = sorted(purity_violations(root, ["pkg.a"]))
    assert len(problems) == 2
    assert problems[0].startswith("pkg/__init__.py:1: imports aiohttp")
    assert problems[1] == "pkg/c.py:1: imports time (pkg.c <- pkg.b <- pkg.a)"


def test_checker_allows_pure_code(tmp_path: Path) -> None:
    source = (
        "from __future__ import annotations\n"
        "import math\n"
        "from collections.abc import Mapping\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    import asyncio\n"
        "def load(env: Mapping[str, str]) -> str:\n"
        "    return env.get('X', str(math.pi))\n"
    )
    root = _tree(tmp_path, {"pkg/__init__.py": "", "pkg/mod.py": source})
    assert purity_violations(root, ["pkg.mod"]) == []


def test_layering_counts_type_only_imports(tmp_path: Path) -> None:
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from dispatch import model\n"
    root = _tree(tmp_path, {"geo/__init__.py": "", "geo/index.py": source})
    assert layering_violations(root, "geo", {"dispatch"}) == ["geo/index.py:3: imports dispatch"]


def test_private_reaches_are_found(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "_x = 1\nclass A:\n    def f(self):\n        return self._y\n",
            "pkg/b.py": (
                "from pkg.a import _x\n"
                "from pkg import a\n"
                "def g(s):\n"
                "    return a._x, s._lock, a.__name__, s.__class__\n"
            ),
        },
    )
    assert private_reaches(root, ["pkg"]) == [
        ("pkg/b.py", 1, "from pkg.a import _x"),
        ("pkg/b.py", 4, "a._x"),
        ("pkg/b.py", 4, "s._lock"),
    ]


def test_import_cycles_are_found_type_only_and_in_functions_too(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "from pkg import b\n",
            "pkg/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.c\n",
            "pkg/c.py": "def f():\n    from pkg.a import x\n",
            "pkg/d.py": "import pkg.a\n",
        },
    )
    assert import_cycles(root, ["pkg"]) == [["pkg.a", "pkg.b", "pkg.c"]]
    (root / "pkg/c.py").write_text("x = 1\n", encoding="utf-8")
    assert import_cycles(root, ["pkg"]) == []


def test_importers_are_found(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/cluster.py": "",
            "pkg/a.py": "from pkg.cluster import X\n",
            "pkg/b.py": "from pkg import cluster\n",
            "pkg/c.py": "import pkg.clustering\n",
        },
    )
    assert importers_of(root, "pkg.cluster", ["pkg"]) == ["pkg/a.py:1", "pkg/b.py:1"]
