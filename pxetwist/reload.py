# -*- test-case-name: tests.test_reload -*-
"""Hot reload: SIGHUP, ``pxetwist reload``, and the API's ``POST /reload`` all end up here.

:meth:`Reloader.reload_now` reads the config file the server was started with again, runs every
check ``twistd pxe`` runs at start (YAML and values, roots, plugins imported afresh when their
file changed, the API's tokens), and only when all pass puts the new config, a new policy chain
and the interfaces it names in force in one :meth:`LiveSettings.replace
<pxetwist.context.LiveSettings.replace>`.  A config with an error is refused with its
``file:line`` message, logged, and the old one stays in force.

What keeps running: sockets stay bound (a service opens listeners on interfaces that appeared
and closes those on interfaces that went, and moves a listener whose port changed), TFTP
transfers and HTTP downloads under way finish with what they started with, leases, sightings,
sessions and boot-once state are kept, and the boot-once gate goes onto the new chain.  A few
settings are read once at start (``data_dir``, ``dhcp.mode``, the lease store, TFTP workers,
which protocols run, the API listener): a reload that changes them says so in the log and in
its summary (``restart_needed``) and they take effect at the next restart.

**SIGHUP never kills the server** (issue 18): :func:`install_sighup` replaces the default
action (terminate) with a reload, scheduled onto the reactor from the signal handler.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger

from pxetwist.config import Config, ConfigError, load_config
from pxetwist.context import ServerContext, Settings
from pxetwist.policy.chain import PolicyChain
from pxetwist.policy.plugins import PluginError
from pxetwist.startup import ServerSetup, prepare

log = Logger()

#: Settings read once at start: (label, how to read it from a config).
_AT_START: tuple[tuple[str, Callable[[Config], object]], ...] = (
    ("data_dir", lambda c: c.data_dir),
    ("dhcp.mode", lambda c: c.dhcp.mode),
    ("dhcp.leases", lambda c: c.lease_store_url),
    ("dhcp.boot_server", lambda c: c.dhcp.boot_server),
    ("tftp.enabled", lambda c: c.tftp.enabled),
    ("tftp.workers", lambda c: c.tftp.workers),
    ("tftp.single_port", lambda c: c.tftp.single_port),
    ("http.enabled", lambda c: c.http.enabled),
    ("sessions.enabled", lambda c: c.sessions.enabled),
    ("api", lambda c: (c.api.enabled, c.api.host, c.api.port)),
)


class ReloadRefused(Exception):
    """The new config (or a plugin) has an error; the message names the file and line."""


class Reloader:
    """Reloads a running server's config; implements the API's ``IReloader``."""

    def __init__(
        self,
        context: ServerContext,
        setup: ServerSetup,
        *,
        after_reload: Callable[[], None] | None = None,
    ) -> None:
        self.context = context
        self.after_reload = after_reload  # run once a new config is in force
        self.path = Path(setup.config.source)
        self.interface_names = setup.interface_names
        self.reloads = 0
        self.refusals = 0

    def reload(self) -> Deferred[dict[str, Any]]:
        """As :meth:`reload_now`, as a Deferred (fails with ConfigError or PluginError)."""
        try:
            return succeed(self.reload_now())
        except (ConfigError, PluginError) as error:
            return fail(error)

    def reload_now(self) -> dict[str, Any]:
        """Reload or raise ``ConfigError``/``PluginError`` (the running config stays)."""
        try:
            config = load_config(self.path)
            setup = prepare(config, self.interface_names)
        except ConfigError as error:
            self._refused(str(error))
            raise
        except PluginError as error:
            self._refused(f"{self.path}: {error}")
            raise PluginError(f"{self.path}: {error}") from error
        context = self.context
        old = context.live.current
        chain = PolicyChain(
            setup.policies,
            context.reactor,
            config.policy.timeout,
            gate=old.chain.gate,
            monitor=old.chain.monitor,
        )
        restart = [label for label, read in _AT_START if read(old.config) != read(config)]
        before = {info.name for info in old.interfaces}
        after = {info.name for info in setup.interfaces}
        added, removed = sorted(after - before), sorted(before - after)
        context.live.replace(Settings(config, chain, setup.interfaces))
        self.reloads += 1
        if self.after_reload is not None:
            self.after_reload()
        summary = {
            "config": str(self.path),
            "policy_chain": list(chain.names),
            "interfaces": sorted(after),
            "interfaces_added": added,
            "interfaces_removed": removed,
            "machines": len(config.machines),
            "restart_needed": restart,
        }
        log.info(
            "reloaded {config}: policy chain {chain}, interfaces {interfaces}{added}{removed}",
            config=str(self.path),
            chain=" -> ".join(chain.names),
            interfaces=", ".join(sorted(after)) or "none",
            added=f" (added {', '.join(added)})" if added else "",
            removed=f" (removed {', '.join(removed)})" if removed else "",
        )
        if restart:
            log.warn(
                "reload: {keys} changed; that takes effect at the next restart",
                keys=", ".join(restart),
            )
        return summary

    def _refused(self, message: str) -> None:
        self.refusals += 1
        log.error("reload refused, the running config stays in force: {error}", error=message)

    def reload_from_signal(self) -> None:
        """What SIGHUP runs (on the reactor thread): reload, log the outcome, never raise."""
        log.info("SIGHUP: reloading {config}", config=str(self.path))
        try:
            self.reload_now()
        except (ConfigError, PluginError):
            pass  # logged by reload_now
        except Exception:
            log.failure("reload failed; the running config stays in force")


SignalHandler = Callable[[int, FrameType | None], Any] | int | None


def install_sighup(reloader: Reloader, call_from_thread: Callable[..., None]) -> SignalHandler:
    """Make SIGHUP reload instead of terminate; return the handler it replaced (or None).

    The handler only schedules the reload onto the reactor: nothing else is safe in a signal
    handler.  Outside the main thread (tests) signals cannot be set, and nothing happens.
    """
    if threading.current_thread() is not threading.main_thread():
        return None

    def on_sighup(signum: int, frame: FrameType | None) -> None:
        call_from_thread(reloader.reload_from_signal)

    return signal.signal(signal.SIGHUP, on_sighup)


def restore_sighup(previous: SignalHandler) -> None:
    if previous is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGHUP, previous)
