"""Parse the parameter sections of Google- and NumPy-style docstrings into per-parameter text."""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass

__all__ = ("Docstring", "parse_docstring")

_SECTION = re.compile(r"^(Args|Arguments|Parameters|Params|Keyword Args|Keyword Arguments):\s*$")
_NUMPY_SECTION = re.compile(r"^(Parameters|Other Parameters)\s*$")
_GOOGLE_ITEM = re.compile(r"^(\*{0,2}\w+)\s*(?:\(([^)]*)\))?\s*:\s*(.*)$")
_NUMPY_ITEM = re.compile(r"^(\w+)\s*(?::\s*(.*))?$")


@dataclass(frozen=True)
class Docstring:
    """A parsed docstring: the text without its parameter sections, and each parameter's text."""

    text: str
    params: dict[str, str]


def parse_docstring(doc: str | None) -> Docstring:
    r"""Split a Google- or NumPy-style docstring into its text and its parameter descriptions.

    Example:
        >>> parse_docstring('Flame speed.\\n\\nArgs:\\n    p: pressure in atm.').params
        {'p': 'pressure in atm.'}
    """
    lines = inspect.cleandoc(doc or "").splitlines()
    kept: list[str] = []
    params: dict[str, str] = {}
    i = 0
    while i < len(lines):
        line = lines[i]
        if _SECTION.match(line.strip()) and not line.startswith(" "):
            i = _read_google(lines, i + 1, params)
        elif (
            _NUMPY_SECTION.match(line.strip())
            and i + 1 < len(lines)
            and set(lines[i + 1].strip()) == {"-"}
        ):
            i = _read_numpy(lines, i + 2, params)
        else:
            kept.append(line)
            i += 1
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(kept)).strip()
    return Docstring(text=text, params=params)


def _read_google(lines: list[str], i: int, params: dict[str, str]) -> int:
    item_indent: int | None = None
    current: str | None = None
    while i < len(lines):
        line = lines[i]
        if line.strip() and not line.startswith((" ", "\t")):
            break
        indent = len(line) - len(line.lstrip())
        if line.strip():
            if item_indent is None:
                item_indent = indent
            match = _GOOGLE_ITEM.match(line.strip()) if indent == item_indent else None
            if match:
                current = match.group(1).lstrip("*")
                params[current] = match.group(3).strip()
            elif current is not None:
                params[current] = f"{params[current]} {line.strip()}".strip()
        i += 1
    return i


def _read_numpy(lines: list[str], i: int, params: dict[str, str]) -> int:
    current: str | None = None
    while i < len(lines):
        line = lines[i]
        if line.strip() and i + 1 < len(lines) and set(lines[i + 1].strip()) == {"-"}:
            break  # the next section's title
        if line.strip() and not line.startswith((" ", "\t")):
            match = _NUMPY_ITEM.match(line.strip())
            current = match.group(1) if match else None
            if current is not None:
                params[current] = ""
        elif line.strip() and current is not None:
            params[current] = f"{params[current]} {line.strip()}".strip()
        i += 1
    return i
