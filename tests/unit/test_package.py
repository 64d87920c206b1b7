"""The package's surface: a light import, an exact ``__all__``, and sans-IO packages that stay sans-IO."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import types
from pathlib import Path

import kachery_p2p

PACKAGE_DIR = Path(kachery_p2p.__file__).resolve().parent
SANS_IO = ["store", "quic", "channels", "nat", "relay", "transfer", "feeds", "ids.py", "errors.py"]
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
