"""Machines defined at run time (through the operator API), over the config file's.

The ``static`` policy asks the overlay before the config's ``machines``, so a machine added,
changed or deleted here is decided differently from the next request on, without a restart.
Entries are kept in ``<data_dir>/machines.json`` (written whole, atomically: a crash leaves the
old file or the new one, never half of one) in the very form the config's ``machines[]`` takes,
and are checked by the same code as the config file (:func:`pxetwist.config.load.parse_machine`).

One overlay exists per data directory in a process (:meth:`MachineOverlay.for_config`): the
policy, the API and a reload all see the same object.  ``pxetwist explain`` reads the file too,
so it answers as the running server does.

A machine with an ``address`` is a DHCP reservation (issue 14), as in the config file: the
DHCP service listens for changes (:meth:`MachineOverlay.subscribe`) and rebuilds its pools from
:func:`served_machines`, so the address is the machine's from the next DISCOVER on and nobody
else's.  :meth:`MachineOverlay.check` refuses an address in no served subnet, or reserved for
another machine (the config's or the API's).

With the leases on PostgreSQL the machines live in that database instead of the file, shared by
every server (:mod:`pxetwist.policy.sharedmachines`): :meth:`MachineOverlay.save` and
:meth:`MachineOverlay.delete` go through it off the reactor, and the sync :meth:`put` and
:meth:`remove` are for the file only.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from collections.abc import Callable, Mapping
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, ClassVar, Protocol

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger

from pxetwist.config import ConfigError
from pxetwist.config.load import parse_machine
from pxetwist.config.model import Config, Machine
from pxetwist.policy.values import MacAddress

log = Logger()

OVERLAY_FILE = "machines.json"
_FORMAT = 1


class SharedStore(Protocol):
    """Where the machines live when several servers share them (a database, issue 15)."""

    def save(self, definition: Mapping[str, Any], address: str | None) -> Deferred[None]:
        """Store one definition; fails with :class:`AddressReserved` when the address is
        taken in the shared view."""

    def delete(self, mac: MacAddress) -> Deferred[bool]:
        """Forget one machine; False if it was not there."""


class AddressReserved(ConfigError):
    """The address is another machine's reservation, or another client's lease."""


def served_machines(config: Config, overlay: MachineOverlay | None = None) -> list[Machine]:
    """Every machine the server answers: the config's (unless the API redefined its MAC),
    then the API's.  What the DHCP pools take their reservations and known MACs from."""
    overlay = overlay if overlay is not None else MachineOverlay.for_config(config)
    listed = [machine for machine in config.machines if overlay.get(machine.mac) is None]
    listed.extend(overlay.machines())
    return listed


def reserved_by(
    config: Config, overlay: MachineOverlay, address: IPv4Address | None
) -> Machine | None:
    """The machine whose reservation ``address`` is (the first, as the pools decide)."""
    if address is None:
        return None
    for machine in served_machines(config, overlay):
        if machine.address == address:
            return machine
    return None


