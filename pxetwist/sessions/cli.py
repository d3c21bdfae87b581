"""``pxetwist sessions`` and ``pxetwist machines reset-boot``: the operator's view of boots.

Both read ``data_dir/sessions.sqlite``, which the running server writes about once a second, so
they work while it runs (and after it stopped).

``pxetwist sessions --config PATH [--mac MAC] [--state STATE] [--limit N] [--json]``

With ``--json``: a JSON array of sessions, newest first, each with ``mac`` (lower-case colon
notation), ``state`` (``in-progress``, ``booted``, ``stuck`` or ``failed``), ``stage`` (the
furthest stage reached), ``hint`` (why it is stuck or failed), ``started``/``updated``/``ended``
(Unix seconds), ``stages`` (each stage reached with its time and how long until the next) and
``events`` (in time order: ``time``, ``protocol`` ``dhcp``/``tftp``/``http``/``nfs``/``os``,
``stage``, ``event``, ``outcome``, ``details``).  Without it: a table, or with ``--mac`` each
session's timeline.

``pxetwist machines reset-boot MAC [--config PATH]``

Arms a ``boot_once`` machine's network boot again: its next boot is a network boot.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from pxetwist.config import ConfigError, load_config
from pxetwist.config.model import Config
from pxetwist.policy.values import InvalidMacAddress, MacAddress
from pxetwist.sessions.diagnosis import judge_silent
from pxetwist.sessions.model import Session, SessionState, session_from_json
from pxetwist.sessions.shared import reset_shared
from pxetwist.sessions.store import SessionStore

STATES = [state.value for state in SessionState]


def add_session_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", help="the server's YAML config (for data_dir)")
    parser.add_argument("--mac", help="only this machine's sessions, with their timelines")
    parser.add_argument("--state", choices=STATES, help="only sessions in this state")
    parser.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    parser.add_argument("--json", action="store_true", help="print the sessions as JSON")


def add_machines_arguments(
    parser: argparse.ArgumentParser,
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """``reset-boot``; returns the subcommands, to which the API-backed ones are added."""
    actions = parser.add_subparsers(dest="action", required=True)
    reset = actions.add_parser(
        "reset-boot",
        help="arm a boot_once machine's network boot again",
        description="The machine's next boot is a network boot again (boot_once).",
    )
    reset.add_argument("mac", help="the machine's MAC address")
    reset.add_argument("--config", "-c", help="the server's YAML config (for data_dir)")
    return actions


def _config(path: str | None) -> Config:
    from pxetwist.tap import default_config_path

    return load_config(Path(path) if path else default_config_path())


def _mac(text: str) -> MacAddress:
    try:
        return MacAddress.parse(text)
    except InvalidMacAddress as error:
        raise SystemExit(_fail(str(error), 2)) from None


def _fail(message: str, code: int = 1) -> int:
    sys.stderr.write(f"pxetwist: {message}\n")
    return code


def load_sessions(
    config: Config, mac: MacAddress | None = None, limit: int = 50, now: float | None = None
) -> list[Session]:
    """The stored sessions, newest first, with silent ones judged as the server would."""
    path = config.sessions_path
    if not path.exists():
        return []
    store = SessionStore(path, readonly=True)
    try:
        values = store.sessions(None if mac is None else str(mac), limit=limit)
    finally:
        store.close()
    now = time.time() if now is None else now
    sessions = []
    for value in values:
        session = session_from_json(value)
        silent = now - session.updated >= config.sessions.stuck_after
        if session.state is SessionState.IN_PROGRESS and silent:
            judge_silent(session)
        sessions.append(session)
    return sessions


def run_sessions(args: argparse.Namespace) -> int:
    try:
        config = _config(args.config)
    except ConfigError as error:
        return _fail(str(error))
    mac = _mac(args.mac) if args.mac else None
    limit = max(args.limit, 1)
    # Filtering by state happens after reading, so read more than asked for then.
    sessions = load_sessions(config, mac, limit if args.state is None else max(limit * 20, 1000))
    if args.state is not None:
        sessions = [s for s in sessions if s.state.value == args.state][:limit]
    if args.json:
        print(json.dumps([session.as_json() for session in sessions], indent=2))
        return 0
    if not sessions:
        print(f"no sessions recorded in {config.sessions_path}" + (f" for {mac}" if mac else ""))
        return 0
    print(timelines(sessions) if mac is not None else table(sessions))
    return 0


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def table(sessions: list[Session]) -> str:
    lines = [f"{'MAC':17}  {'STATE':11}  {'STAGE':13}  {'STARTED':19}  {'SECONDS':>8}  HINT"]
    for session in sessions:
        end = session.ended if session.ended is not None else session.updated
        lines.append(
            f"{session.mac!s:17}  {session.state.value:11}  {session.stage.value:13}  "
            f"{_when(session.started)}  {end - session.started:8.1f}  {session.hint or ''}"
        )
    return "\n".join(lines)


def _summary(details: dict[str, Any]) -> str:
    shown = []
    for key in ("reply", "file", "path", "status", "bytes", "seconds", "blksize", "windowsize"):
        if details.get(key) is not None:
            shown.append(f"{key}={details[key]}")
    for key in ("retransmits", "policy", "action", "error"):
        if details.get(key):
            shown.append(f"{key}={details[key]}")
    return " ".join(shown)


def timelines(sessions: list[Session]) -> str:
    blocks = []
    for session in sessions:
        end = session.ended if session.ended is not None else session.updated
        lines = [
            f"{session.mac} {session.state.value} at {session.stage.value}: started "
            f"{_when(session.started)}, {end - session.started:.1f} s"
            + (f" (client {session.client})" if session.client else "")
        ]
        stages = " -> ".join(
            f"{item['stage']} {item['seconds']:.1f}s" for item in session.stage_timeline()
        )
        if stages:
            lines.append(f"  stages: {stages}")
        for event in session.events:
            lines.append(
                f"  +{event.time - session.started:8.3f}s  {event.protocol.value:4}  "
                f"{event.stage.value:13}  {event.outcome.value:8}  {_summary(dict(event.details))}"
            )
        if session.dropped_events:
            lines.append(f"  ({session.dropped_events} events in between not kept)")
        if session.hint:
            lines.append(f"  hint: {session.hint}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def run_machines(args: argparse.Namespace) -> int:
    if args.action != "reset-boot":
        return 2
    mac = _mac(args.mac)
    try:
        config = _config(args.config)
    except ConfigError as error:
        return _fail(str(error))
    path = config.sessions_path
    record = None
    if path.exists():
        store = SessionStore(path)
        try:
            record = store.reset_boot(str(mac))
        finally:
            store.close()
    # With the leases on PostgreSQL every server reads boot-once state from there.
    record = reset_shared(config, str(mac)) or record
    if record is None:
        print(f"{mac}: boot once was not used up; its next boot is a network boot")
    else:
        print(
            f"{mac}: boot once armed again (it was used up at {_when(record.used_at)}: "
            f"{record.how}); its next boot is a network boot"
        )
    return 0
