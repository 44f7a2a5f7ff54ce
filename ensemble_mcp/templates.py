"""Command templates: a command line with ``{name}`` placeholders, each value one argv element."""

from __future__ import annotations

import shlex
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import AfterValidator

__all__ = ("CommandTemplate", "TemplateValue")


@dataclass(frozen=True)
class CommandTemplate:
    """A command line with ``{name}`` placeholders, split once; each value is one argv element."""

    template: str
    tokens: tuple[tuple[tuple[str, str | None], ...], ...]
    names: tuple[str, ...]

    @classmethod
    def parse(cls, template: str) -> CommandTemplate:
        """Split ``template`` with shlex and find its placeholders.

        Raises:
            ValueError: the template is empty or has a placeholder that is not a plain name.
        """
        argv = shlex.split(template)
        if not argv:
            raise ValueError("command template is empty")
        tokens: list[tuple[tuple[str, str | None], ...]] = []
        names: dict[str, None] = {}
        for token in argv:
            pieces: list[tuple[str, str | None]] = []
            for literal, name, spec, conversion in string.Formatter().parse(token):
                if name is not None and (not name.isidentifier() or spec or conversion):
                    raise ValueError(
                        f"command template {template!r}: placeholder "
                        f"{{{name}{'!' + conversion if conversion else ''}"
                        f"{':' + spec if spec else ''}}} must be a plain name "
                        "such as {pressure}"
                    )
                pieces.append((literal, name))
                if name is not None:
                    names[name] = None
            tokens.append(tuple(pieces))
        return cls(template=template, tokens=tuple(tokens), names=tuple(names))

    def render(self, values: Mapping[str, Any]) -> list[str]:
        """The argv of one task: each value is substituted inside its token, never split."""
        return [
            "".join(
                lit + ("" if name is None else _format_value(values[name])) for lit, name in pieces
            )
            for pieces in self.tokens
        ]


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _no_nul(value: Any) -> Any:
    if isinstance(value, str) and "\x00" in value:
        raise ValueError("a command argument cannot contain a NUL character")
    return value


TemplateValue = Annotated[int | float | str, AfterValidator(_no_nul)]
"""The element type of a template placeholder whose type is not given."""
