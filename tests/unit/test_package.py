"""The package's surface: a light import, an exact ``__all__``, and sans-IO packages that stay sans-IO."""

from __future__ import annotations

import ast
import json
import ssl
import subprocess
import sys
import types
from pathlib import Path

import pytest

import kachery_p2p

PACKAGE_DIR = Path(kachery_p2p.__file__).resolve().parent
SANS_IO = ["store", "quic", "channels", "nat", "relay", "transfer", "peering", "feeds", "ids.py", "errors.py"]
FORBIDDEN = {"asyncio", "socket"}
ISSUE_API = {
    "load_file",
    "find_file",
    "store_file",
    "load_bytes",
    "load_text",
    "load_json",
    "store_text",
    "store_json",
    "get_node_id",
    "get_channels",
    "join_channel",
    "leave_channel",
    "DaemonNotRunningError",
}


def test_import_is_light() -> None:
    code = (
        "import json, sys; import kachery_p2p; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('aioquic', 'aiohttp'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == []


def test_all_is_exact() -> None:
    exported = kachery_p2p.__all__
    assert len(exported) == len(set(exported)), "duplicates in __all__"
    missing = [name for name in exported if not hasattr(kachery_p2p, name)]
    assert not missing, f"in __all__ but not defined: {missing}"
    public = {
        name
        for name, value in vars(kachery_p2p).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType) and callable(value)
    }
    assert public <= set(exported), f"public but not in __all__: {sorted(public - set(exported))}"
    assert set(exported) - public <= {"__version__"}, f"non-callables in __all__: {set(exported) - public}"
    assert set(exported) >= ISSUE_API
    assert issubclass(kachery_p2p.DaemonNotRunningError, kachery_p2p.KacheryP2PError)


def test_star_import_gives_all() -> None:
    namespace: dict[str, object] = {}
    exec("from kachery_p2p import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(kachery_p2p.__all__)


def _imported_modules(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_sans_io_packages_do_not_import_asyncio_or_socket() -> None:
    files: list[Path] = []
    for entry in SANS_IO:
        path = PACKAGE_DIR / entry
        assert path.exists(), path
        files.extend(sorted(path.rglob("*.py")) if path.is_dir() else [path])
    offenders = {
        str(f.relative_to(PACKAGE_DIR)): sorted(found)
        for f in files
        if (found := _imported_modules(ast.parse(f.read_text(encoding="utf-8"), str(f))) & FORBIDDEN)
    }
    assert not offenders, f"sans-IO modules import {FORBIDDEN}: {offenders}"
    assert len(files) >= len(SANS_IO)


def test_the_ast_check_catches_imports() -> None:
    tree = ast.parse("import asyncio.events\nfrom socket import socket\nfrom . import socket as s\nimport os")
    assert _imported_modules(tree) & FORBIDDEN == {"asyncio", "socket"}


MAX_MODULE_LINES = 400


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _import_graph() -> dict[str, set[str]]:
    """Edges module -> kachery_p2p modules it imports, anywhere in it (TYPE_CHECKING and function-level
    imports count: a cycle hidden behind them is still a cycle in the design)."""
    files = {_module_name(f): f for f in PACKAGE_DIR.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    module = ".".join([*base, node.module] if node.module else base)
                else:
                    module = node.module or ""
                for alias in node.names:
                    sub = f"{module}.{alias.name}"
                    targets.append(sub if sub in files else module)
            for target in targets:
                while target and target not in files:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles() -> None:
    assert _cycles(_import_graph()) == []


def test_the_cycle_check_finds_cycles() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    graph = _import_graph()
    assert "kachery_p2p.ids" in graph["kachery_p2p.relay.frames"]


def test_no_module_is_over_400_lines() -> None:
    sizes = {
        str(f.relative_to(PACKAGE_DIR)): len(f.read_text(encoding="utf-8").splitlines())
        for f in PACKAGE_DIR.rglob("*.py")
    }
    assert {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES} == {}


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"import json, sys; {code}; print(json.dumps(sorted(sys.modules)))"],
        capture_output=True, text=True, check=True,
    ).stdout
    return set(json.loads(out))


def test_commands_load_only_what_they_use() -> None:
    # Every kachery-p2p-* command imports cli.main first: the client API, feeds, pickles and the store's
    # writer load only in the commands that call them (each costs every command start-up time).
    loaded = _modules_after("import kachery_p2p.cli.main")
    heavy = {"http.client", "pickle", "kachery_p2p.client.api", "kachery_p2p.client.feeds",
             "kachery_p2p.store.filestore", "sqlite3"}
    assert loaded & heavy == set()
    loaded = _modules_after("import kachery_p2p; kachery_p2p.load_file")
    assert "kachery_p2p.client.api" in loaded
    assert loaded & {"http.client", "email", "ssl"} == set()  # client/wire.py; TLS only for a remote daemon


def test_an_idle_daemon_does_not_load_sqlite() -> None:
    # The feeds database and the mutables table open at their first use (1.3 MB of an idle daemon's RSS).
    code = (
        "import tempfile, pathlib; from kachery_p2p.daemon import node, feeds_service, mutables; "
        "d = pathlib.Path(tempfile.mkdtemp()); feeds_service.FeedService(d, 'x' * 64); mutables.Mutables(d)"
    )
    assert "sqlite3" not in _modules_after(code)


def test_the_daemon_loads_no_ca_certificates_and_leaves_ssl_as_it_was() -> None:
    # aiohttp (a server only, in the daemon) loaded the system's CA bundle into two client contexts at
    # import: 3 MB of idle RSS and up to 0.5 s of each start. Other TLS contexts still load it.
    code = (
        "import json, ssl; import kachery_p2p.daemon; import aiohttp.connector as c; "
        "print(json.dumps([c._SSL_CONTEXT_VERIFIED.cert_store_stats()['x509_ca'], "
        "c._SSL_CONTEXT_UNVERIFIED.cert_store_stats()['x509_ca'], "
        "ssl.create_default_context().cert_store_stats()['x509_ca']]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    aiohttp_verified, aiohttp_unverified, default = json.loads(out)
    assert aiohttp_verified == aiohttp_unverified == 0
    if not ssl.create_default_context().cert_store_stats()["x509_ca"]:
        pytest.skip("this machine has no CA certificates")
    assert default > 0
