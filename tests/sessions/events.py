"""Synthetic boot events for the session tests: one helper per protocol's emit point."""

from __future__ import annotations

from ipaddress import IPv4Address

from pxetwist.events import BootEvent, EventProtocol, EventStage, Outcome
from pxetwist.policy.decision import BootDecision
from pxetwist.policy.values import MacAddress

MAC = MacAddress.parse("52:54:00:77:00:10")
OTHER = MacAddress.parse("52:54:00:77:00:11")
CLIENT = IPv4Address("10.77.1.10")
DECISION = BootDecision(
    program="undionly.kpxe",
    kernel="debian/linux",
    initrds=("debian/initrd.gz",),
    policy="static",
    reason="machine node1 (by MAC)",
)


def dhcp(
    time: float,
    stage: EventStage = EventStage.DISCOVER,
    *,
    firmware: str = "pxe",
    outcome: Outcome = Outcome.OK,
    reply: str | None = "OFFER",
    mac: MacAddress | None = MAC,
    client: IPv4Address | None = None,
    decision: BootDecision | None = DECISION,
    **details: object,
) -> BootEvent:
    facts: dict[str, object] = {"firmware": firmware, "reply": reply, **details}
    if decision is not None:
        facts["decision"] = decision
        facts["policy"] = decision.policy
    return BootEvent(
        time=time,
        protocol=EventProtocol.DHCP,
        stage=stage,
        outcome=outcome,
        mac=mac,
        client=client,
        details=facts,
    )


def tftp(
    time: float,
    file: str,
    *,
    outcome: Outcome = Outcome.OK,
    mac: MacAddress | None = None,
    client: IPv4Address | None = CLIENT,
    stage: EventStage = EventStage.TFTP_TRANSFER,
    **details: object,
) -> BootEvent:
    return BootEvent(
        time=time,
        protocol=EventProtocol.TFTP,
        stage=stage,
        outcome=outcome,
        mac=mac,
        client=client,
        details={"file": file, "bytes": 1000, "seconds": 0.5, **details},
    )


def http(
    time: float,
    path: str,
    *,
    status: int = 200,
    outcome: Outcome = Outcome.OK,
    mac: MacAddress | None = None,
    client: IPv4Address | None = CLIENT,
    **details: object,
) -> BootEvent:
    return BootEvent(
        time=time,
        protocol=EventProtocol.HTTP,
        stage=EventStage.HTTP_REQUEST,
        outcome=outcome,
        mac=mac,
        client=client,
        details={"path": path, "status": status, "method": "GET", "bytes": 1000, **details},
    )


def os_up(time: float, mac: MacAddress = MAC) -> BootEvent:
    return BootEvent(
        time=time,
        protocol=EventProtocol.OS,
        stage=EventStage.OS_UP,
        outcome=Outcome.OK,
        mac=mac,
        client=CLIENT,
        details={"path": "/boot/done"},
    )


def full_boot(start: float = 1000.0, mac: MacAddress = MAC) -> list[BootEvent]:
    """A BIOS machine booting through iPXE in authoritative mode, one event per step."""
    return [
        dhcp(start, mac=mac),
        dhcp(start + 1, EventStage.REQUEST, reply="ACK", mac=mac, client=CLIENT),
        tftp(start + 2, "undionly.kpxe", mac=mac),
        dhcp(start + 5, firmware="ipxe", mac=mac),
        dhcp(start + 6, EventStage.REQUEST, firmware="ipxe", reply="ACK", mac=mac, client=CLIENT),
        http(start + 7, "/boot.ipxe?mac=52:54:00:77:00:10", mac=mac),
        http(start + 8, "/debian/linux"),
        http(start + 10, "/debian/initrd.gz"),
        dhcp(start + 30, firmware="plain", reply="OFFER", mac=mac, decision=None),
    ]
