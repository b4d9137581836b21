"""The shape of the code, read from its source with ``ast``: no import cycle (not even
under ``TYPE_CHECKING`` or inside a function), QEMU's options formatted in one module
and QMP's command names written in one, and every package saying what lives in it."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = SRC / "hypermachine"
ARGV_MODULE = "hypermachine.hypervisor.qemu.argv"
QMP_VOCABULARY = "hypermachine.hypervisor.qemu.qmp_commands"


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    is_package: bool
    tree: ast.Module


def _modules() -> dict[str, Module]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        name = ".".join(parts)
        found[name] = Module(name, path, is_package, ast.parse(path.read_text(), str(path)))
    return found


MODULES = _modules()


def _from_target(module: Module, node: ast.ImportFrom) -> str:
    """The absolute module a ``from … import`` statement of ``module`` imports from."""
    if not node.level:
        return node.module or ""
    package = module.name if module.is_package else module.name.rpartition(".")[0]
    parts = package.split(".")
    base = parts[: len(parts) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _imported(module: Module) -> Iterator[str]:
    """Every hypermachine module ``module`` imports, wherever the import statement is
    (top level, ``if TYPE_CHECKING:``, a function body)."""
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = _from_target(module, node)
            yield target
            yield from (f"{target}.{alias.name}" for alias in node.names)


def _graph() -> dict[str, set[str]]:
    """Module -> the modules it imports. Importing ``a.b`` runs ``a/__init__`` first, so
    an edge to a submodule also counts as one to each package above it (except the
    importer's own packages, which are already being imported)."""
    graph: dict[str, set[str]] = {}
    for module in MODULES.values():
        own = {".".join(module.name.split(".")[:i]) for i in range(1, module.name.count(".") + 2)}
        edges = set()
        for target in _imported(module):
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                candidate = ".".join(parts[:i])
                if candidate in MODULES and candidate not in own:
                    edges.add(candidate)
        graph[module.name] = edges - {module.name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the list of modules around it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        path.append(name)
        for nxt in sorted(graph[name]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        path.pop()
        state[name] = 2
        return None

    for name in sorted(graph):
        if name not in state and (found := visit(name)) is not None:
            return found
    return None


def test_the_import_graph_has_no_cycle() -> None:
    assert _cycle(_graph()) is None


def test_the_cycle_finder_finds_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycle(graph) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_imports_under_type_checking_and_in_functions_count() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from .manager import Manager\n"
        "def f():\n    from ..store import Store\n"
    )
    module = Module("hypermachine.hypervisor.x", Path("x.py"), False, ast.parse(source))
    imported = set(_imported(module))
    assert {"hypermachine.hypervisor.manager", "hypermachine.store"} <= imported


# -- QEMU options and QMP command names, each in one module ----------------------


def _docstrings(tree: ast.Module) -> set[int]:
    """ids of the string constants that are docstrings (prose may name anything)."""
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def _strings(module: Module) -> Iterator[tuple[int, str]]:
    """Every string constant of the module but its docstrings, with its line, and the
    literal parts of its f-strings."""
    skip = _docstrings(module.tree)
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            yield node.lineno, node.value


def _option_names() -> set[str]:
    """The QEMU options the argv module writes: every ``-name`` string in it."""
    return {
        text
        for _, text in _strings(MODULES[ARGV_MODULE])
        if text.startswith("-") and text[1:].replace("-", "").isalnum() and len(text) > 1
    }


def _qmp_commands() -> set[str]:
    """The QMP commands the vocabulary sends: the first argument of its ``execute`` and
    ``execute_with_fd`` calls, and the names in its tables of commands."""
    module = MODULES[QMP_VOCABULARY]
    names = {name for _, name in _executed_names(module)}
    for node in module.tree.body:
        if not isinstance(node, ast.Assign):
            continue
        targets = {t.id for t in node.targets if isinstance(t, ast.Name)}
        if "READ_ONLY_QMP" in targets:  # a set of command names
            names |= {str(c.value) for c in ast.walk(node.value) if isinstance(c, ast.Constant)}
        elif targets & {"_ATTESTATION", "_PROBE"}:  # (key, command) pairs
            names |= {command for _, command in _constant_pairs(node.value)}
    return names


def _constant_pairs(tree: ast.AST) -> Iterator[tuple[str, str]]:
    for pair in ast.walk(tree):
        if isinstance(pair, ast.Tuple) and len(pair.elts) == 2:
            key, value = pair.elts
            if isinstance(key, ast.Constant) and isinstance(value, ast.Constant):
                yield str(key.value), str(value.value)


# Words that are QMP commands and plain English too: outside the vocabulary they are
# only a QMP command when sent through ``execute``.
_PLAIN_WORDS = {"stop", "cont", "quit", "migrate", "getfd"}


def _executed_names(module: Module) -> Iterator[tuple[int, str]]:
    for node in ast.walk(module.tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("execute", "execute_with_fd")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield node.lineno, node.args[0].value


def test_the_argv_module_declares_the_options_it_writes() -> None:
    options = _option_names()
    assert {"-device", "-blockdev", "-netdev", "-chardev", "-machine", "-sandbox"} <= options


def test_qemu_options_are_written_only_in_the_argv_module() -> None:
    options = _option_names()
    found = [
        f"{module.path.relative_to(SRC)}:{line}: {text}"
        for module in MODULES.values()
        if module.name != ARGV_MODULE
        for line, text in _strings(module)
        if text in options
    ]
    assert found == []


@pytest.mark.parametrize(
    ("source", "caught"),
    [
        ('ARGV = ["-device", "{}"]\n', True),
        ('def f(p):\n    return ["-chardev", f"socket,path={p}"]\n', True),
        ('CMD = ["qemu-img", "create", "-f", "qcow2"]\n', False),  # not QEMU's options
        ('def f():\n    """Adds -device."""\n', False),  # prose
    ],
)
def test_the_option_check_catches_an_option(source: str, caught: bool) -> None:
    module = Module("hypermachine.x", Path("x.py"), False, ast.parse(source))
    assert any(text in _option_names() for _, text in _strings(module)) is caught


def test_the_vocabulary_declares_the_commands_it_sends() -> None:
    commands = _qmp_commands()
    assert {"query-status", "cont", "migrate", "query-blockstats", "getfd"} <= commands
    assert "qom-list-types" in commands and "query-sev-launch-measure" in commands


def test_qmp_command_names_are_written_only_in_the_vocabulary() -> None:
    commands = _qmp_commands()
    distinctive = commands - _PLAIN_WORDS
    found = []
    for module in MODULES.values():
        if module.name == QMP_VOCABULARY:
            continue
        where = module.path.relative_to(SRC)
        found += [
            f"{where}:{line}: {text}" for line, text in _strings(module) if text in distinctive
        ]
        found += [
            f"{where}:{line}: execute({text!r})"
            for line, text in _executed_names(module)
            if text in commands
        ]
    assert found == []


@pytest.mark.parametrize(
    ("source", "caught"),
    [
        ('async def f(m):\n    await m.execute("query-status")\n', True),
        ('async def f(m):\n    await m.execute("stop")\n', True),
        ('STATES = {"stop": 1}\n', False),  # a plain word, not sent
        ('QUERY = "query-blockstats"\n', True),
        ('def f():\n    """Runs query-status."""\n', False),  # prose
    ],
)
def test_the_qmp_check_catches_a_command_name(source: str, caught: bool) -> None:
    module = Module("hypermachine.x", Path("x.py"), False, ast.parse(source))
    commands = _qmp_commands()
    hits = [t for _, t in _strings(module) if t in commands - _PLAIN_WORDS]
    hits += [t for _, t in _executed_names(module) if t in commands]
    assert bool(hits) is caught


# -- every package says what lives in it and what it may import ------------------


def _folders() -> list[Path]:
    found = (p.parent for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)
    return sorted(set(found))


def test_every_package_has_a_docstring() -> None:
    missing = []
    for folder in _folders():
        init = folder / "__init__.py"
        doc = ast.get_docstring(ast.parse(init.read_text())) if init.exists() else None
        if not doc or not doc.strip() or "May import:" not in doc:
            missing.append(str(folder.relative_to(SRC)))
    assert missing == []


def _may_import(doc: str) -> set[str]:
    """The names in double backticks of the docstring's ``May import:`` paragraph."""
    paragraph = doc[doc.index("May import:") :].split("\n\n")[0]
    return {f"hypermachine.{name}" for name in re.findall(r"``([a-z_.]+)``", paragraph)}


def _rules() -> dict[str, set[str]]:
    """Package -> what its modules may import besides the package itself (the root
    package, the composition root, has no rule)."""
    return {
        module.name: _may_import(ast.get_docstring(module.tree) or "")
        for module in MODULES.values()
        if module.is_package and module.name != "hypermachine"
    }


def _direct_imports(module: Module) -> Iterator[tuple[int, str]]:
    """Each hypermachine module an import statement names (``from .qemu import argv``
    names ``...qemu.argv``, not the package ``...qemu``)."""
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = _from_target(module, node)
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                yield node.lineno, sub if sub in MODULES else target


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _breaches(rules: dict[str, set[str]]) -> list[str]:
    found = []
    for module in MODULES.values():
        owners = [p for p in rules if _within(module.name, p)]
        if not owners:
            continue
        room = max(owners, key=len)  # the deepest package with a rule
        allowed = rules[room]
        for line, target in _direct_imports(module):
            if not target.startswith("hypermachine") or _within(target, room):
                continue
            if _within(module.name, target):  # its own packages (``from .. import x``)
                continue
            if not any(_within(target, name) for name in allowed):
                found.append(f"{module.path.relative_to(SRC)}:{line}: {target} ({room})")
    return found


def test_every_package_imports_only_what_its_docstring_allows() -> None:
    assert _breaches(_rules()) == []


def test_the_import_rules_catch_a_breach() -> None:
    rules = _rules()
    rules["hypermachine.hypervisor.vmfiles"] = set()  # vmfiles may not even import config
    assert any("vmfiles" in breach for breach in _breaches(rules))
