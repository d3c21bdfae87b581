"""Twisted dropin for ``twistd pxe``: lazy, so ``twistd --help`` imports nothing of pxetwist."""

from twisted.application.service import ServiceMaker

pxetwist = ServiceMaker(
    "pxetwist", "pxetwist.tap", "A network-boot server: DHCP, proxyDHCP, TFTP and HTTP.", "pxe"
)
