"""Hypothesis strategies for the DHCP codec, kept in one module (style guide §3).

``packets()`` draws valid :class:`DhcpPacket` values: every invariant the class enforces is
respected, and values are sometimes long enough to need RFC 3396 splitting. ``datagrams()``
draws the bytes a hostile network might deliver: random bytes, and valid datagrams that have
been truncated, bit-flipped or extended. A parser bug hides in those near-misses more often
than in pure noise, which almost never gets past the magic cookie.
"""

from __future__ import annotations

import ipaddress

from hypothesis import settings
from hypothesis import strategies as st

from pxetwist.dhcp.options import MessageType, Op, OptionCode
from pxetwist.dhcp.packet import DhcpPacket, encode

#: Settings for every property test here: no example database written into the work tree, and
#: no per-example deadline (shared CI machines are slow and deadlines would only add flakiness).
PROPERTY_SETTINGS = settings(database=None, deadline=None)

_FIXED_LENGTH: dict[int, int] = {
    OptionCode.REQUESTED_IP: 4,
    OptionCode.LEASE_TIME: 4,
    OptionCode.SERVER_ID: 4,
    OptionCode.MAX_MESSAGE_SIZE: 2,
    OptionCode.RENEWAL_T1: 4,
    OptionCode.REBINDING_T2: 4,
    OptionCode.SUBNET_SELECTION: 4,
}

#: Codes drawn for options: anything a packet may carry. 53 is drawn separately (it must agree
#: with ``op``), and PAD, END and OVERLOAD are framing, not content.
_OPTION_CODES = st.integers(min_value=1, max_value=254).filter(
    lambda code: code not in (OptionCode.OVERLOAD, OptionCode.MESSAGE_TYPE)
)


def ipv4_addresses() -> st.SearchStrategy[ipaddress.IPv4Address]:
    """Any IPv4 address, with 0.0.0.0 drawn often (it is the common case in the header)."""
    return st.one_of(
        st.just(ipaddress.IPv4Address(0)),
        st.integers(min_value=0, max_value=2**32 - 1).map(ipaddress.IPv4Address),
    )


def option_values(code: int) -> st.SearchStrategy[bytes]:
    """A value option ``code`` may legally hold in a :class:`DhcpPacket`."""
    fixed = _FIXED_LENGTH.get(code)
    if fixed is not None:
        return st.binary(min_size=fixed, max_size=fixed)
    if code == OptionCode.CLIENT_ARCH:
        return st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=4).map(
            lambda arches: b"".join(arch.to_bytes(2, "big") for arch in arches)
        )
    # Mostly short, sometimes longer than 255 bytes so that encode must split (RFC 3396).
    return st.one_of(st.binary(max_size=40), st.binary(min_size=250, max_size=600))


@st.composite
def option_lists(draw: st.DrawFn, max_options: int = 10) -> tuple[tuple[int, bytes], ...]:
    """Options with unique codes, in a random order, excluding 53."""
    codes = draw(st.lists(_OPTION_CODES, unique=True, max_size=max_options))
    return tuple((code, draw(option_values(code))) for code in codes)


@st.composite
def packets(draw: st.DrawFn, op: Op | None = None) -> DhcpPacket:
    """A valid packet: header fields in range, names short enough to encode, a matching 53."""
    if op is None:
        op = draw(st.sampled_from(Op))
    options = list(draw(option_lists()))
    kinds = [kind for kind in MessageType if kind.op == op]
    kind = draw(st.none() | st.sampled_from(kinds))
    if kind is not None:
        position = draw(st.integers(0, len(options)))
        options.insert(position, (OptionCode.MESSAGE_TYPE, bytes((kind,))))
    return DhcpPacket(
        op=op,
        htype=draw(st.integers(0, 255)),
        hlen=draw(st.integers(0, 255)),
        hops=draw(st.integers(0, 255)),
        xid=draw(st.integers(0, 2**32 - 1)),
        secs=draw(st.integers(0, 0xFFFF)),
        flags=draw(st.integers(0, 0xFFFF)),
        ciaddr=draw(ipv4_addresses()),
        yiaddr=draw(ipv4_addresses()),
        siaddr=draw(ipv4_addresses()),
        giaddr=draw(ipv4_addresses()),
        chaddr=draw(st.binary(min_size=16, max_size=16)),
        sname=draw(st.binary(max_size=63)),
        file=draw(st.binary(max_size=127)),
        options=tuple(options),
    )


@st.composite
def mutated_datagrams(draw: st.DrawFn) -> bytes:
    """A valid encoded packet with a few random edits (truncation, overwrites, insertions)."""
    data = bytearray(encode(draw(packets()), max_size=65535))
    for _ in range(draw(st.integers(1, 4))):
        edit = draw(st.sampled_from(("truncate", "overwrite", "insert")))
        position = draw(st.integers(0, len(data)))
        if edit == "truncate":
            del data[position:]
        elif edit == "overwrite" and position < len(data):
            data[position] = draw(st.integers(0, 255))
        else:
            data[position:position] = draw(st.binary(min_size=1, max_size=4))
    return bytes(data)


@st.composite
def cookie_prefixed_noise(draw: st.DrawFn) -> bytes:
    """A random header, the right cookie, then random option bytes: exercises the TLV scanner."""
    header = draw(st.binary(min_size=236, max_size=236))
    op = draw(st.sampled_from((b"\x01", b"\x02", b"\x00", b"\x07")))
    body = draw(st.binary(max_size=400))
    return op + header[1:] + b"\x63\x82\x53\x63" + body


def datagrams() -> st.SearchStrategy[bytes]:
    """Any bytes a socket might deliver, weighted towards almost-valid DHCP."""
    return st.one_of(st.binary(max_size=700), mutated_datagrams(), cookie_prefixed_noise())
