"""The error tree: every exception type the launcher writes is a real class under the root."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

import core.errors
from core.errors import EMITTED_TYPES, EnsembleError, TaskFailed, error_class

ROOT = Path(__file__).resolve().parents[2]


def written_type_names() -> set[str]:
    """Every ``core.errors.<Name>`` string literal in the packages' code."""
    names = set()
    for path in [*ROOT.joinpath("core").glob("*.py"), *ROOT.joinpath("ensemble_mcp").glob("*.py")]:
        names.update(re.findall(r"[\"']core\.errors\.(\w+)[\"']", path.read_text()))
    return names


def test_every_exception_type_the_code_writes_is_a_class_of_the_tree() -> None:
    names = written_type_names()
    assert names, "the scan found nothing: the test would pass vacuously"
    assert {f"core.errors.{n}" for n in names} <= set(EMITTED_TYPES)
    for dotted in EMITTED_TYPES:
        module, _, name = dotted.rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        assert issubclass(cls, EnsembleError), dotted


@pytest.mark.parametrize("name", ["WorkerLost", "NodeLost", "Unplaceable"])
def test_launcher_failures_raise_their_own_task_failed_class(name: str) -> None:
    cls = error_class(f"core.errors.{name}")
    assert cls is getattr(core.errors, name) and issubclass(cls, TaskFailed)
    assert error_class("builtins.ValueError") is None


def test_the_tree_is_drawn_in_the_module_docstring_with_every_class() -> None:
    doc = core.errors.__doc__ or ""
    for name, value in vars(core.errors).items():
        if isinstance(value, type) and issubclass(value, EnsembleError):
            assert name in doc, name
