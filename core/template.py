"""Ensemble templates: split ``{key}`` placeholders, check their shell quoting, fill them in."""

from __future__ import annotations

import string
from collections.abc import Container, Sequence
from typing import Any, TypeAlias

__all__ = ("Field", "Piece", "fill", "render_value", "split_template")

Field: TypeAlias = str | tuple[str, str]
"""A split template piece: literal text, or (key, format spec)."""
Piece: TypeAlias = str | tuple[int, list[str]]
"""A compiled template piece: literal text, or (dimension index, rendered value per index)."""


def fill(pieces: list[Piece], idx: tuple[int, ...]) -> str:
    """The text of compiled ``pieces`` for the task whose index in each dimension is ``idx``."""
    if len(pieces) == 1 and isinstance(pieces[0], str):
        return pieces[0]
    return "".join([p if isinstance(p, str) else p[1][idx[p[0]]] for p in pieces])


def split_template(
    template: str, *, keys: Sequence[str], reserved: Container[str], quoted: bool
) -> list[Field]:
    """Split ``template`` into literal text and ``(key, format_spec)`` fields, checking each.

    Args:
        template: The template text.
        keys: The keys that have a value, in the order messages list them.
        reserved: Keys that cannot be placeholders.
        quoted: The template is a shell command line, whose values are shell-quoted: a
            placeholder inside quotes, or unbalanced quoting, is an error.

    Raises:
        ValueError: the problem, for the caller to attach to the template's key.
    """
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"{exc}; write '{{{{' and '}}}}' for literal braces") from None
    pieces: list[Field] = []
    quoting = ""
    for literal, field, spec, conversion in parsed:
        if literal:
            pieces.append(literal)
            quoting = _quoting_after(literal, quoting)
        if field is None:
            continue
        shown = (
            "{"
            + field
            + (f"!{conversion}" if conversion else "")
            + (f":{spec}" if spec else "")
            + "}"
        )
        if not field:
            raise ValueError(f"empty placeholder {shown}; name a key, e.g. {{arg1}}")
        if conversion or (spec and "{" in spec):
            raise ValueError(
                f"placeholder {shown}: only {{name}} and {{name:format}} are supported"
            )
        if field in reserved:
            raise ValueError(f"{shown} cannot be a placeholder")
        if field not in keys:
            given = ", ".join(k for k in keys if k not in reserved) or "none"
            raise ValueError(
                f"placeholder {shown} has no value; add a key {field!r} to the "
                f"ensemble (keys given: {given})"
            )
        if quoted and quoting:
            raise ValueError(
                f"placeholder {shown} is {_QUOTING[quoting]}; remove the quoting "
                "around it: values are shell-quoted for you"
            )
        pieces.append((field, spec or ""))
    if quoted and quoting:
        raise ValueError(f"unbalanced quoting: {template!r} ends {_QUOTING[quoting]}")
    return pieces


_QUOTING = {
    "'": "inside single quotes",
    '"': "inside double quotes",
    "\\": "after a backslash",
    '"\\': "after a backslash",
}


def _quoting_after(text: str, state: str) -> str:
    r"""The POSIX shell quoting after ``text``: "" or the open quote, then "\\" if escaping."""
    for char in text:
        if state.endswith("\\"):
            state = state[:-1]
        elif state == "'":
            state = "" if char == "'" else state
        elif char == "\\":
            state += char
        elif state == '"':
            state = "" if char == '"' else state
        elif char in "'\"":
            state = char
    return state


def render_value(value: Any) -> str:
    """A value as template text: ``true``/``false``, floats by ``repr``, lists comma-joined."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)
