"""pxetwist's HTTP front end on :mod:`twisted.web`: boot files for iPXE, GRUB and UEFI HTTP Boot.

:mod:`pxetwist.http.static` serves kernels, initrds, ISO images and EFI programs from a directory,
with the headers firmware needs (protocol-reference §3) and ``sendfile(2)`` on plain TCP.
"""
