"""Templates with ``{name}`` placeholders, and the one rule that fills them with values.

The rule is the same for an ensemble file's ``cmd_template`` and a command-template tool:

1. A command template is split into words once, as a POSIX shell splits a line (quotes and
   backslashes group characters; nothing is expanded). ``{{`` and ``}}`` are literal braces.
2. A placeholder is ``{name}`` or ``{name:format}``. Its value's text replaces it inside its
   word and is never split, so a value is never more than part of one argument, whatever
   characters it holds. A placeholder may stand inside quotes (``'{x}'``, ``"--x={x}"``), not
   right after a backslash.
3. A value's text (:func:`render_value`): ``true``/``false`` for booleans, the shortest form
   that reads back as the same float (``0.25``, ``1e-05``), integers and strings as they are,
   a list as its elements joined by commas. A format applies to a number (``{t:.3f}``), else
   to that text (``{name:>8}``). A text holding a NUL character is refused.
4. A command that runs as one line (an ensemble task's command, under ``/bin/sh -c`` with
   ``shell: true``) is the template with each value quoted for the place it stands in, so a
   shell reads every value as literal text and splits the line into the same words.
"""

from __future__ import annotations

import re
import shlex
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, TypeAlias

from pydantic import AfterValidator

from core.spec_values import check_param, cut_repr

__all__ = (
    "CommandTemplate",
    "Piece",
    "Placeholder",
    "TemplateValue",
    "TextTemplate",
    "quote_for",
    "render_value",
)

_NAME = re.compile(r"[\w-]+")
# What a shell reads literally: unquoted (shlex.quote's safe set without '=', which makes a
# command's first word an assignment), in '...', and in "...".
_PLAIN = {
    "": re.compile(r"[\w@%+:,./-]+", re.ASCII),
    "'": re.compile(r"[^']*"),
    '"': re.compile(r'[^"\\$`]*'),
}
_MARK = re.compile("\0([0-9]+)\0")
# Words a shell reads as syntax when they stand first in a command (POSIX, plus bash's own).
_RESERVED = frozenset(
    "case coproc do done elif else esac fi for function if in select then time until while".split()
)
_QUOTING = {"'": "inside single quotes", '"': "inside double quotes"}


def render_value(value: Any) -> str:
    """A value's text under the template rule, without a format (see the module docstring).

    Raises:
        ValueError: the text holds a NUL character.
    """
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float):
        text = repr(value)
    elif isinstance(value, (list, tuple)):
        text = ",".join(render_value(item) for item in value)
    else:
        text = str(value)
    return _no_nul(text)


def _no_nul(text: str) -> str:
    if "\0" in text:
        raise ValueError(
            f"{cut_repr(text)} contains a NUL character, which no command argument can hold"
        )
    return text


TemplateValue = Annotated[int | float | str | bool, AfterValidator(check_param)]
"""The pydantic type of a placeholder whose type is not given: a string without NUL, a finite
number, or a boolean (:func:`core.spec_values.check_param`)."""


def quote_for(quoting: str, text: str) -> str:
    """Shell syntax that reads back as exactly ``text`` where the quotes ``quoting`` are open.

    ``quoting`` is ``""`` (no quotes), ``"'"`` or ``'"'``. A text with nothing special there
    stays as it is; otherwise the open quote is closed, the text quoted on its own and the
    quote reopened. Unquoted, a reserved word (``if``) or a text with ``=`` is quoted too: as the
    first word of a command, the shell would read it as syntax or as a variable assignment.
    """
    if _PLAIN[quoting].fullmatch(text) and not (quoting == "" and text in _RESERVED):
        return text
    quoted = "'" + text.replace("'", "'\"'\"'") + "'"  # shlex.quote, but always quoting
    return f"{quoting}{quoted}{quoting}" if quoting else quoted


@dataclass(frozen=True, slots=True)
class Placeholder:
    """One ``{name}`` or ``{name:spec}`` of a template."""

    name: str
    spec: str = ""
    quoting: str = ""
    """The quotes it stands inside in a command line: ``""``, ``"'"`` or ``'"'``."""

    def render(self, value: Any) -> str:
        """The value's text: :func:`render_value`, formatted by ``spec`` if there is one.

        Raises:
            ValueError: the format does not apply, or the text holds a NUL.
        """
        if not self.spec:
            return render_value(value)
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        try:
            return _no_nul(format(value if number else render_value(value), self.spec))
        except (ValueError, TypeError) as exc:
            raise ValueError(
                f"format {{{self.name}:{self.spec}}} does not apply to {cut_repr(value)}: {exc}"
            ) from None


Piece: TypeAlias = str | Placeholder
"""Literal text or a placeholder."""


