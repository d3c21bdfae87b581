# -*- test-case-name: tests.test_tap -*-
"""``twistd pxe``: command-line options and the service tree.

Everything that can fail because of the config (YAML, values, plugins) fails here, while options
are parsed and before twistd daemonizes, with one line on stderr and a non-zero exit: an operator
sees the problem on the terminal, not in a log file after the fact.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from pxetwist.config import Config, ConfigError, load_config
from pxetwist.policy.plugins import PluginError
from pxetwist.startup import ServerSetup, prepare, summarize

SYSTEM_CONFIG = Path("/etc/pxetwist/pxe.yaml")
BUNDLED_CONFIG = Path(__file__).resolve().parent / "data" / "pxe.yaml"


def default_config_path() -> Path:
    """``/etc/pxetwist/pxe.yaml`` when it exists, else the example config shipped in the package."""
    return SYSTEM_CONFIG if SYSTEM_CONFIG.exists() else BUNDLED_CONFIG


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Serve network boot (DHCP or proxyDHCP, TFTP, HTTP) from one YAML config. "
        "Config problems are reported as file:line: key: problem."
    )
    optParameters = [
        [
            "config",
            "c",
            None,
            f"The YAML config (default {SYSTEM_CONFIG}, else the bundled example).",
        ],
    ]
    optFlags = [
        ["check-config", None, "Validate the config and plugins, print a summary and exit."],
    ]
    compData = usage.Completions(optActions={"config": usage.CompleteFiles("*.yaml")})

    def __init__(self) -> None:
        super().__init__()
        self["interfaces"] = []
        self.setup: ServerSetup | None = None

    def opt_interface(self, name: str) -> None:
        """Serve this interface (repeatable); replaces the config's `interfaces`."""
        self["interfaces"].append(name)

    opt_i = opt_interface

    def postOptions(self) -> None:
        path = Path(self["config"]) if self["config"] else default_config_path()
        try:
            config = load_config(path)
            self.setup = prepare(config, interfaces=tuple(self["interfaces"]) or None)
        except (ConfigError, PluginError) as error:
            _exit(str(error) if isinstance(error, ConfigError) else f"{path}: {error}", 1)
        if self["check-config"] and self.setup is not None:
            print(summarize(self.setup))
            _exit(None, 0)


def _exit(message: str | None, code: int) -> Any:
    if message:
        sys.stderr.write(message + "\n")
        sys.stderr.flush()
    raise SystemExit(code)


def makeService(options: Options) -> IService:
    from pxetwist.reactor import install_default

    install_default()  # before the first import of the reactor
    from twisted.internet import reactor

    from pxetwist.context import server_reactor
    from pxetwist.privileges import from_twistd
    from pxetwist.service import PxeService

    assert options.setup is not None, "postOptions prepares the setup"
    # Until the service installs its reload handler, a SIGHUP is ignored rather than fatal.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    return PxeService(options.setup, server_reactor(reactor), from_twistd(options), settle_gc=True)


__all__ = ["Config", "Options", "makeService"]
