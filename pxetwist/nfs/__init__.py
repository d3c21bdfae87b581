"""The NFS export wrapper: per-machine exports on NFS-Ganesha, granted and withdrawn by policy.

``paths`` (templates, confinement, pseudo paths), ``exports`` (decision -> planned exports,
``{nfs}`` text, stable export ids), ``render`` (ganesha.conf and EXPORT blocks), ``lifecycle``
(which address an export belongs to), ``bus`` (DBus to Ganesha), ``managed`` (running Ganesha)
and ``service`` (all of it in ``twistd pxe``).  Never an NFS server in Python.
"""
