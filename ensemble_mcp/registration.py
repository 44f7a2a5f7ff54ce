"""Ensemble tool registration, and how a registered tool starts the tasks of one call.

::

    ensemble_tool(target, **options) ─► EnsembleTool (spec, TaskOptions, launcher key, converter)
                                     ─► <name> and <name>_submit in the server (sdk_shim)
    one call: Plan ─► EnsembleTool.launch ─► why_unplaceable? ─► map_tasks | submit_commands
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mcp.server.mcpserver import MCPServer
from pydantic import ValidationError

from core import Batch, Launcher, LauncherBroken
from core.errors import ConfigError
from core.spec_values import cut_repr
from core.task import TaskOptions, first_problem
from core.template import CommandTemplate
from ensemble_mcp.errors import NOTHING_RUN, EnsembleInputError, ToolCallError
from ensemble_mcp.jobs import SubmitOutput
from ensemble_mcp.plan import Plan
from ensemble_mcp.results import OutputLimits, ResultConverter, output_schema
from ensemble_mcp.sdk_shim import Runner, add_raw_tool, has_tool
from ensemble_mcp.tools import (
    EnsembleSpec,
    describe,
    input_schema,
    spec_from_function,
    spec_from_template,
)

__all__ = ("EnsembleTool", "add_tools", "build_ensemble_tool")


@dataclass(frozen=True)
class EnsembleTool:
    """A registered ensemble tool: what its tasks run, with which options, on which launcher."""

    spec: EnsembleSpec
    options: TaskOptions
    """The options every task gets, validated once at registration."""
    converter: ResultConverter
    launcher_key: str = ""

    def launch(
        self, launcher: Launcher, plan: Plan, task_prefix: str
    ) -> tuple[Batch, list[dict[str, Any]]]:
        """Start the tasks of ``plan`` on ``launcher``, ids ``<task_prefix><index>``.

        Returns:
            The batch, and each task's arguments as JSON (what its result echoes).

        Raises:
            ToolCallError: no node of ``launcher`` can ever run these tasks, or it refused them.
            EnsembleInputError: a value cannot be put in the command (a format that does not
                apply, a NUL character).
        """
        reason = launcher.why_unplaceable(self.options)
        if reason is not None:
            raise ToolCallError(
                f"{self.spec.name} cannot run on this server: {reason}; this comes from how "
                f"the tool is set up, so calling it again will not help. {NOTHING_RUN}"
            )
        executable = self.spec.executable
        task_ids = (f"{task_prefix}{i}" for i in range(plan.total))
        echoes: list[dict[str, Any]] = []
        try:
            if isinstance(executable, CommandTemplate):
                argvs = []
                for kwargs, echo in plan.tasks():
                    argvs.append(_argv(executable, kwargs, echo))
                    echoes.append(echo)
                batch = launcher.submit_commands(argvs, options=self.options, task_ids=task_ids)
            else:
                calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
                for kwargs, echo in plan.tasks():
                    calls.append(((), kwargs))
                    echoes.append(echo)
                batch = launcher.map_tasks(
                    executable, calls, options=self.options, task_ids=task_ids
                )
        except (ConfigError, LauncherBroken) as exc:
            raise ToolCallError(f"the launcher refused the tasks: {exc}. {NOTHING_RUN}") from exc
        return batch, echoes


def _argv(command: CommandTemplate, kwargs: dict[str, Any], echo: dict[str, Any]) -> list[str]:
    try:
        return command.argv(kwargs)
    except ValueError as exc:
        shown = ", ".join(f"{k}={cut_repr(v)}" for k, v in echo.items())
        raise EnsembleInputError(
            f"cannot form the command for {shown}: {exc}. {NOTHING_RUN}"
        ) from None


def build_ensemble_tool(
    target: Callable[..., Any] | str,
    *,
    name: str | None,
    description: str | None,
    params: Mapping[str, Any] | None,
    options: Mapping[str, Any],
    limits: OutputLimits,
) -> EnsembleTool:
    """The tool ``ensemble_tool(target, ...)`` registers (without its launcher key).

    Raises:
        ValueError: a signature, template or option that cannot make an ensemble tool; the
            message names the tool and the option.
        TypeError: ``target`` is neither a function nor a template.
    """
    if isinstance(target, str):
        spec = spec_from_template(target, name=name, description=description, params=params)
    elif callable(target):
        if params is not None:
            raise ValueError(
                "params= types the placeholders of a command template; a "
                "function's parameters are typed by its annotations"
            )
        spec = spec_from_function(target, name=name, description=description)
    else:
        raise TypeError(
            f"ensemble_tool takes a function or a command template string, got "
            f"{type(target).__name__}"
        )
    try:
        task_options = TaskOptions(**options)
        if not spec.is_command:
            task_options.check_callable()
    except ValidationError as exc:
        option, problem = first_problem(exc)
        raise ValueError(f"{spec.name}: option {option}: {problem}") from None
    except ConfigError as exc:
        raise ValueError(f"{spec.name}: {exc}; register a command template instead") from None
    return EnsembleTool(spec, task_options, ResultConverter(spec, limits))


def add_tools(
    server: MCPServer[Any],
    tool: EnsembleTool,
    *,
    max_tasks: int,
    call: Runner,
    submit: Runner | None,
) -> None:
    """Add ``<name>`` (runs ``call``) and, with ``submit``, ``<name>_submit`` to ``server``.

    Raises:
        ValueError: a tool of either name exists.
    """
    spec = tool.spec
    names = [spec.name] if submit is None else [spec.name, f"{spec.name}_submit"]
    taken = [n for n in names if has_tool(server, n)]
    if taken:
        raise ValueError(f"a tool named {taken[0]!r} already exists; pass name=...")
    schema = input_schema(spec)
    add_raw_tool(
        server, spec.name, describe(spec, max_tasks=max_tasks), schema, output_schema(spec), call
    )
    if submit is not None:
        add_raw_tool(
            server,
            f"{spec.name}_submit",
            _submit_help(spec.name),
            schema,
            SubmitOutput.model_json_schema(),
            submit,
        )


def _submit_help(tool: str) -> str:
    return (
        f"Only for ensembles that run for many minutes: for an ordinary request call {tool}, "
        f"which returns the results. Starts the same ensemble as {tool} (same arguments) "
        "without waiting and returns an ensemble_id; then call ensemble_status until finished, "
        "and ensemble_results to read the results."
    )