class MachineOverlay:
    """MAC -> machine, each with the JSON object it was defined by."""

    _shared: ClassVar[dict[Path, MachineOverlay]] = {}

    def __init__(self, path: Path, config: Config) -> None:
        self.path = path
        self._config = config
        self._listeners: list[Callable[[], None]] = []
        self._store: SharedStore | None = None
        self._raw: dict[MacAddress, dict[str, Any]] = {}
        self._by_mac: dict[MacAddress, Machine] = {}
        self._by_uuid: dict[uuid.UUID, Machine] = {}
        self._load()

    @classmethod
    def for_config(cls, config: Config) -> MachineOverlay:
        """The process's overlay for ``config.data_dir``, checked against this config."""
        path = (config.data_dir / OVERLAY_FILE).resolve()
        overlay = cls._shared.get(path)
        if overlay is None:
            overlay = cls._shared[path] = cls(path, config)
        elif overlay._config is not config:
            overlay.rebind(config)
        return overlay

    @classmethod
    def forget_all(cls) -> None:
        """Drop the shared overlays (tests that reuse a data directory path)."""
        cls._shared.clear()

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every change of the machines (once per change)."""
        if listener not in self._listeners:
            self._listeners.append(listener)

    def unsubscribe(self, listener: Callable[[], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _changed(self) -> None:
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:
                log.failure("a listener of the API-defined machines failed")

    # -- reading -------------------------------------------------------------------------------

    def get(self, mac: MacAddress) -> Machine | None:
        return self._by_mac.get(mac)

    def get_by_uuid(self, client_uuid: uuid.UUID) -> Machine | None:
        return self._by_uuid.get(client_uuid)

    def definition(self, mac: MacAddress) -> Mapping[str, Any] | None:
        """The JSON object the machine was defined by (``None``: not in the overlay)."""
        return self._raw.get(mac)

    def machines(self) -> list[Machine]:
        return list(self._by_mac.values())

    def __len__(self) -> int:
        return len(self._by_mac)

    # -- changing ------------------------------------------------------------------------------

    def check(self, definition: Any) -> Machine:
        """The machine a definition describes, or :class:`ConfigError` naming the bad key."""
        machine = parse_machine(definition, self._config, source="machine definition")
        if machine.address is not None:
            self._check_address(machine)
        return machine

    def _check_address(self, machine: Machine) -> None:
        """A reservation must be in a served subnet and nobody else's (as the config loader
        checks ``machines[].address``)."""
        address = machine.address
        subnets = self._config.dhcp.subnets
        # As the loader: without subnets (proxyDHCP) an address only says where the machine
        # is (its NFS exports), and may be anywhere.
        if subnets and not any(address in subnet.network for subnet in subnets):
            served = ", ".join(str(subnet.network) for subnet in subnets) or "none"
            raise ConfigError(
                f"{address} is in no dhcp subnet (served: {served})",
                source="machine definition",
                path=("address",),
            )
        owner = reserved_by(self._config, self, address)
        if owner is not None and owner.mac != machine.mac:
            label = f"{owner.name} ({owner.mac})" if owner.name else str(owner.mac)
            raise AddressReserved(
                f"{address} is already reserved for machine {label}",
                source="machine definition",
                path=("address",),
            )

    def put(self, definition: Mapping[str, Any]) -> tuple[Machine, bool]:
        """Add or replace a machine; returns it and whether it is new.  Saved before returning."""
        machine = self.check(definition)
        raw = self._raw_of(definition, machine)
        created = machine.mac not in self._raw
        previous = self._raw.get(machine.mac)
        self._raw[machine.mac] = raw
        try:
            self._save()
        except OSError:
            if previous is None:
                del self._raw[machine.mac]
            else:
                self._raw[machine.mac] = previous
            raise
        self._index()
        self._changed()
        return machine, created

    def save(self, definition: Mapping[str, Any]) -> Deferred[tuple[Machine, bool]]:
        """:meth:`put`, through the shared database when there is one (off the reactor): the
        overlay changes once the database has it."""
        shared = self._store
        if shared is None:
            try:
                return succeed(self.put(definition))
            except Exception:
                return fail()
        try:
            machine = self.check(definition)
        except ConfigError:
            return fail()
        raw = self._raw_of(definition, machine)
        address = None if machine.address is None else str(machine.address)

        def stored(_: None) -> tuple[Machine, bool]:
            created = machine.mac not in self._raw
            self._raw[machine.mac] = raw
            self._index()
            self._changed()
            return machine, created

        return shared.save(raw, address).addCallback(stored)

    def delete(self, mac: MacAddress) -> Deferred[bool]:
        """:meth:`remove`, through the shared database when there is one."""
        shared = self._store
        if shared is None:
            try:
                return succeed(self.remove(mac))
            except Exception:
                return fail()

        def deleted(found: bool) -> bool:
            known = self._raw.pop(mac, None) is not None
            if known:
                self._index()
                self._changed()
            return found or known

        return shared.delete(mac).addCallback(deleted)

    def attach(self, shared: SharedStore | None) -> None:
        """Keep the machines in a shared store from now on (``None``: in the file again)."""
        self._store = shared

    def replace_all(self, definitions: list[dict[str, Any]]) -> None:
        """Take the shared store's machines as they are now (at start, and after a poll saw
        another server change them)."""
        raw: dict[MacAddress, dict[str, Any]] = {}
        for entry in definitions:
            try:
                raw[MacAddress.parse(str(entry.get("mac")))] = entry
            except ValueError:
                log.error("shared machines: skipping an entry with a bad mac")
        self._raw = raw
        self._index()
        self._changed()

    @staticmethod
    def _raw_of(definition: Mapping[str, Any], machine: Machine) -> dict[str, Any]:
        raw = {key: value for key, value in definition.items() if value is not None}
        raw["mac"] = str(machine.mac)
        return raw

    def remove(self, mac: MacAddress) -> bool:
        """Forget a machine; False if the overlay did not define it.  Saved before returning."""
        previous = self._raw.pop(mac, None)
        if previous is None:
            return False
        try:
            self._save()
        except OSError:
            self._raw[mac] = previous
            raise
        self._index()
        self._changed()
        return True

    def rebind(self, config: Config) -> None:
        """Check every entry again against a new config (after a reload)."""
        self._config = config
        self._index()

    # -- persistence ---------------------------------------------------------------------------

    def _load(self) -> None:
        from pxetwist.policy.sharedmachines import load_shared, shared_url

        url = shared_url(self._config)
        if url is not None:
            # Leases on PostgreSQL: the machines are the database's (issue 15), not the file's.
            try:
                self.replace_all(load_shared(url))
            except Exception as error:
                log.error(
                    "cannot read API-defined machines from the shared database: {error}",
                    error=str(error).strip(),
                )
            return
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        except OSError as error:
            log.error(
                "cannot read API-defined machines from {path}: {error}",
                path=str(self.path),
                error=error.strerror,
            )
            return
        try:
            document = json.loads(text)
            entries = document["machines"]
            if not isinstance(entries, list):
                raise TypeError("machines is not a list")
        except (ValueError, KeyError, TypeError) as error:
            log.error(
                "{path} is not a machines file ({error}); starting with no API-defined machines",
                path=str(self.path),
                error=error,
            )
            return
        for entry in entries:
            if isinstance(entry, dict) and isinstance(entry.get("mac"), str):
                try:
                    self._raw[MacAddress.parse(entry["mac"])] = entry
                except ValueError:
                    log.error("{path}: skipping an entry with a bad mac", path=str(self.path))
        self._index()

    def _index(self) -> None:
        by_mac: dict[MacAddress, Machine] = {}
        for mac, raw in self._raw.items():
            try:
                by_mac[mac] = self.check(raw)
            except ConfigError as error:
                # Kept in the file (the operator may fix the config), but not served.
                log.error(
                    "API-defined machine {mac} no longer fits the config and is not served: "
                    "{error}",
                    mac=str(mac),
                    error=str(error),
                )
        self._by_mac = by_mac
        self._by_uuid = {m.uuid: m for m in by_mac.values() if m.uuid is not None}

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        document = {"format": _FORMAT, "machines": list(self._raw.values())}
        handle, name = tempfile.mkstemp(prefix=".machines-", dir=self.path.parent)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as file:
                json.dump(document, file, indent=2, sort_keys=True)
                file.write("\n")
                file.flush()
                os.fsync(file.fileno())
            os.replace(name, self.path)
        except BaseException:
            Path(name).unlink(missing_ok=True)
            raise
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
