"""The MCP server: ``Server(MCPServer)`` whose ``ensemble_tool`` fans one call out into tasks.

::

    tools/call ─► plan_ensemble (validate, broadcast; ToolError before launch)
               ─► Launcher.submit_tasks (warm, shared by every call) ─► Batch.stream()
               ─► progress notifications ─► ResultConverter ─► structured output + text
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, overload

import anyio
import anyio.to_thread
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError
from mcp.server.mcpserver.tools import Tool
from mcp.server.mcpserver.utilities.func_metadata import ArgModelBase, FuncMetadata
from mcp.shared.tool_name_validation import validate_and_warn_tool_name
from mcp.types import CallToolResult, TextContent
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from starlette.applications import Starlette

from core import Batch, Launcher, LauncherBroken, LauncherConfig, SystemConfig, Task, TaskResult
from core.errors import ConfigError
from ensemble_mcp.auth import TOKEN_ENV, BearerAuth, check_token, token_from_env
from ensemble_mcp.jobs import Registry, SubmitOutput, add_ensemble_tools, submit_output
from ensemble_mcp.results import (
    OutputLimits,
    ResultConverter,
    output_schema,
    render_text,
    summarize,
)
from ensemble_mcp.tools import (
    CommandTemplate,
    EnsembleSpec,
    Plan,
    describe,
    input_schema,
    plan_ensemble,
    spec_from_function,
    spec_from_template,
)

F = TypeVar("F", bound=Callable[..., Any])
Runner = Callable[[dict[str, Any], Context[Any, Any]], Awaitable[CallToolResult]]
_PROGRESS_INTERVAL_S = 0.05
_PROGRESS_EVERY_RESULT = 20
_CANCEL_WAIT_S = 10.0
_INLINE_LAUNCH_MAX = 200
logger = logging.getLogger(__name__)


class _EnsembleTool(Tool):
    """A tool whose arguments are checked by ``plan_ensemble``, not by a pydantic model.

    The SDK's argument model would drop unknown arguments and reject bare values before the
    broadcast rule could apply, so ``run`` takes the raw arguments.
    """

    runner: Runner = Field(exclude=True)

    async def run(
        self, arguments: dict[str, Any], context: Context[Any, Any], convert_result: bool = False
    ) -> Any:
        try:
            result = await self.runner(arguments, context)
        except ToolError as exc:
            raise ToolError(f"Error executing tool {self.name}: {exc}") from exc
        except Exception as exc:
            raise UnexpectedToolError(f"Error executing tool {self.name}") from exc
        return self.fn_metadata.convert_result(result) if convert_result else result


@dataclass(frozen=True)
class _Options:
    nnodes: int = 1
    ppn: int = 1
    ngpus_per_process: int = 0
    env: dict[str, str] = field(default_factory=dict)
    timeout: float | None = None
    launcher_key: str = ""

    def task_fields(self) -> dict[str, Any]:
        """The Task fields that differ from their defaults (fewer fields: faster tasks)."""
        fields = {
            "nnodes": self.nnodes,
            "ppn": self.ppn,
            "ngpus_per_process": self.ngpus_per_process,
            "env": self.env,
            "timeout": self.timeout,
        }
        defaults = {"nnodes": 1, "ppn": 1, "ngpus_per_process": 0, "env": {}, "timeout": None}
        return {k: v for k, v in fields.items() if v != defaults[k]}


@dataclass
class _Registered:
    spec: EnsembleSpec
    options: _Options
    converter: ResultConverter


class _Launchers:
    """The server's warm launchers: started when the first session opens, stopped after the last.

    Tools with their own configs get their own launcher.
    """

    def __init__(
        self, system_config: SystemConfig | None, launcher_config: LauncherConfig | None
    ) -> None:
        self._configs: dict[str, tuple[SystemConfig | None, LauncherConfig | None]] = {
            "": (system_config, launcher_config)
        }
        self._launchers: dict[str, Launcher] = {}
        self._refs = 0
        self._lock = threading.Lock()

    def key(
        self, system_config: SystemConfig | None, launcher_config: LauncherConfig | None
    ) -> str:
        """The key of the launcher for these configs (registering them if new)."""
        if system_config is None and launcher_config is None:
            return ""
        key = "|".join(c.model_dump_json() if c else "-" for c in (system_config, launcher_config))
        with self._lock:
            self._configs.setdefault(key, (system_config, launcher_config))
        return key

    def acquire(self) -> None:
        """Count one more user; the first starts a launcher per configuration."""
        with self._lock:
            self._refs += 1
            if self._refs == 1:
                try:
                    for key in self._configs:
                        self._start(key)
                except BaseException:
                    self._refs -= 1
                    launchers, self._launchers = list(self._launchers.values()), {}
                    for launcher in launchers:
                        launcher.shutdown()
                    raise

    def release(self) -> bool:
        """Count one user less; the last stops every launcher (and every task) and gets True."""
        with self._lock:
            self._refs -= 1
            if self._refs > 0:
                return False
            launchers, self._launchers = list(self._launchers.values()), {}
        for launcher in launchers:
            launcher.shutdown()
        return True

    def running(self, key: str = "") -> Launcher | None:
        """The launcher for ``key`` if it is running."""
        return self._launchers.get(key)

    def get(self, key: str) -> Launcher:
        """The running launcher for ``key``, started now if it is not yet.

        Raises:
            ToolError: no session is open (the server is not running).
        """
        with self._lock:
            if self._refs <= 0:
                raise ToolError(
                    "the server's launcher is not running (the server is starting "
                    "or stopping); call again shortly"
                )
            return self._launchers.get(key) or self._start(key)

    def _start(self, key: str) -> Launcher:
        system_config, launcher_config = self._configs[key]
        # A command tool's result is its stdout, so the launcher always captures it; the
        # launcher's shape is chosen for the nodes it finds (a job's nodes) unless given.
        launcher = Launcher(system_config, launcher_config, return_stdout=True)
        launcher.start()
        self._launchers[key] = launcher
        return launcher


class Server(MCPServer[Any]):
    """An MCP server whose ensemble tools run one task per list element on a warm launcher.

    Example:
        >>> server = Server("combustion", port=9276)
        >>> @server.ensemble_tool
        ... def flame_speed(pressure: float, temperature: float) -> float:
        ...     '''Laminar flame speed for one (pressure, temperature) point.'''
        ...     return 0.4 * (temperature / 300) ** 1.8 / pressure ** 0.5
        >>> # server.run(transport="streamable-http")  serves http://127.0.0.1:9276/mcp

    Args:
        name: the server's name, shown to clients.
        port: the port ``run(transport="streamable-http")`` listens on.
        host: the address it binds (loopback by default).
        system_config: the slots of the shared launcher (default: this node).
        launcher_config: how the shared launcher runs (default: ``LauncherConfig.auto()``).
        max_tasks: the most tasks one call may run.
        output_limits: bounds on what one call returns.
        ensemble_ttl_s: how long a finished submitted ensemble stays readable.
        max_ensembles: the most submitted ensembles kept at once.
        auth_token: the bearer token every streamable-HTTP request must carry (default:
            ``$ENSEMBLE_MCP_TOKEN``; neither set = no authentication). stdio needs none.
        **mcpserver_kwargs: passed to ``MCPServer`` (``log_level`` defaults to WARNING).
    """

    def __init__(
        self,
        name: str = "ensemble-mcp",
        port: int = 9276,
        host: str = "127.0.0.1",
        *,
        system_config: SystemConfig | None = None,
        launcher_config: LauncherConfig | None = None,
        max_tasks: int = 10_000,
        output_limits: OutputLimits | None = None,
        ensemble_ttl_s: float = 3600.0,
        max_ensembles: int = 100,
        auth_token: str | None = None,
        **mcpserver_kwargs: Any,
    ) -> None:
        if max_tasks < 1:
            raise ValueError(f"max_tasks must be >= 1, got {max_tasks}")
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {port}")
        self.host = host
        self.port = port
        self.max_tasks = max_tasks
        self.output_limits = output_limits or OutputLimits()
        self._auth_token = token_from_env() if auth_token is None else check_token(auth_token)
        self._user_lifespan = mcpserver_kwargs.pop("lifespan", None)
        mcpserver_kwargs.setdefault("log_level", "WARNING")
        super().__init__(name, lifespan=self._lifespan, **mcpserver_kwargs)
        self._launchers = _Launchers(system_config, launcher_config)
        self._calls = itertools.count()
        self._num_calls = 0
        self._registry = Registry(ttl_s=ensemble_ttl_s, max_ensembles=max_ensembles)
        self._job_tools = False

    # -- life cycle -------------------------------------------------------------------------

    @asynccontextmanager
    async def _lifespan(self, server: MCPServer[Any]) -> AsyncIterator[Any]:
        await anyio.to_thread.run_sync(self._launchers.acquire)
        try:
            if self._user_lifespan is None:
                yield {}
            else:
                async with self._user_lifespan(server) as state:
                    yield state
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._release)

    def _release(self) -> None:
        if self._launchers.release():
            self._registry.clear()

    def start(self) -> None:
        """Start the launcher now and keep it warm across sessions until ``shutdown``."""
        self._launchers.acquire()

    def shutdown(self) -> None:
        """Undo ``start``; the launcher stops once no session uses it."""
        self._release()

    @property
    def launcher(self) -> Launcher | None:
        """The shared launcher while the server runs, else None.

        The server runs while a session is open or after ``start``.
        """
        return self._launchers.running()

    @property
    def requires_token(self) -> bool:
        """Whether HTTP requests must carry ``Authorization: Bearer <token>``."""
        return self._auth_token is not None

    @property
    def num_calls(self) -> int:
        """How many ensembles this server has launched (calls rejected before launch excluded)."""
        return self._num_calls

    def run(
        self, transport: Literal["stdio", "sse", "streamable-http"] = "stdio", **kwargs: Any
    ) -> None:
        """Serve over ``stdio`` or ``streamable-http`` until interrupted.

        HTTP binds the constructor's host and port; Ctrl-C stops the server cleanly.
        """
        if transport != "stdio":
            kwargs.setdefault("host", self.host)
            kwargs.setdefault("port", self.port)
            if self._auth_token is None and not _is_loopback(kwargs["host"]):
                logger.warning(
                    "serving on %s without a token: anyone who reaches this address "
                    "can run tools; set %s",
                    kwargs["host"],
                    TOKEN_ENV,
                )
        with contextlib.suppress(KeyboardInterrupt):
            super().run(transport, **kwargs)

    def streamable_http_app(self, **kwargs: Any) -> Starlette:
        """The SDK's streamable-HTTP app (Host/Origin checks included).

        When the server has a token, the app sits behind ``BearerAuth``.
        """
        app = super().streamable_http_app(**kwargs)
        if self._auth_token is not None:
            app.add_middleware(BearerAuth, token=self._auth_token)
        return app

    # -- registration -----------------------------------------------------------------------

    @overload
    def ensemble_tool(self, fn: F, /) -> F: ...

    @overload
    def ensemble_tool(self, fn: str, /, **options: Any) -> str: ...

    @overload
    def ensemble_tool(self, fn: None = None, /, **options: Any) -> Callable[[F], F]: ...

    def ensemble_tool(self, fn: Callable[..., Any] | str | None = None, /, **options: Any) -> Any:
        """Register an ensemble tool: each parameter becomes a list, one task per element.

        Use it bare (``@server.ensemble_tool``), with options
        (``@server.ensemble_tool(name=..., timeout=60)``), or on a command template
        (``server.ensemble_tool("./sim --p {p}", name="sim")``), where each ``{name}`` becomes
        a list parameter and each value one argv element (no shell).

        Args:
            fn: the function or command template; None returns a decorator.
            **options: the tool's options, below.

        Keyword Args:
            name: the tool name (default: the function name).
            description: replaces the docstring in the tool description.
            nnodes, ppn, ngpus_per_process: resources of each task.
            env: environment variables of each task.
            timeout: seconds after which a task is killed and reported ``timeout``.
            system_config, launcher_config: run this tool on its own launcher.
            params: for templates, ``{placeholder: type}`` (default: number or string).
            submit_tool: also add ``<name>_submit`` and the ``ensemble_*`` tools (default True).

        Returns:
            The function (or template) unchanged, or a decorator when called with options only.

        Raises:
            ValueError: a signature or option that cannot make an ensemble tool.
        """
        if isinstance(fn, str):
            self._add(fn, **options)
            return fn
        if fn is None:

            def decorator(func: F) -> F:
                self._add(func, **options)
                return func

            return decorator
        self._add(fn, **options)
        return fn

    def _add(
        self,
        target: Callable[..., Any] | str,
        *,
        name: str | None = None,
        description: str | None = None,
        nnodes: int = 1,
        ppn: int = 1,
        ngpus_per_process: int = 0,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        system_config: SystemConfig | None = None,
        launcher_config: LauncherConfig | None = None,
        params: Mapping[str, Any] | None = None,
        submit_tool: bool = True,
    ) -> None:
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
        options = _Options(
            nnodes=nnodes,
            ppn=ppn,
            ngpus_per_process=ngpus_per_process,
            env=dict(env or {}),
            timeout=timeout,
            launcher_key=self._launchers.key(system_config, launcher_config),
        )
        _check_options(spec, options)
        entry = _Registered(spec, options, ResultConverter(spec, self.output_limits))
        names = [spec.name, f"{spec.name}_submit"] if submit_tool else [spec.name]
        taken = [n for n in names if self._tool_manager.get_tool(n)]
        if taken:
            raise ValueError(f"a tool named {taken[0]!r} already exists; pass name=...")
        schema = input_schema(spec)
        self._register(
            spec.name,
            describe(spec, max_tasks=self.max_tasks),
            schema,
            output_schema(spec),
            lambda args, ctx: self._call(entry, args, ctx),
        )
        if submit_tool:
            self._register(
                f"{spec.name}_submit",
                _submit_help(spec.name),
                schema,
                SubmitOutput.model_json_schema(),
                lambda args, ctx: self._submit(entry, args),
            )
            if not self._job_tools:
                add_ensemble_tools(self, self._registry)
                self._job_tools = True

    def _register(
        self,
        name: str,
        description: str,
        schema: dict[str, Any],
        output: dict[str, Any],
        runner: Runner,
    ) -> None:
        validate_and_warn_tool_name(name)
        arguments = create_model(f"{name}Arguments", __base__=ArgModelBase)
        tool = _EnsembleTool(
            fn=runner,
            name=name,
            description=description,
            parameters=schema,
            fn_metadata=FuncMetadata(arg_model=arguments, output_schema=output),
            is_async=True,
            runner=runner,
        )
        # ToolManager only builds tools from functions; this one carries its own schema.
        self._tool_manager._tools[name] = tool

    # -- calls ------------------------------------------------------------------------------

    def _launch(self, entry: _Registered, plan: Plan) -> tuple[Batch, list[dict[str, Any]]]:
        call_id = next(self._calls)
        self._num_calls = max(self._num_calls, call_id + 1)
        spec, opts = entry.spec, entry.options
        prefix = f"{spec.name}-{call_id}-"
        executable = spec.executable
        tasks: list[Task] = []
        echoes: list[dict[str, Any]] = []
        extra = opts.task_fields()
        for i, (kwargs, echo) in enumerate(plan.tasks()):
            if isinstance(executable, CommandTemplate):
                tasks.append(
                    Task(task_id=f"{prefix}{i}", executable=executable.render(kwargs), **extra)
                )
            else:
                tasks.append(
                    Task(task_id=f"{prefix}{i}", executable=executable, kwargs=kwargs, **extra)
                )
            echoes.append(echo)
        launcher = self._launchers.get(opts.launcher_key)
        try:
            return launcher.submit_tasks(tasks), echoes
        except (ConfigError, LauncherBroken) as exc:
            raise ToolError(f"the launcher refused the tasks: {exc}. Nothing was run.") from exc

    async def _start_batch(
        self, entry: _Registered, plan: Plan
    ) -> tuple[Batch, list[dict[str, Any]]]:
        if plan.total > _INLINE_LAUNCH_MAX:  # building thousands of Tasks would stall other calls
            return await anyio.to_thread.run_sync(self._launch, entry, plan)
        return self._launch(entry, plan)

    async def _call(
        self, entry: _Registered, arguments: dict[str, Any], ctx: Context[Any, Any]
    ) -> CallToolResult:
        plan = plan_ensemble(entry.spec, arguments, max_tasks=self.max_tasks)
        started = time.perf_counter()
        batch, echoes = await self._start_batch(entry, plan)
        results = await _collect(batch, ctx, plan.total)
        wall = time.perf_counter() - started
        entries, note = entry.converter.entries(0, echoes, results)
        summary = summarize(entry.spec, plan, entries, wall, note)
        text = render_text(summary, entries, max_lines=self.output_limits.text_lines)
        return CallToolResult(
            content=[TextContent(type="text", text=text)],
            structured_content={"summary": summary, "tasks": entries},
        )

    async def _submit(self, entry: _Registered, arguments: dict[str, Any]) -> CallToolResult:
        plan = plan_ensemble(entry.spec, arguments, max_tasks=self.max_tasks)
        self._registry.room()
        batch, echoes = await self._start_batch(entry, plan)
        ensemble = self._registry.add(entry.spec, plan, echoes, batch, entry.converter)
        return submit_output(ensemble)


async def _collect(batch: Batch, ctx: Context[Any, Any], total: int) -> list[TaskResult | None]:
    """Gather results in task order, reporting progress; cancel the batch if we are cancelled."""
    results: list[TaskResult | None] = [None] * total
    report = _progress_reporter(ctx, total)
    finished = False
    try:
        done = 0
        async for result in batch.stream():
            results[int(result.task_id.rpartition("-")[2])] = result
            done += 1
            if report is not None:
                await report(done)
        finished = True
    finally:
        if not finished:
            batch.cancel()
            # Shielded: the caller is gone, but its processes must be too before we return.
            with anyio.CancelScope(shield=True), anyio.move_on_after(_CANCEL_WAIT_S):
                await batch.wait()
    return results


def _progress_reporter(
    ctx: Context[Any, Any], total: int
) -> Callable[[int], Awaitable[None]] | None:
    try:
        ctx.request_context  # noqa: B018 - raises outside a request
    except ValueError:
        return None
    last = -1.0

    async def report(done: int) -> None:
        nonlocal last
        now = time.monotonic()
        if total <= _PROGRESS_EVERY_RESULT or done == total or now - last >= _PROGRESS_INTERVAL_S:
            last = now
            await ctx.report_progress(done, total, f"{done}/{total} tasks done")

    return report


class _TaskOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    nnodes: int = Field(ge=1)
    ppn: int = Field(ge=1)
    ngpus_per_process: int = Field(ge=0)
    env: dict[str, str]
    timeout: float | None = Field(gt=0)


def _check_options(spec: EnsembleSpec, options: _Options) -> None:
    try:
        _TaskOptions(
            nnodes=options.nnodes,
            ppn=options.ppn,
            ngpus_per_process=options.ngpus_per_process,
            env=options.env,
            timeout=options.timeout,
        )
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        raise ValueError(f"{spec.name}: option {first['loc'][0]}: {first['msg']}") from None
    if not spec.is_command and options.nnodes * options.ppn > 1:
        raise ValueError(
            f"{spec.name}: nnodes={options.nnodes}, ppn={options.ppn} need a "
            "command template; a Python function runs in one process"
        )


def _is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _submit_help(tool: str) -> str:
    return (
        f"Only for ensembles that run for many minutes: for an ordinary request call {tool}, "
        f"which returns the results. Starts the same ensemble as {tool} (same arguments) "
        "without waiting and returns an ensemble_id; then call ensemble_status until finished, "
        "and ensemble_results to read the results."
    )
