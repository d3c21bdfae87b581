"""``pxetwist`` subcommands that drive a running server through its API.

``pxetwist leases [--mac MAC] [--state STATE] [--subnet NET]`` and ``pxetwist leases --release
ADDRESS``; ``pxetwist machines list|show|add|set|delete|boot-once`` beside ``reset-boot``;
``--api``/``--config``, ``--token-file`` (or ``$PXETWIST_API_TOKEN``) and ``--json`` on each
(see :mod:`pxetwist.api.client`).  Errors print the server's message and the field at fault and
exit 1 (2 when the server cannot be reached or no token is given).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from pxetwist.api.client import (
    ApiClient,
    ApiClientError,
    add_connection_arguments,
)

#: ``machines add``/``set`` options and the config keys they set.
_MACHINE_OPTIONS = (
    ("--name", "name", "the machine's name"),
    ("--group", "group", "take this group's settings as defaults"),
    ("--kernel", "kernel", "kernel path or URL"),
    ("--cmdline", "cmdline", "kernel command line"),
    ("--action", "action", "boot, local or ignore"),
    ("--uuid", "uuid", "SMBIOS UUID (option 97)"),
    ("--address", "address", "DHCP reservation: an IPv4 address in a served subnet"),
)


def _table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> str:
    cells = [[str(c) if c is not None else "-" for c in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in cells
    )


def _print(args: argparse.Namespace, answer: Any, text: Callable[[Any], str]) -> None:
    if args.json:
        sys.stdout.write(json.dumps(answer, indent=2) + "\n")
    elif answer is not None:
        sys.stdout.write(text(answer).rstrip("\n") + "\n")


def _run(
    args: argparse.Namespace, action: Callable[[ApiClient], Any], text: Callable[[Any], str]
) -> int:
    try:
        client = ApiClient.from_args(args)
        answer = action(client)
    except ApiClientError as error:
        sys.stderr.write(f"pxetwist {args.command}: {error}\n")
        return 1 if error.status is not None else 2
    _print(args, answer, text)
    return 0


# -- leases ------------------------------------------------------------------------------------


def add_leases_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mac", help="only this client's leases")
    parser.add_argument("--state", help="offered, bound, released or declined")
    parser.add_argument("--subnet", help="only leases in this network")
    parser.add_argument(
        "--release", metavar="ADDRESS", help="release this lease, as its client would"
    )
    add_connection_arguments(parser)


def _expires(value: float | None) -> str:
    return "never" if value is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))


def _leases_text(leases: list[dict[str, Any]]) -> str:
    if not leases:
        return "no leases"
    rows = [(l["address"], l["mac"], l["state"], _expires(l["expires"])) for l in leases]  # noqa: E741
    return _table(rows, ("ADDRESS", "MAC", "STATE", "EXPIRES"))


def run_leases(args: argparse.Namespace) -> int:
    if args.release:
        return _run(
            args,
            lambda c: c.call("DELETE", f"/api/v1/leases/{args.release}"),
            lambda lease: f"released {lease['address']} (was {lease['mac']})",
        )
    query = {"mac": args.mac, "state": args.state, "subnet": args.subnet}
    return _run(args, lambda c: c.call("GET", "/api/v1/leases", query=query), _leases_text)


# -- machines ----------------------------------------------------------------------------------

MACHINE_ACTIONS = ("list", "show", "add", "set", "delete", "boot-once")


def add_machine_actions(actions: Any) -> None:
    """Add the API-backed actions to ``pxetwist machines``' subparsers."""
    listing = actions.add_parser("list", help="every machine (config and API), via the API")
    show = actions.add_parser("show", help="one machine's definition and latest boot")
    add = actions.add_parser("add", help="define a machine through the API (effective at once)")
    change = actions.add_parser("set", help="change some keys of a machine through the API")
    delete = actions.add_parser("delete", help="forget a machine defined through the API")
    once = actions.add_parser("boot-once", help="a machine's boot-once state, via the API")
    for sub in (show, add, change, delete, once):
        sub.add_argument("mac", help="the machine's MAC address")
    for sub in (add, change):
        for flag, key, text in _MACHINE_OPTIONS:
            # dest apart from the subcommand's own ("action" names the machines subcommand)
            sub.add_argument(flag, dest=f"machine_{key}", help=text)
        sub.add_argument("--initrd", action="append", help="initrd path or URL (repeatable)")
        sub.add_argument(
            "--boot-once", action="store_true", default=None, help="netboot once, then local"
        )
        sub.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=JSON",
            help='any other machine key, e.g. boot=\'{"bios": "pxelinux.0"}\'',
        )
    for sub in (listing, show, add, change, delete, once):
        add_connection_arguments(sub)


