"""Package attributes that load on first use (PEP 562): a package's API without its imports.

``core`` uses it so that worker processes (``python -m core``) import only what they run, and
``ensemble_mcp`` so that the tunnel does not import the MCP SDK.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ("lazy_attributes",)


def lazy_attributes(
    package: str, homes: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``; ``homes`` maps each name to its module.

    Each name is imported from its home module on first use, then kept in the package.

    Example:
        In a package's ``__init__.py``::

            __getattr__, __dir__ = lazy_attributes(__name__, {"Server": "ensemble_mcp.server"})
    """
    module = sys.modules[package]

    def __getattr__(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(home), name)
        setattr(module, name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(homes)

    return __getattr__, __dir__
