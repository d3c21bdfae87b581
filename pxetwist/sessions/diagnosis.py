"""Why a boot stopped, in words: the hint a stuck or failed session carries.

The hints follow where the boot got to (the session's stage) and how its last step ended, and
cite what usually goes wrong there, from the protocol reference (``../shared/docs``) and what
the e2e lab has seen with real firmware:

* an offer and no request: another DHCP server answered first, or the offer does not reach the
  client (§2.3, §1.6); some ROMs drop replies that come too fast (§5 quirk 6);
* an ACK and no boot program fetched: the client cannot reach TFTP at ``siaddr`` (§2.2), or a
  UEFI client wanted the port-4011 boot server (§2.3, §5 quirk 8);
* an NBP downloaded and nothing asked for next: Secure Boot refused an unsigned NBP
  (firmware notes: "Access Denied"), or the NBP is for another architecture (§2.4);
* iPXE's own DHCP and no script: its reply had no script URL, or the chainload loop (§4.2);
* a script and no kernel: the script failed (a template or kernel URL error);
* kernel and initrd and no OS: a kernel panic or a wrong command line; the call-back URL
  gives a definite signal;
* many TFTP retransmits: a block size above the path MTU (§5 quirk 13, §6.3).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from pxetwist.events import EventProtocol, EventStage, Outcome
from pxetwist.sessions.model import BootStage, Session, SessionEvent, SessionState

#: Retransmits in one TFTP transfer from which the hint blames the block size or the link.
RETRANSMIT_HINT: Final = 8

_STAGE_HINTS: Final = {
    BootStage.DHCP_DISCOVER: (
        "pxetwist saw the DISCOVER but did not answer it{why}: check the policy "
        "(pxetwist explain --mac {mac}) and that the machine is configured"
    ),
    BootStage.DHCP_OFFER: (
        "offer sent but no request followed: another DHCP server may have answered first, the "
        "offer may not reach the client (wrong VLAN, relay, firewall), or the firmware drops "
        "replies that come too fast (dhcp.quirks.reply_delay)"
    ),
    BootStage.DHCP_REQUEST: (
        "the client's request was not acknowledged{why}: in proxy mode another DHCP server "
        "owns the addresses; check that it answers, and that the client then asks for its boot file"
    ),
    BootStage.DHCP_ACK: (
        "address acknowledged but the boot program was never fetched: the client may not reach "
        "TFTP at the server address (firewall on UDP 69, siaddr behind NAT: server_address), or "
        "a UEFI client expected the PXE boot server on UDP 4011 (dhcp.boot_server)"
    ),
    BootStage.BOOT_SERVER: (
        "the boot server (UDP 4011) answered but the boot program was never fetched over TFTP: "
        "firewall on UDP 69, or the TFTP server address the client uses is wrong"
    ),
    BootStage.NBP: (
        "the boot program {file}was downloaded but nothing was asked for next: Secure Boot may "
        "have refused an unsigned NBP (the firmware says 'Access Denied'), the NBP may be for "
        "another architecture{arch}, or its own DHCP did not reach pxetwist"
    ),
    BootStage.IPXE_DHCP: (
        "iPXE did its DHCP but did not fetch its script: its reply may lack the script URL "
        "(boot.ipxe), or iPXE cannot reach HTTP on the server (port, firewall)"
    ),
    BootStage.SCRIPT: (
        "the boot script was fetched but not the kernel: the script may have failed (a "
        "template error or a wrong kernel URL; check the rendered script), or the kernel file "
        "is missing"
    ),
    BootStage.KERNEL: (
        "the kernel was fetched but not the initrd: the loader stopped after the kernel (a "
        "wrong initrd path, or not enough memory for it)"
    ),
    BootStage.INITRD: (
        "kernel and initrd were served but the booted OS never showed up: a kernel panic, a "
        "wrong command line (console=, root=, ip=), or the OS's DHCP goes to another server; "
        "put the call-back URL ({{{{ done_url }}}}) on the kernel command line for a definite "
        "signal"
    ),
    BootStage.NFS_MOUNT: (
        "the NFS root was mounted but the OS never called back: check the console for errors "
        "after the root mount"
    ),
}


def diagnose(session: Session) -> str:
    """The hint for a session that stopped at its stage (stuck, or failed)."""
    last = session.last_event
    parts: list[str] = []
    failure = _failure(last) if last is not None else None
    if failure is not None:
        parts.append(failure)
    stage = session.stage
    if (
        last is not None
        and last.stage is BootStage.DHCP_REQUEST
        and stage is BootStage.DHCP_OFFER
        and last.outcome is Outcome.IGNORED
    ):
        stage = BootStage.DHCP_REQUEST  # proxyDHCP: the client took another server's address
    template = _STAGE_HINTS.get(stage)
    if template is not None and failure is None:
        parts.append(
            template.format(
                mac=session.mac,
                why=_why(last),
                file=_nbp_name(session.events),
                arch=_arch(session),
            )
        )
    retransmits = _retransmit_hint(session.events)
    if retransmits is not None:
        parts.append(retransmits)
    if not parts:
        parts.append(f"no progress after {session.stage.value}")
    return "; ".join(parts)


def judge_silent(session: Session) -> None:
    """A session that has gone silent: ``failed`` if its last step failed, else ``stuck``.

    The registry's timer calls it, and ``pxetwist sessions`` for a session the store still
    shows in progress long after its last event (the server was stopped, say).
    """
    last = session.last_event
    failed = last is not None and (
        last.outcome in (Outcome.REFUSED, Outcome.FAILED)
        or (last.stage is BootStage.DHCP_DISCOVER and last.outcome is Outcome.IGNORED)
    )
    session.state = SessionState.FAILED if failed else SessionState.STUCK
    session.hint = diagnose(session)
    if failed:
        session.ended = session.updated


def _why(last: SessionEvent | None) -> str:
    if last is None:
        return ""
    reason = last.details.get("reason") or last.details.get("why")
    if isinstance(reason, str) and reason:
        return f" ({reason})"
    if last.outcome is not Outcome.OK:
        return f" ({last.outcome.value})"
    return ""


def _nbp_name(events: Sequence[SessionEvent]) -> str:
    for event in reversed(events):
        if event.stage is BootStage.NBP:
            name = event.details.get("file") or event.details.get("path")
            if isinstance(name, str):
                return f"{name} "
    return ""


def _arch(session: Session) -> str:
    for event in session.events:
        arch = event.details.get("arch")
        if arch is not None:
            return f" (the client said arch {arch})"
    return ""


def _failure(last: SessionEvent) -> str | None:
    """What the last step's failure says, when it was a file or a refused request."""
    if last.outcome in (Outcome.OK, Outcome.IGNORED) or last.protocol is EventProtocol.DHCP:
        return None
    name = last.details.get("file") or last.details.get("path") or "a file"
    what = last.stage.value if last.stage is not BootStage.FILE else "file"
    if last.protocol is EventProtocol.HTTP:
        status = last.details.get("status")
        if status == 404:
            return f"{what} {name} was not found over HTTP (404): check the path under http.root"
        if last.outcome is Outcome.FAILED:
            return f"the HTTP download of {what} {name} broke off (client went away)"
        return f"HTTP refused {what} {name} (status {status})"
    if last.protocol is EventProtocol.TFTP:
        error = (
            last.details.get("detail")
            or last.details.get("reason")
            or last.details.get("error")
            or last.outcome.value
        )
        if last.event is EventStage.TFTP_REQUEST:
            return f"TFTP refused {what} {name}: {error}"
        return f"the TFTP transfer of {what} {name} failed: {error}"
    return f"{what} {name}: {last.outcome.value}"


def _retransmit_hint(events: Sequence[SessionEvent]) -> str | None:
    worst: SessionEvent | None = None
    most = 0
    for event in events:
        if event.protocol is not EventProtocol.TFTP:
            continue
        count = event.details.get("retransmits")
        if isinstance(count, int) and count > most:
            worst, most = event, count
    if worst is None or most < RETRANSMIT_HINT:
        return None
    blksize = worst.details.get("blksize")
    size = f" at blksize {blksize}" if blksize else ""
    return (
        f"the TFTP transfer of {worst.details.get('file', 'a file')} needed {most} "
        f"retransmits{size}: the block size may be above the path MTU (tftp.max_blksize), or "
        "the link drops packets (try a smaller window or HTTP)"
    )
