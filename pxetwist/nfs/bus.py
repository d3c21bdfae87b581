"""Ganesha's export manager over DBus, with txdbus (a DBus client native to Twisted).

Ganesha takes exports at run time through ``org.ganesha.nfsd.exportmgr`` on
``/org/ganesha/nfsd/ExportMgr`` (nfs-notes, "Run-time changes over DBus"):

* ``AddExport(s path, s expression)``: read the file at ``path`` and add the export block the
  expression selects, ``EXPORT(Export_Id=N)``;
* ``RemoveExport(q id)``;
* ``ShowExports() -> (t, t), a(qs...)``: the time and every export's id and pseudo path;
* ``ShowClients() -> (t, t), a(s((sb)...)(tt))`` on ``/org/ganesha/nfsd/ClientMgr``
  (``org.ganesha.nfsd.clientmgr``): every client address Ganesha has served, with the protocols
  it used (``NFSv3``, ``MNT``, ``NFSv40``, ``NFSv41``...).

Each call is a few milliseconds and takes effect at once, so exports change without restarting
Ganesha (which would cut every diskless machine's root for seconds).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.logger import Logger
from txdbus import client as dbus_client
from txdbus.error import DBusException, RemoteError

from pxetwist.context import IServerReactor

log = Logger()

DESTINATION = "org.ganesha.nfsd"
OBJECT_PATH = "/org/ganesha/nfsd/ExportMgr"
INTERFACE = "org.ganesha.nfsd.exportmgr"
CLIENTS_PATH = "/org/ganesha/nfsd/ClientMgr"
CLIENTS_INTERFACE = "org.ganesha.nfsd.clientmgr"
CALL_TIMEOUT = 10.0  # seconds; an answer normally takes 3-11 ms


class GaneshaBusError(Exception):
    """A DBus call to Ganesha failed: no bus, Ganesha not on it, or Ganesha refused.

    ``refused`` is true when Ganesha itself answered with an error (a bad export, an id in
    use): the bus works, only that one call failed.
    """

    def __init__(self, message: str, *, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


class GaneshaBus:
    """One DBus connection to a Ganesha's export manager, made on first use and remade if lost."""

    def __init__(self, reactor: IServerReactor, address: str) -> None:
        self.reactor = reactor
        self.address = address
        self._connection: Any = None

    @inlineCallbacks
    def _connect(self) -> Any:
        if self._connection is None:
            try:
                connection = yield dbus_client.connect(self.reactor, self.address)
            except Exception as error:
                raise GaneshaBusError(f"cannot reach the bus {self.address}: {error}") from error
            connection.notifyOnDisconnect(self._lost)
            self._connection = connection
        return self._connection

    def _lost(self, _connection: object, _reason: object) -> None:
        self._connection = None

    @inlineCallbacks
    def _call(
        self,
        method: str,
        signature: str | None,
        body: list[Any],
        path: str = OBJECT_PATH,
        interface: str = INTERFACE,
    ) -> Any:
        connection = yield self._connect()
        try:
            result = yield connection.callRemote(
                path,
                method,
                interface=interface,
                destination=DESTINATION,
                signature=signature,
                body=body,
                timeout=CALL_TIMEOUT,
                autoStart=False,
            )
        except RemoteError as error:
            raise GaneshaBusError(f"{method}: {error}", refused=True) from error
        except DBusException as error:
            raise GaneshaBusError(f"{method}: {error}") from error
        return result

    @inlineCallbacks
    def add_export(self, block_file: str, export_id: int) -> Any:
        """Add the export with ``export_id`` from the EXPORT block in ``block_file``."""
        result = yield self._call("AddExport", "ss", [block_file, f"EXPORT(Export_Id={export_id})"])
        return result

    @inlineCallbacks
    def remove_export(self, export_id: int) -> Any:
        result = yield self._call("RemoveExport", "q", [export_id])
        return result

    @inlineCallbacks
    def show_exports(self) -> Any:
        """``{export_id: pseudo path}`` of every export Ganesha has now."""
        result = yield self._call("ShowExports", None, [])
        exports: dict[int, str] = {}
        entries = result[1] if isinstance(result, list | tuple) and len(result) > 1 else []
        for entry in entries:
            exports[int(entry[0])] = str(entry[1])
        return exports

    @inlineCallbacks
    def show_clients(self) -> Any:
        """``{client address: [protocols it used]}`` (IPv4-mapped addresses made plain)."""
        result = yield self._call("ShowClients", None, [], CLIENTS_PATH, CLIENTS_INTERFACE)
        clients: dict[str, list[str]] = {}
        entries = result[1] if isinstance(result, list | tuple) and len(result) > 1 else []
        for entry in entries:
            address = str(entry[0]).removeprefix("::ffff:")
            clients[address] = [str(name) for name, used in entry[1] if used]
        return clients

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.disconnect()


def ready(bus: GaneshaBus) -> Deferred[Any]:
    """Fires with the export table once Ganesha answers on the bus (fails if it does not)."""
    return bus.show_exports()  # type: ignore[no-any-return]
