"""Generator strings for ensemble values, parsed without ``eval``.

===============================  ====================================================
``linspace(a, b, n)``            ``n`` evenly spaced floats from ``a`` to ``b`` (both included)
``logspace(a, b, n)``            ``10 ** x`` for ``x`` in ``linspace(a, b, n)`` (numpy's meaning)
``range(stop)``                  the ints ``0 .. stop - 1``
``range(start, stop[, step])``   Python's ``range``; ``step`` may be negative, never 0
===============================  ====================================================

How a string is read:

* It starts with ``linspace``, ``logspace`` or ``range`` and ``(`` (spaces allowed): it is a
  generator call and must be well formed, or :class:`ConfigError` says what is wrong.
  ``"linspace(0, 1)"`` is an error, never the plain string.
* It has the shape ``name(number, ...)`` with another name (``"arange(0, 1, 5)"``): an error
  naming the known generators.
* Anything else (``"input.json"``, ``"sin(x)"``) is a plain string value.

Values are exact where decimals allow: ``linspace`` works on the decimal digits as written, so
``linspace(0, 1, 11)`` gives ``0.3`` (not ``0.30000000000000004``) and both ends are the given
numbers; ``logspace`` gives ``1e-05``, not a rounding neighbour, for whole exponents.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

from core.errors import ConfigError

__all__ = ("GENERATOR_NAMES", "MAX_VALUES", "parse_generator")

GENERATOR_NAMES = ("linspace", "logspace", "range")
MAX_VALUES = 1_000_000
"""The most values one generator may produce (a guard against ``range(10**12)``)."""

_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_INT = re.compile(r"[+-]?\d+", re.ASCII)
_FLOAT = re.compile(_NUMBER, re.ASCII)
_KNOWN_CALL = re.compile(r"\s*(linspace|logspace|range)\s*\(", re.ASCII)
_OTHER_CALL = re.compile(
    rf"\s*([A-Za-z_]\w*)\s*\(\s*{_NUMBER}(?:\s*,\s*{_NUMBER})*\s*\)\s*", re.ASCII
)
_MAX_LITERAL = 64  # longer digit strings are a mistake, and big ints cost time to convert
_MAX_EXPONENT = 400
_USAGE = {
    "linspace": "linspace(a, b, n)",
    "logspace": "logspace(a, b, n)",
    "range": "range(stop) or range(start, stop[, step])",
}


def parse_generator(text: str) -> list[int] | list[float] | None:
    """Expand a generator string, or return ``None`` when ``text`` is a plain string.

    Example:
        >>> parse_generator("linspace(0, 1, 5)")
        [0.0, 0.25, 0.5, 0.75, 1.0]
        >>> parse_generator("range(3)")
        [0, 1, 2]
        >>> parse_generator("input.json") is None
        True

    Raises:
        ConfigError: ``text`` starts like a generator call but is malformed, or calls an
            unknown generator; the message quotes ``text`` and names the problem.
    """
    call = _KNOWN_CALL.match(text)
    if call is None:
        other = _OTHER_CALL.fullmatch(text)
        if other is not None:
            name = other.group(1)
            hint = f"did you mean {name.lower()!r}? " if name.lower() in GENERATOR_NAMES else ""
            raise ConfigError(
                f"{text!r}: unknown generator {name!r}; {hint}"
                f"known: {', '.join(_USAGE[n] for n in GENERATOR_NAMES)}"
            )
        return None
    name = call.group(1)
    args = _split_args(text, name, text[call.end() :])
    if name == "range":
        return _range(text, args)
    if len(args) != 3:
        raise ConfigError(f"{text!r}: {name} takes 3 arguments ({_USAGE[name]}), got {len(args)}")
    count = _count(text, args[2])
    points = _linspace(text, args[0], args[1], count)
    return points if name == "linspace" else _powers_of_ten(text, points)


def _split_args(text: str, name: str, rest: str) -> list[str]:
    close = rest.rfind(")")
    if close < 0:
        raise ConfigError(f"{text!r}: missing ')' to close {name}(")
    trailing = rest[close + 1 :].strip()
    if trailing:
        raise ConfigError(f"{text!r}: unexpected text after ')': {trailing!r}")
    inner = rest[:close]
    if not inner.strip():
        raise ConfigError(f"{text!r}: {name} needs arguments: {_USAGE[name]}")
    args = [arg.strip() for arg in inner.split(",")]
    for position, arg in enumerate(args, 1):
        if not arg:
            raise ConfigError(f"{text!r}: argument {position} is empty")
        if len(arg) > _MAX_LITERAL:
            raise ConfigError(f"{text!r}: argument {position} is too long ({len(arg)} characters)")
        if not _FLOAT.fullmatch(arg):
            raise ConfigError(f"{text!r}: argument {position} ({arg!r}) is not a number")
    return args


def _count(text: str, arg: str) -> int:
    if not _INT.fullmatch(arg):
        raise ConfigError(f"{text!r}: n must be a whole number, got {arg!r}")
    count = int(arg)
    if count < 1:
        raise ConfigError(f"{text!r}: n must be at least 1, got {count}")
    if count > MAX_VALUES:
        raise ConfigError(f"{text!r}: n = {count:,} is over the limit of {MAX_VALUES:,} values")
    return count


def _range(text: str, args: list[str]) -> list[int]:
    if len(args) > 3:
        raise ConfigError(
            f"{text!r}: range takes 1 to 3 arguments ({_USAGE['range']}), got {len(args)}"
        )
    for arg in args:
        if not _INT.fullmatch(arg):
            raise ConfigError(f"{text!r}: range takes integers, got {arg!r}")
    bounds = [int(arg) for arg in args]
    if len(bounds) == 3 and bounds[2] == 0:
        raise ConfigError(f"{text!r}: range step must not be 0")
    values = range(*bounds)
    if not values:
        raise ConfigError(f"{text!r}: the range is empty")
    if len(values) > MAX_VALUES:
        raise ConfigError(f"{text!r}: {len(values):,} values is over the limit of {MAX_VALUES:,}")
    return list(values)


def _fraction(text: str, arg: str) -> tuple[int, int]:
    """The decimal literal ``arg`` as an exact ``numerator / 10**k`` pair."""
    try:
        sign, digits, exponent = Decimal(arg).as_tuple()
    except InvalidOperation:  # the regex already checked the form; this is a backstop
        raise ConfigError(f"{text!r}: {arg!r} is not a number") from None
    assert isinstance(exponent, int)  # finite by the regex: no 'n'/'N'/'F'
    if abs(exponent) > _MAX_EXPONENT or math.isinf(float(arg)):
        raise ConfigError(f"{text!r}: {arg!r} is out of the range of a float")
    numerator = int("".join(map(str, digits))) * (-1 if sign else 1)
    if exponent >= 0:
        return numerator * 10**exponent, 1
    return numerator, 10**-exponent


def _linspace(text: str, start: str, stop: str, count: int) -> list[float]:
    num_a, den_a = _fraction(text, start)
    num_b, den_b = _fraction(text, stop)
    if count == 1:
        return [float(start)]
    den = max(den_a, den_b)  # both are powers of ten
    a, b = num_a * (den // den_a), num_b * (den // den_b)
    steps = count - 1
    base, delta, scale = a * steps, b - a, den * steps
    # int / int is correctly rounded, so each point is the float nearest its exact value.
    points = [(base + delta * i) / scale for i in range(count)]
    points[0], points[-1] = float(start), float(stop)
    return points


def _powers_of_ten(text: str, exponents: list[float]) -> list[float]:
    values = []
    for exponent in exponents:
        try:
            if exponent.is_integer() and abs(exponent) <= _MAX_EXPONENT:
                whole = int(exponent)
                values.append(float(10**whole) if whole >= 0 else 1 / 10**-whole)
            else:
                values.append(10.0**exponent)
        except OverflowError:
            raise ConfigError(f"{text!r}: 10**{exponent!r} is too large for a float") from None
    return values
