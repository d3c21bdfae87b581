"""Read-only TFTP for network boot, written sans-I/O.

:mod:`~pxetwist.tftp.packet` turns datagrams into frozen values and back,
:mod:`~pxetwist.tftp.session` is the state machine of one read transfer (options, windows,
retransmission), and :mod:`pxetwist.paths` (shared with boot-config rendering) confines requested
names to the TFTP root.
None of them import Twisted, so the protocol rules are tested with plain values and a fake clock;
the Twisted protocol is a thin adapter that feeds datagrams and timer events in and writes out what
comes back.
"""
