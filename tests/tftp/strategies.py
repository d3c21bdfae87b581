"""Hypothesis strategies for TFTP packet values, kept in one place (style.md §3)."""

from __future__ import annotations

from hypothesis import strategies as st

from pxetwist.tftp.packet import (
    Ack,
    Data,
    Error,
    ErrorCode,
    OptionAck,
    Packet,
    ReadRequest,
    WriteRequest,
)

# Text fields are latin-1 on the wire; NUL is the field separator and cannot appear inside.
_latin1 = st.characters(min_codepoint=1, max_codepoint=0xFF)
field_text = st.text(alphabet=_latin1, min_size=1, max_size=40)
maybe_empty_text = st.text(alphabet=_latin1, max_size=40)


def _ascii_lower(text: str) -> str:
    """What decode does to names and modes: fold ASCII letters only, like bytes.lower()."""
    return text.encode("latin-1").lower().decode("latin-1")


lowered_text = field_text.map(_ascii_lower)
options = st.lists(st.tuples(lowered_text, maybe_empty_text), max_size=6).map(tuple)
wire_number = st.integers(min_value=0, max_value=0xFFFF)
error_code = st.one_of(st.sampled_from(ErrorCode), wire_number)

read_requests = st.builds(ReadRequest, field_text, lowered_text, options)
write_requests = st.builds(WriteRequest, field_text, lowered_text, options)
data_packets = st.builds(Data, wire_number, st.binary(max_size=1500))
acks = st.builds(Ack, wire_number)
errors = st.builds(Error, error_code, maybe_empty_text)
option_acks = st.builds(OptionAck, options)

packets: st.SearchStrategy[Packet] = st.one_of(
    read_requests, write_requests, data_packets, acks, errors, option_acks
)
