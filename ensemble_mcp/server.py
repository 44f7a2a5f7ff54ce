"""The MCP server: ``Server(MCPServer)`` whose ``ensemble_tool`` fans one call out into tasks.

::

    tools/call ─► plan_ensemble (validate, broadcast; ToolError before launch)      plan.py
               ─► EnsembleTool.launch on the warm launcher (map_tasks, submit_commands)
                                                               registration.py, pool.py
               ─► collect: Batch.stream_indexed ─► progress notifications, cancel   collect.py
               ─► ResultConverter ─► structured output + text                       results.py
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal, TypeVar, overload

import anyio
import anyio.to_thread
from mcp.server.mcpserver import Context, MCPServer
from mcp.types import CallToolResult, TextContent
from starlette.applications import Starlette

from core import Batch, Launcher, LauncherConfig, SystemConfig
from ensemble_mcp.auth import (
    BearerAuth,
    check_exposure,
    check_token,
    token_from_env,
    transport_security,
)
from ensemble_mcp.collect import collect
from ensemble_mcp.jobs import Registry, add_ensemble_tools, submit_output
from ensemble_mcp.journal import default_state_dir
from ensemble_mcp.plan import InputLimits, Plan, plan_ensemble
from ensemble_mcp.pool import LauncherPool
from ensemble_mcp.registration import EnsembleTool, add_tools, build_ensemble_tool
from ensemble_mcp.results import OutputLimits, render_text, summarize

F = TypeVar("F", bound=Callable[..., Any])
_OWN_RUN_OPTIONS = ("allowed_hosts", "allowed_origins", "allow_unauthenticated")


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
        launcher_config: how the shared launcher runs (default: chosen for the nodes it finds:
            a PBS or Slurm job's nodes, or this host; see ``LauncherConfig.auto``).
        max_tasks: the most tasks one call may run (and values one list may hold).
        output_limits: bounds on what one call returns.
        input_limits: bounds on the size of one call's values.
        ensemble_ttl_s: how long a finished submitted ensemble stays readable (across
            restarts too).
        max_ensembles: the most submitted ensembles kept at once.
        state_dir: where submitted ensembles are journaled (default:
            ``$ENSEMBLE_MCP_STATE_DIR/<name>``, else ``$XDG_STATE_HOME/ensemble-mcp/<name>``);
            one server per directory.
        journal_max_bytes: the JSON text the journal keeps before it drops the oldest
            finished ensembles.
        auth_token: the bearer token every streamable-HTTP request must carry (default:
            ``$ENSEMBLE_MCP_TOKEN``, which is then removed from this process's environment so
            that no worker or task inherits it). stdio needs none.
        allowed_hosts: the ``Host`` headers HTTP requests may carry (default: loopback names,
            the bound address and this machine's name, any port; ``name:*`` for any port).
        allowed_origins: the ``Origin`` headers browsers may send (default: ``http://`` and
            ``https://`` with each default host, any port).
        allow_unauthenticated: serve a non-loopback address without a token (only behind
            something that authenticates, e.g. a site proxy); refused otherwise.
        **mcpserver_kwargs: passed to ``MCPServer`` (``log_level`` defaults to WARNING).

    Raises:
        ConfigError: ``host`` is not loopback and there is no token (nor
            ``allow_unauthenticated``).
        ValueError: a bad option; the message names it.
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
        input_limits: InputLimits | None = None,
        ensemble_ttl_s: float = 3600.0,
        max_ensembles: int = 100,
        state_dir: str | os.PathLike[str] | None = None,
        journal_max_bytes: int = 256 * 2**20,
        auth_token: str | None = None,
        allowed_hosts: Sequence[str] | None = None,
        allowed_origins: Sequence[str] | None = None,
        allow_unauthenticated: bool = False,
        **mcpserver_kwargs: Any,
    ) -> None:
        if max_tasks < 1:
            raise ValueError(f"max_tasks must be >= 1, got {max_tasks}")
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {port}")
        from_env = token_from_env()  # taken out of the environment whatever else is given
        self._auth_token = from_env if auth_token is None else check_token(auth_token)
        self.allowed_hosts = None if allowed_hosts is None else list(allowed_hosts)
        self.allowed_origins = None if allowed_origins is None else list(allowed_origins)
        self.allow_unauthenticated = allow_unauthenticated
        check_exposure(host, has_token=self.requires_token, allowed=allow_unauthenticated)
        transport_security(host, self.allowed_hosts, self.allowed_origins)  # refuse bad entries now
        self.host = host
        self.port = port
        self.max_tasks = max_tasks
        self.output_limits = output_limits or OutputLimits()
        self.input_limits = input_limits or InputLimits()
        self._user_lifespan = mcpserver_kwargs.pop("lifespan", None)
        mcpserver_kwargs.setdefault("log_level", "WARNING")
        super().__init__(name, lifespan=self._lifespan, **mcpserver_kwargs)
        self._launchers = LauncherPool(
            system_config, launcher_config, on_start=self._started, on_stop=self._stopping
        )
        self._calls = itertools.count()
        self._num_calls = 0
        directory = default_state_dir(name) if state_dir is None else Path(state_dir)
        self._registry = Registry(
            directory.expanduser().absolute(),
            limits=self.output_limits,
            ttl_s=ensemble_ttl_s,
            max_ensembles=max_ensembles,
            max_bytes=journal_max_bytes,
        )
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
        self._launchers.release()

    def _started(self) -> None:
        if self._job_tools:
            self._registry.start()

    def _stopping(self) -> None:
        self._registry.stop()

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
    def launcher_config(self) -> LauncherConfig | None:
        """The shared launcher's configuration (settable until the launcher starts)."""
        return self._launchers.default_config

    @launcher_config.setter
    def launcher_config(self, config: LauncherConfig | None) -> None:
        self._launchers.default_config = config

    def _num_slots(self) -> int:
        launcher = self.launcher
        return launcher.num_slots if launcher is not None else 0

    @property
    def state_dir(self) -> Path:
        """The directory of the journal of submitted ensembles."""
        return self._registry.directory

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

        HTTP binds the constructor's host and port (``host=`` and ``port=`` override them, as do
        ``allowed_hosts=``, ``allowed_origins=`` and ``allow_unauthenticated=``); Ctrl-C stops
        the server cleanly. The SDK's ``sse`` transport is refused: it would bypass the token.

        Raises:
            ConfigError: a non-loopback ``host`` without a token (nor ``allow_unauthenticated``).
            ValueError: the ``sse`` transport.
        """
        if transport == "sse":
            raise ValueError(
                "transport must be 'stdio' or 'streamable-http': this server does not serve "
                "the deprecated 'sse' transport (its endpoints would not check the token)"
            )
        if transport != "stdio":
            for option in _OWN_RUN_OPTIONS:
                if option in kwargs:
                    setattr(self, option, kwargs.pop(option))
            kwargs.setdefault("host", self.host)
            kwargs.setdefault("port", self.port)
        with contextlib.suppress(KeyboardInterrupt):
            super().run(transport, **kwargs)

    def streamable_http_app(self, **kwargs: Any) -> Starlette:
        """The SDK's streamable-HTTP app, with Host/Origin checks for every bind address.

        ``host`` (default: the constructor's) is the address it will be served on: a
        non-loopback one needs a token (or ``allow_unauthenticated``); the allowed ``Host`` and
        ``Origin`` headers default to names of that address. When the server has a token, the
        app sits behind ``BearerAuth``.

        Raises:
            ConfigError: a non-loopback ``host`` without a token (nor ``allow_unauthenticated``).
        """
        host = kwargs.setdefault("host", self.host)
        check_exposure(host, has_token=self.requires_token, allowed=self.allow_unauthenticated)
        if kwargs.get("transport_security") is None:
            kwargs["transport_security"] = transport_security(
                host, self.allowed_hosts, self.allowed_origins
            )
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
            max_retries: re-runs of a task whose worker or node was lost while it ran
                (default: the launcher's setting, 1).
            failure_retries: re-runs of a task that failed by itself: an exception, a
                non-zero exit, a timeout (default: the launcher's setting, 0).
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
        max_retries: int | None = None,
        failure_retries: int | None = None,
        system_config: SystemConfig | None = None,
        launcher_config: LauncherConfig | None = None,
        params: Mapping[str, Any] | None = None,
        submit_tool: bool = True,
    ) -> None:
        options = {
            "nnodes": nnodes,
            "ppn": ppn,
            "ngpus_per_process": ngpus_per_process,
            "env": {} if env is None else env,
            "timeout": timeout,
            "max_retries": max_retries,
            "failure_retries": failure_retries,
        }
        tool = build_ensemble_tool(
            target,
            name=name,
            description=description,
            params=params,
            options=options,
            limits=self.output_limits,
        )
        tool = replace(tool, launcher_key=self._launchers.key(system_config, launcher_config))

        async def call(arguments: dict[str, Any], ctx: Context[Any, Any]) -> CallToolResult:
            return await self._call(tool, arguments, ctx)

        async def submit(arguments: dict[str, Any], ctx: Context[Any, Any]) -> CallToolResult:
            return await self._submit(tool, arguments)

        add_tools(
            self,
            tool,
            max_tasks=self.max_tasks,
            call=call,
            submit=submit if submit_tool else None,
        )
        if submit_tool and not self._job_tools:
            add_ensemble_tools(self, self._registry, self._num_slots)
            self._job_tools = True
            if self._launchers.active:  # added while serving: the journal opens now
                self._registry.start()

    # -- calls ------------------------------------------------------------------------------

    def _launch(self, tool: EnsembleTool, plan: Plan) -> tuple[Batch, list[dict[str, Any]]]:
        launcher = self._launchers.get(tool.launcher_key)
        launched = tool.launch(launcher, plan, f"{tool.spec.name}-{next(self._calls)}-")
        self._num_calls += 1
        return launched

    async def _call(
        self, tool: EnsembleTool, arguments: dict[str, Any], ctx: Context[Any, Any]
    ) -> CallToolResult:
        plan = plan_ensemble(
            tool.spec, arguments, max_tasks=self.max_tasks, limits=self.input_limits
        )
        started = time.perf_counter()
        batch, echoes = self._launch(tool, plan)
        results = await collect(batch, ctx, plan.total)
        wall = time.perf_counter() - started
        entries, note = tool.converter.entries(0, echoes, results)
        summary = summarize(tool.spec.name, plan, entries, wall, note)
        text = render_text(summary, entries, max_lines=self.output_limits.text_lines)
        return CallToolResult(
            content=[TextContent(type="text", text=text)],
            structured_content={"summary": summary, "tasks": entries},
        )

    async def _submit(self, tool: EnsembleTool, arguments: dict[str, Any]) -> CallToolResult:
        plan = plan_ensemble(
            tool.spec, arguments, max_tasks=self.max_tasks, limits=self.input_limits
        )
        self._registry.room()
        batch, echoes = self._launch(tool, plan)
        ensemble_id = self._registry.add(tool.spec, plan, echoes, batch, tool.converter)
        return submit_output(ensemble_id, tool.spec.name, plan)
