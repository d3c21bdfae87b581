"""``/api/v1/machines``: the config's machines plus those defined through the API.

Definitions use the config file's ``machines[]`` keys and are checked by the same code, so a
machine that the API accepts is one the config file would accept, with the same messages.  API
machines live in the :class:`MachineOverlay`, which the ``static`` policy asks first: a change
decides the very next request.  A machine written in the config file can be overridden (PUT or
PATCH store an API definition over it) but not deleted: the file is the operator's.

An ``address`` is a DHCP reservation, effective at once (issue 14): it must lie in a served
subnet (422), and be neither another machine's reservation nor another client's lease now (409);
the error names the field ``address``.  Deleting the machine frees the address.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from pxetwist.api.router import ApiError, ApiRequest, Reply
from pxetwist.api.sources import ILeaseView
from pxetwist.config import Config, ConfigError
from pxetwist.config.errors import format_path
from pxetwist.config.model import Machine, Profile
from pxetwist.policy.overlay import AddressReserved, MachineOverlay
from pxetwist.policy.values import InvalidMacAddress, MacAddress

log = Logger()

#: Profile attributes whose config key is spelled differently.
_KEY_OF = {"initrds": "initrd"}


def _plain(value: object) -> object:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if attrs.has(type(value)):
        fields = attrs.fields(type(value))  # type: ignore[arg-type]
        return {field.name: _plain(getattr(value, field.name)) for field in fields}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def machine_json(machine: Machine, source: str) -> dict[str, object]:
    """A machine in the config's own keys (what POST takes), plus where it is defined."""
    out: dict[str, object] = {"mac": str(machine.mac)}
    for field in attrs.fields(Machine):
        if field.name in ("mac", "profile"):
            continue
        value = getattr(machine, field.name)
        if value is not None:
            out[field.name] = _plain(value)
    for field in attrs.fields(Profile):
        value = getattr(machine.profile, field.name)
        if value is None or (isinstance(value, Mapping) and not value):
            continue
        out[_KEY_OF.get(field.name, field.name)] = _plain(value)
    out["source"] = source
    return out


def parse_mac(text: str | None, field: str = "mac") -> MacAddress:
    if not text:
        raise ApiError(400, "a MAC address is required", field)
    try:
        return MacAddress.parse(text)
    except (InvalidMacAddress, ValueError):
        raise ApiError(400, f"{text!r} is not a MAC address", field) from None


def _invalid(error: ConfigError) -> ApiError:
    return ApiError(422, error.message, format_path(error.path) if error.path else "body")


def _refused(error: ConfigError) -> ApiError:
    """422 for a bad value; 409 for an address someone else has (the field: ``address``)."""
    if isinstance(error, AddressReserved):
        return ApiError(409, error.message, "address")
    return _invalid(error)


