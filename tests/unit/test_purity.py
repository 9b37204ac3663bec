"""The pure core does no I/O and reads no clock or environment (STYLE.md).

The pure core is every module in geo/ and these in dispatch/: model, codec, errors,
lifecycle, policy, dispatcher, config. This test reads their source with `ast`,
follows their imports of project modules transitively (a module's parent packages
included, since importing dispatch.model runs dispatch/__init__.py), and fails if
any of them imports asyncio, redis, aiomqtt, aiohttp, time or socket, or touches
os.environ / os.getenv. config.py gets its environment as a mapping from the CLI.

Imports under ``if TYPE_CHECKING:`` are not followed and not counted: they never
run. The layering checks (geo never imports dispatch; neither imports simulators or
benchmarks) count them too, since a type-only import still couples the code.
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
    "config",
    "effects",
    "coverage",
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
