"""The original kachery-p2p's restricted pickle format (``store_pkl`` / ``load_pkl``).

Loading never imports or calls anything outside a fixed whitelist: the builtins ``range``,
``complex``, ``set``, ``frozenset`` and ``slice``, and numpy's ``ndarray``, ``dtype``,
``_reconstruct`` and ``scalar`` (under ``numpy.core.multiarray``, the name numpy 1 writes, and
``numpy._core.multiarray``, the name numpy 2 writes for the very same functions). Any other global
in the pickle is refused before anything is executed. Storing checks the value first and writes
pickle protocol 4, which stays inside that whitelist.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

from ..errors import UsageError

SAFE_BUILTINS = frozenset({"range", "complex", "set", "frozenset", "slice"})
SAFE_NUMPY = {
    "numpy": frozenset({"ndarray", "dtype"}),
    "numpy.core.multiarray": frozenset({"_reconstruct", "scalar"}),
    "numpy._core.multiarray": frozenset({"_reconstruct", "scalar"}),
}
PICKLE_PROTOCOL = 4


class UnsafePickleError(UsageError):
    """A pickle names a class or function outside the whitelist; nothing of it was run."""


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler whose ``find_class`` only resolves whitelisted names."""

    def find_class(self, module: str, name: str) -> Any:
        if (module == "builtins" and name in SAFE_BUILTINS) or name in SAFE_NUMPY.get(module, ()):
            return super().find_class(module, name)
        raise UnsafePickleError(
            f"refusing to unpickle {module}.{name}: load_pkl only accepts plain data, numpy arrays and scalars"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("refusing to unpickle a persistent id")


def safe_loads(data: bytes) -> Any:
    """Unpickle with the whitelist; UnsafePickleError for anything else, UsageError for a broken pickle."""
    try:
        return RestrictedUnpickler(io.BytesIO(data)).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
        raise UsageError(f"not a valid pickle: {exc}") from None


def safe_dumps(value: Any) -> bytes:
    """Pickle a value made only of what safe_loads accepts; UsageError naming the first other type."""
    check_safe_for_pickling(value)
    return pickle.dumps(value, protocol=PICKLE_PROTOCOL)


def check_safe_for_pickling(value: Any) -> None:
    """The original's rule: None, bool, int, float, str, range, complex, slice, and dicts, lists and
    tuples of those, numpy arrays (not of dtype object) and numpy numbers."""
    stack = [value]
    while stack:
        x = stack.pop()
        if x is None or isinstance(x, (bool, int, float, str, range, complex, slice)):
            continue
        if isinstance(x, dict):
            stack.extend(x.values())
            stack.extend(k for k in x if not isinstance(k, (str, int, float, bool, type(None))))
        elif isinstance(x, (list, tuple)):
            stack.extend(x)
        elif _is_numpy_array(x):
            if x.dtype.hasobject:
                raise UsageError("not safe for pickling: a numpy array of dtype object")
        elif not _is_numpy_number(x):
            raise UsageError(f"not safe for pickling: {type(x).__module__}.{type(x).__qualname__}")


def _is_numpy_array(x: Any) -> bool:
    np = _numpy_if_loaded()
    return np is not None and isinstance(x, np.ndarray)


def _is_numpy_number(x: Any) -> bool:
    np = _numpy_if_loaded()
    return np is not None and isinstance(x, (np.integer, np.floating, np.complexfloating, np.bool_))


def _numpy_if_loaded() -> Any:
    """numpy if the caller already imported it (a numpy value implies that), else None."""
    import sys

    return sys.modules.get("numpy")
