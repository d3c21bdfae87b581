# -*- test-case-name: tests.sessions.test_callback -*-
"""``/boot/done``: the booted OS calls home, and its boot session ends as ``booted``.

The one definite signal that a network boot went all the way: a line in the booted system
(an initramfs hook, a systemd unit, an installer's late command) fetches the URL pxetwist
put on its kernel command line.  Templates get it as ``{{ done_url }}`` and a decision's
``cmdline`` as ``{done_url}`` (:func:`pxetwist.policy.render.done_url`):
``http://<server>:<http_port>/boot/done?mac=<mac>``.  For example, with
``cmdline: "console=ttyS0 pxetwist.done={done_url}"``, an initramfs script can run::

    wget -q -O /dev/null "$(sed -n 's/.*pxetwist\\.done=\\([^ ]*\\).*/\\1/p' /proc/cmdline)"

The request reports an ``os``/``os-up`` event on the bus: the session registry ends the
machine's session as ``booted``, and boot once counts the boot as gone through.  The machine
is the ``mac=`` of the query, else the one DHCP last saw at the caller's address.  Answers:
200 ``ok``; 400 when the MAC is not a MAC address or no machine is known at that address.
"""

from __future__ import annotations

from ipaddress import AddressValueError, IPv4Address
from typing import Final

from twisted.web.server import Request

from pxetwist.context import ServerContext
from pxetwist.events import BootEvent, EventProtocol, EventStage, Outcome
from pxetwist.policy.render import DONE_PATH
from pxetwist.policy.values import InvalidMacAddress, MacAddress

PATH: Final = DONE_PATH.encode()


class BootDone:
    """The call-back route; :class:`~pxetwist.http.service.BootRoot` sends ``/boot/done`` here."""

    def __init__(self, context: ServerContext) -> None:
        self.context = context

    @staticmethod
    def claims(request: Request) -> bool:
        return request.path == PATH or request.path == PATH + b"/"

    def render(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        client = _client(request)
        values = request.args.get(b"mac") if request.args else None
        mac: MacAddress | None = None
        if values:
            try:
                mac = MacAddress.parse(values[0].decode("ascii", "replace"))
            except InvalidMacAddress:
                request.setResponseCode(400)
                return b"mac= is not a MAC address\n"
        elif client is not None:
            mac = self.context.sightings.mac_seen_at(client)
        if mac is None:
            request.setResponseCode(400)
            return b"which machine? add ?mac=<its MAC address>\n"
        self.context.events.emit(
            BootEvent(
                time=self.context.reactor.seconds(),
                protocol=EventProtocol.OS,
                stage=EventStage.OS_UP,
                outcome=Outcome.OK,
                mac=mac,
                client=client,
                details={"path": PATH.decode(), "via": "call-back"},
                message="{mac} called back from {client}: its OS is up",
            )
        )
        return b"ok\n"


def _client(request: Request) -> IPv4Address | None:
    host = getattr(request.getClientAddress(), "host", None)
    try:
        return IPv4Address(host) if isinstance(host, str) else None
    except AddressValueError:
        return None
