"""Boot sessions: each machine's boot as one timeline across DHCP, 4011, TFTP, HTTP and NFS.

* :mod:`~pxetwist.sessions.model`: stages, states, a session and its events (the JSON shape);
* :mod:`~pxetwist.sessions.classify`: which stage an event shows;
* :mod:`~pxetwist.sessions.registry`: the bus observer that keeps the sessions;
* :mod:`~pxetwist.sessions.diagnosis`: why a session is stuck, in words;
* :mod:`~pxetwist.sessions.attribution`: the MAC of events that carry only an address;
* :mod:`~pxetwist.sessions.bootonce`: boot once, confirmed by the server;
* :mod:`~pxetwist.sessions.store` and :mod:`~pxetwist.sessions.recorder`: SQLite in
  ``data_dir``, written off the reactor;
* :mod:`~pxetwist.sessions.cli`: ``pxetwist sessions`` and ``pxetwist machines reset-boot``.
"""
