"""The server's warm launchers: started when the first session opens, stopped after the last."""

from __future__ import annotations

import threading
from collections.abc import Callable

from core import Launcher, LauncherConfig, SystemConfig
from ensemble_mcp.errors import ToolCallError

__all__ = ("LauncherPool",)


class LauncherPool:
    """One warm launcher per configuration; tools with their own configs get their own.

    Users (sessions, ``Server.start``) are counted: the first starts every launcher known so
    far, the last stops them all, and every task with them.

    Args:
        system_config: the default launcher's slots.
        launcher_config: the default launcher's configuration.
        on_start: called when the first user comes, before any launcher starts (if it raises,
            nothing starts).
        on_stop: called when the last user goes, before the launchers stop (and when they
            fail to start).
    """

    def __init__(
        self,
        system_config: SystemConfig | None,
        launcher_config: LauncherConfig | None,
        *,
        on_start: Callable[[], None] = lambda: None,
        on_stop: Callable[[], None] = lambda: None,
    ) -> None:
        self._configs: dict[str, tuple[SystemConfig | None, LauncherConfig | None]] = {
            "": (system_config, launcher_config)
        }
        self._launchers: dict[str, Launcher] = {}
        self._refs = 0
        self._lock = threading.Lock()
        self._on_start = on_start
        self._on_stop = on_stop

    @property
    def default_config(self) -> LauncherConfig | None:
        """The default launcher's configuration (None: chosen for its nodes when it starts)."""
        return self._configs[""][1]

    @default_config.setter
    def default_config(self, config: LauncherConfig | None) -> None:
        with self._lock:
            if "" in self._launchers:
                raise ValueError("the launcher is running: set its configuration before it starts")
            self._configs[""] = (self._configs[""][0], config)

    @property
    def active(self) -> bool:
        """Whether some user holds the launchers (the server runs)."""
        return self._refs > 0

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
            if self._refs > 0:
                self._refs += 1
                return
            self._on_start()
            self._refs = 1
            try:
                for key in self._configs:
                    self._start(key)
            except BaseException:
                self._refs = 0
                self._on_stop()
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
            self._on_stop()
        for launcher in launchers:
            launcher.shutdown()
        return True

    def running(self, key: str = "") -> Launcher | None:
        """The launcher for ``key`` if it is running."""
        return self._launchers.get(key)

    def get(self, key: str) -> Launcher:
        """The running launcher for ``key``, started now if it is not yet.

        Raises:
            ToolCallError: no session is open (the server is not running).
        """
        with self._lock:
            if self._refs <= 0:
                raise ToolCallError(
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
