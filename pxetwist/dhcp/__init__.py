"""DHCPv4 for pxetwist, split the sans-I/O way.

:mod:`pxetwist.dhcp.options` names the option codes and turns typed values into option bytes
and back. :mod:`pxetwist.dhcp.packet` turns datagrams into frozen
:class:`~pxetwist.dhcp.packet.DhcpPacket` values and back. Neither module imports Twisted or
touches a socket, so the engine and the tests can drive them with plain bytes.
"""