def _definition(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for _, key, _ in _MACHINE_OPTIONS:
        value = getattr(args, f"machine_{key}")
        if value is not None:
            body[key] = value
    if args.initrd:
        body["initrd"] = args.initrd
    if args.boot_once:
        body["boot_once"] = True
    for item in args.set:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ApiClientError(f"--set {item!r}: write KEY=JSON")
        try:
            body[key] = json.loads(raw)
        except ValueError:
            body[key] = raw  # a plain string
    return body


def _machines_text(machines: list[dict[str, Any]]) -> str:
    if not machines:
        return "no machines"
    rows = [
        (m["mac"], m.get("name"), m.get("group"), m.get("kernel"), m.get("action"), m["source"])
        for m in machines
    ]
    return _table(rows, ("MAC", "NAME", "GROUP", "KERNEL", "ACTION", "SOURCE"))


def _machine_text(machine: dict[str, Any]) -> str:
    lines = [
        f"{key}: {json.dumps(value) if not isinstance(value, str) else value}"
        for key, value in machine.items()
        if key != "latest_session"
    ]
    session = machine.get("latest_session")
    if session:
        lines.append(
            f"latest boot: {session['state']} at {session['stage']}"
            + (f" ({session['hint']})" if session.get("hint") else "")
        )
    return "\n".join(lines)


def run_machine_action(args: argparse.Namespace) -> int | None:
    """Run an API-backed ``pxetwist machines`` action; ``None`` if the action is not one."""
    action = args.action
    if action not in MACHINE_ACTIONS:
        return None
    if action == "list":
        return _run(args, lambda c: c.call("GET", "/api/v1/machines"), _machines_text)
    path = f"/api/v1/machines/{args.mac}"
    if action == "show":

        def show(client: ApiClient) -> Any:
            machine = client.call("GET", path)
            sessions = client.call("GET", f"/api/v1/sessions/{args.mac}", query={"limit": "1"})
            machine["latest_session"] = sessions[0] if sessions else None
            return machine

        return _run(args, show, _machine_text)
    if action in ("add", "set"):
        try:
            body = _definition(args)
        except ApiClientError as error:
            sys.stderr.write(f"pxetwist machines {action}: {error}\n")
            return 2
        if action == "add":
            return _run(
                args,
                lambda c: c.call("POST", "/api/v1/machines", {**body, "mac": args.mac}),
                _machine_text,
            )
        return _run(args, lambda c: c.call("PATCH", path, body), _machine_text)
    if action == "delete":
        return _run(
            args,
            lambda c: c.call("DELETE", path) or {"mac": args.mac, "deleted": True},
            lambda answer: f"deleted {answer['mac']}",
        )
    return _run(
        args,
        lambda c: c.call("GET", path + "/boot-once"),
        lambda state: json.dumps(state),
    )


# -- sessions and reload of a remote server (beside the local ``pxetwist sessions``/``reload``) ---


def run_remote_sessions(args: argparse.Namespace) -> int:
    """``pxetwist sessions --api URL``: the same output, from the server's API."""
    from pxetwist.sessions.cli import table, timelines
    from pxetwist.sessions.model import session_from_json

    def fetch(client: ApiClient) -> Any:
        query = {"limit": str(max(args.limit, 1))}
        if args.mac:
            return client.call("GET", f"/api/v1/sessions/{args.mac}", query=query)
        if args.state:
            query["state"] = args.state
        return client.call("GET", "/api/v1/sessions", query=query)

    def text(found: list[dict[str, Any]]) -> str:
        if not found:
            return "no sessions" + (f" for {args.mac}" if args.mac else "")
        sessions = [session_from_json(value) for value in found]
        return timelines(sessions) if args.mac else table(sessions)

    return _run(args, fetch, text)


def run_remote_reload(args: argparse.Namespace) -> int:
    """``pxetwist reload --api URL``: reload through the API, print what ``reload`` prints."""
    from pxetwist.control import print_reload_summary

    try:
        client = ApiClient.from_args(args)
        summary = client.call("POST", "/api/v1/reload")
    except ApiClientError as error:
        sys.stderr.write(f"pxetwist reload: {error}\n")
        return 1 if error.status is not None else 2
    print_reload_summary(summary)
    return 0
