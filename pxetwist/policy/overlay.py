"""Machines defined at run time (through the operator API), over the config file's.

The ``static`` policy asks the overlay before the config's ``machines``, so a machine added,
changed or deleted here is decided differently from the next request on, without a restart.
Entries are kept in ``<data_dir>/machines.json`` (written whole, atomically: a crash leaves the
old file or the new one, never half of one) in the very form the config's ``machines[]`` takes,
and are checked by the same code as the config file (:func:`pxetwist.config.load.parse_machine`).

One overlay exists per data directory in a process (:meth:`MachineOverlay.for_config`): the
policy, the API and a reload all see the same object.  ``pxetwist explain`` reads the file too,
so it answers as the running server does.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from twisted.logger import Logger

from pxetwist.config import ConfigError
from pxetwist.config.load import parse_machine
from pxetwist.config.model import Config, Machine
from pxetwist.policy.values import MacAddress

log = Logger()

OVERLAY_FILE = "machines.json"
_FORMAT = 1


class MachineOverlay:
    """MAC -> machine, each with the JSON object it was defined by."""

    _shared: ClassVar[dict[Path, MachineOverlay]] = {}

    def __init__(self, path: Path, config: Config) -> None:
        self.path = path
        self._config = config
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
        return parse_machine(definition, self._config, source="machine definition")

    def put(self, definition: Mapping[str, Any]) -> tuple[Machine, bool]:
        """Add or replace a machine; returns it and whether it is new.  Saved before returning."""
        machine = self.check(definition)
        raw = {key: value for key, value in definition.items() if value is not None}
        raw["mac"] = str(machine.mac)
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
        return machine, created

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
        return True

    def rebind(self, config: Config) -> None:
        """Check every entry again against a new config (after a reload)."""
        self._config = config
        self._index()

    # -- persistence ---------------------------------------------------------------------------

    def _load(self) -> None:
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
