"""pxetwist: a network-boot (PXE) server on Twisted.

DHCP, proxyDHCP, TFTP and HTTP front ends all ask one boot policy what a machine boots; see
:mod:`pxetwist.policy`.
"""

__version__ = "0.1.0"