def _parse_pieces(template: str) -> list[Piece]:
    """Literal text and placeholders, checked; raises ValueError naming the problem."""
    if "\0" in template:
        raise ValueError("the template contains a NUL character")
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"{exc}; write '{{{{' and '}}}}' for literal braces") from None
    pieces: list[Piece] = []
    for literal, name, spec, conversion in parsed:
        if literal:
            pieces.append(literal)
        if name is None:
            continue
        shown = f"{{{name}{'!' + conversion if conversion else ''}{':' + spec if spec else ''}}}"
        if not name:
            raise ValueError(f"empty placeholder {shown}; write a name inside, e.g. {{pressure}}")
        if conversion or not _NAME.fullmatch(name) or "{" in (spec or ""):
            raise ValueError(
                f"placeholder {shown}: only {{name}} and {{name:format}} are supported, with a "
                "plain name such as {pressure}"
            )
        pieces.append(Placeholder(name, spec or ""))
    return pieces


def _names(pieces: tuple[Piece, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(p.name for p in pieces if isinstance(p, Placeholder)))


@dataclass(frozen=True)
class TextTemplate:
    """A text with placeholders filled in as they are, unquoted (an ensemble's ``run_dir``)."""

    template: str
    pieces: tuple[Piece, ...]
    names: tuple[str, ...]
    """The placeholder names, in order of first use."""

    @classmethod
    def parse(cls, template: str) -> TextTemplate:
        """Find the placeholders of ``template``.

        Raises:
            ValueError: a malformed placeholder or unpaired brace.
        """
        pieces = tuple(_parse_pieces(template))
        return cls(template, pieces, _names(pieces))

    def fill(self, values: Mapping[str, Any]) -> str:
        """The text with each placeholder replaced by its value's text."""
        return "".join(p if isinstance(p, str) else p.render(values[p.name]) for p in self.pieces)


@dataclass(frozen=True)
class CommandTemplate:
    """A command line with placeholders, split into words once (the rule: module docstring).

    Example:
        >>> command = CommandTemplate.parse("echo --x={x} 'a {x}'")
        >>> command.argv({"x": "1; rm -rf /"})
        ['echo', '--x=1; rm -rf /', 'a 1; rm -rf /']
        >>> command.command_line({"x": "1; rm -rf /"})
        "echo --x='1; rm -rf /' 'a 1; rm -rf /'"
    """

    template: str
    pieces: tuple[Piece, ...]
    """The line: literal text as written, and placeholders that know their quoting."""
    words: tuple[tuple[Piece, ...], ...]
    """The argv words: literal text with the quoting removed, and placeholders."""
    names: tuple[str, ...]
    """The placeholder names, in order of first use."""

    @classmethod
    def parse(cls, template: str) -> CommandTemplate:
        """Split ``template`` into words and find its placeholders.

        Raises:
            ValueError: no command, a malformed placeholder, a placeholder after a backslash,
                or quoting left open.
        """
        pieces: list[Piece] = []
        quoting = ""
        for piece in _parse_pieces(template):
            if isinstance(piece, str):
                quoting = _quoting_after(piece, quoting)
                pieces.append(piece)
            elif quoting.endswith("\\"):
                raise ValueError(
                    f"placeholder {{{piece.name}}} is after a backslash; remove the backslash "
                    "(a value is never split or read as shell syntax)"
                )
            else:
                pieces.append(Placeholder(piece.name, piece.spec, quoting))
        if quoting:
            where = "after a backslash" if quoting.endswith("\\") else _QUOTING[quoting]
            raise ValueError(f"unbalanced quoting: {cut_repr(template, 200)} ends {where}")
        # Split with each placeholder as a marker shlex keeps as part of its word.
        marked = "".join(p if isinstance(p, str) else f"\0{i}\0" for i, p in enumerate(pieces))
        words = tuple(
            tuple(
                pieces[int(part)] if k % 2 else part
                for k, part in enumerate(_MARK.split(word))
                if k % 2 or part
            )
            for word in shlex.split(marked)
        )
        if not words:
            raise ValueError("the command is empty")
        frozen = tuple(pieces)
        return cls(template, frozen, words, _names(frozen))

    def argv(self, values: Mapping[str, Any]) -> list[str]:
        """The argv of one command: each value's text inside its word.

        Raises:
            ValueError: a value's text cannot be made (:meth:`Placeholder.render`).
        """
        argv = []
        for word in self.words:  # the common words, one literal or one placeholder, go first
            if len(word) == 1:
                piece = word[0]
                argv.append(piece if isinstance(piece, str) else piece.render(values[piece.name]))
            else:
                argv.append(
                    "".join([p if isinstance(p, str) else p.render(values[p.name]) for p in word])
                )
        return argv

    def command_line(self, values: Mapping[str, Any]) -> str:
        """The command as one line, for ``shlex.split`` or ``/bin/sh -c``: the same words.

        Raises:
            ValueError: a value's text cannot be made (:meth:`Placeholder.render`).
        """
        return "".join(
            p if isinstance(p, str) else quote_for(p.quoting, p.render(values[p.name]))
            for p in self.pieces
        )


def _quoting_after(text: str, state: str) -> str:
    r"""The POSIX quoting after ``text``: "" or the open quote, then "\\" if escaping."""
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
