"""Example site-local policy: boot machines listed in an inventory CSV file.

Drop a file like this into a ``policy.plugin_dirs`` directory and name it in ``policy.chain``::

    policy:
      chain: [inventory, static, arch]
      settings:
        inventory:
          csv: /etc/pxetwist/inventory.csv   # relative paths: from the config file's directory

The CSV has a header row; ``mac`` is required, the other columns optional::

    mac,name,kernel,initrd,cmdline,action
    52:54:00:aa:00:01,rack1-n01,vmlinuz,initrd.img,console=ttyS0,boot
    52:54:00:aa:00:02,rack1-n02,,,,local

``initrd`` may list several files separated by spaces.  The file is read again whenever it
changes, so the inventory system can rewrite it while pxetwist runs.
"""

from __future__ import annotations

import csv
from pathlib import Path

from zope.interface import implementer, provider

from pxetwist.config import Config
from pxetwist.config.model import Profile
from pxetwist.policy import BootDecision, BootRequest, IBootPolicy, IBootPolicyFactory
from pxetwist.policy.selection import decide_from_profile
from pxetwist.policy.values import BootAction, InvalidMacAddress, MacAddress

_ACTIONS = {
    "": None,
    "boot": BootAction.BOOT,
    "local": BootAction.LOCAL,
    "ignore": BootAction.IGNORE,
}


class InventoryError(ValueError):
    """The inventory file cannot be used; the message names the file and row."""


def read_inventory(path: Path) -> dict[MacAddress, tuple[str | None, Profile]]:
    """Parse the CSV into machine profiles by MAC; any bad row is an error naming its line."""
    machines: dict[MacAddress, tuple[str | None, Profile]] = {}
    with path.open(newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        if reader.fieldnames is None or "mac" not in reader.fieldnames:
            raise InventoryError(f"{path}: the header row must have a 'mac' column")
        for row in reader:
            line = reader.line_num
            try:
                mac = MacAddress.parse(row.get("mac") or "")
            except InvalidMacAddress:
                raise InventoryError(f"{path}:{line}: {row.get('mac')!r} is not a MAC") from None
            action_text = (row.get("action") or "").strip().lower()
            if action_text not in _ACTIONS:
                raise InventoryError(
                    f"{path}:{line}: action {action_text!r} is not boot/local/ignore"
                )
            initrds = tuple((row.get("initrd") or "").split())
            profile = Profile(
                kernel=row.get("kernel") or None,
                initrds=initrds or None,
                cmdline=row.get("cmdline") or None,
                action=_ACTIONS[action_text],
            )
            machines[mac] = (row.get("name") or None, profile)
    return machines


@implementer(IBootPolicy)
class InventoryPolicy:
    """Decides for machines in the CSV; has no opinion on any other machine."""

    def __init__(self, config: Config, path: Path) -> None:
        self.config = config
        self.path = path
        self._mtime_ns = -1
        self._machines: dict[MacAddress, tuple[str | None, Profile]] = {}
        self._reload()

    def _reload(self) -> None:
        mtime_ns = self.path.stat().st_mtime_ns
        if mtime_ns != self._mtime_ns:
            self._machines = read_inventory(self.path)
            self._mtime_ns = mtime_ns

    def decide(self, request: BootRequest) -> BootDecision | None:
        self._reload()
        entry = self._machines.get(request.mac)
        if entry is None:
            return None
        name, profile = entry
        return decide_from_profile(
            request,
            profile.over(self.config.defaults),
            self.config,
            reason=f"inventory {self.path.name}: {name or request.mac}",
            name=name,
        )


@provider(IBootPolicyFactory)
class InventoryPolicyFactory:
    name = "inventory"
    description = "machines from an inventory CSV (policy.settings.inventory.csv)"

    @staticmethod
    def build(config: Config) -> InventoryPolicy:
        settings = config.policy.settings.get("inventory") or {}
        if not isinstance(settings, dict) or "csv" not in settings:
            raise ValueError("policy.settings.inventory.csv must name the inventory CSV file")
        path = Path(str(settings["csv"])).expanduser()
        if not path.is_absolute():
            path = Path(config.source).resolve().parent / path
        if not path.is_file():
            raise ValueError(f"inventory file {path} does not exist")
        return InventoryPolicy(config, path)