class MachinesApi:
    def __init__(self, config: Callable[[], Config], leases: ILeaseView | None = None) -> None:
        self._config = config
        self._leases = leases

    @property
    def overlay(self) -> MachineOverlay:
        return MachineOverlay.for_config(self._config())

    def _in_config(self, mac: MacAddress) -> Machine | None:
        for machine in self._config().machines:
            if machine.mac == mac:
                return machine
        return None

    def _found(self, mac: MacAddress) -> tuple[Machine, str] | None:
        machine = self.overlay.get(mac)
        if machine is not None:
            return machine, "api"
        machine = self._in_config(mac)
        return (machine, "config") if machine is not None else None

    def list(self, request: ApiRequest) -> Reply:
        overlay = self.overlay
        listed = [
            machine_json(m, "config") for m in self._config().machines if overlay.get(m.mac) is None
        ]
        listed.extend(machine_json(m, "api") for m in overlay.machines())
        listed.sort(key=lambda item: str(item["mac"]))
        return Reply(200, listed)

    def get(self, request: ApiRequest) -> Reply:
        mac = parse_mac(request.params.get("mac"))
        found = self._found(mac)
        if found is None:
            raise ApiError(404, f"no machine {mac}", "mac")
        return Reply(200, machine_json(*found))

    def create(self, request: ApiRequest) -> Deferred[Reply]:
        body = request.json_object()
        if "mac" not in body:
            raise ApiError(422, "a machine needs a 'mac'", "mac")
        if not isinstance(body["mac"], str):
            raise ApiError(422, "must be a string", "mac")
        mac = parse_mac(body["mac"])
        found = self._found(mac)
        if found is not None:
            raise ApiError(
                409,
                f"machine {mac} already exists (defined in the {found[1]}); "
                f"PUT or PATCH /api/v1/machines/{mac} changes it",
                "mac",
            )
        return self._store(body, 201)

    def replace(self, request: ApiRequest) -> Deferred[Reply]:
        mac = parse_mac(request.params.get("mac"))
        body = request.json_object()
        self._same_mac(body, mac)
        created = self._found(mac) is None
        return self._store({**body, "mac": str(mac)}, 201 if created else 200)

    def update(self, request: ApiRequest) -> Deferred[Reply]:
        """PATCH: merge keys into the current definition; a ``null`` value removes the key."""
        mac = parse_mac(request.params.get("mac"))
        body = request.json_object()
        self._same_mac(body, mac)
        return self.patch(mac, body)

    def patch(self, mac: MacAddress, body: Mapping[str, Any]) -> Deferred[Reply]:
        """Merge ``body`` into the machine's definition (an API one, or the config's)."""
        current = self.overlay.definition(mac)
        if current is None:
            found = self._found(mac)
            if found is None:
                raise ApiError(404, f"no machine {mac}", "mac")
            current = machine_json(found[0], found[1])
            current.pop("source", None)
        merged = {**current, **body}
        merged = {key: value for key, value in merged.items() if value is not None}
        return self._store(merged, 200)

    def delete(self, request: ApiRequest) -> Deferred[Reply]:
        mac = parse_mac(request.params.get("mac"))
        return self.overlay.delete(mac).addCallbacks(
            self._deleted, self._not_stored, callbackArgs=(mac,)
        )

    def _deleted(self, removed: bool, mac: MacAddress) -> Reply:
        if removed:
            log.info("API: machine {mac} deleted", mac=str(mac))
            return Reply(204)
        if self._in_config(mac) is not None:
            raise ApiError(
                409,
                f"machine {mac} is defined in the config file {self._config().source}; "
                "remove it there",
                "mac",
            )
        raise ApiError(404, f"no machine {mac}", "mac")

    @staticmethod
    def _same_mac(body: Mapping[str, Any], mac: MacAddress) -> None:
        if "mac" in body and (not isinstance(body["mac"], str) or parse_mac(body["mac"]) != mac):
            raise ApiError(422, f"does not match the machine in the path ({mac})", "mac")

    def _check_lease(self, machine: Machine) -> None:
        """A reservation may not take an address another client holds now (bound, offered or
        in quarantine): that client would lose it in the middle of its lease."""
        address = machine.address
        if address is None or self._leases is None:
            return
        now = self._leases.now()
        for lease in self._leases.leases():
            if lease.address == address and lease.holds_address(now) and lease.mac != machine.mac:
                holder = str(lease.mac) if lease.mac is not None else "another client"
                raise ApiError(
                    409,
                    f"{address} is in use: leased to {holder} ({lease.state.value}); "
                    "release it first (DELETE /api/v1/leases/{address})",
                    "address",
                )

    def _store(self, definition: dict[str, Any], status: int) -> Deferred[Reply]:
        try:
            checked = self.overlay.check(definition)
            self._check_lease(checked)
        except ConfigError as error:
            raise _refused(error) from None
        return self.overlay.save(definition).addCallbacks(
            self._stored, self._not_stored, callbackArgs=(status,)
        )

    @staticmethod
    def _stored(result: tuple[Machine, bool], status: int) -> Reply:
        machine, _ = result
        log.info(
            "API: machine {mac} {what}",
            mac=str(machine.mac),
            what="created" if status == 201 else "updated",
        )
        return Reply(
            status,
            machine_json(machine, "api"),
            {"location": f"/api/v1/machines/{machine.mac}"},
        )

    @staticmethod
    def _not_stored(failure: Failure) -> Reply:
        error = failure.value
        if isinstance(error, ConfigError):
            raise _refused(error)
        if isinstance(error, OSError):
            raise ApiError(500, f"cannot save the machines file: {error.strerror}")
        if isinstance(error, ApiError):
            raise error
        log.failure("API: a machine could not be stored", failure)
        raise ApiError(503, f"cannot store the machine: {failure.getErrorMessage()}")
