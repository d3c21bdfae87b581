"""A machine as the API shows it is a definition the API (and the config file) takes back.

PATCH merges keys into the shown form of a config machine, so every field the config model
has must survive the round trip; a field added to the model without it fails here.
"""

from __future__ import annotations

from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from pxetwist.api.machines import machine_json
from pxetwist.config import parse_config
from pxetwist.config.load import parse_machine
from tests.util import temp_dir


class MachineJsonTests(SynchronousTestCase):
    def test_every_field_round_trips(self) -> None:
        directory = temp_dir(self)
        config = parse_config(
            f"""
data_dir: {directory}
nfs: {{enabled: true, root: {directory}}}
groups: {{compute: {{kernel: vmlinuz}}}}
machines:
  - mac: 52-54-00-00-00-01
    name: n1
    group: compute
    uuid: 8b5a3c1e-2f44-4c1a-9d2e-0a1b2c3d4e5f
    address: 10.77.0.9
    kernel: k
    initrd: [a.img, b.img]
    cmdline: quiet
    boot: {{bios: pxelinux.0}}
    action: boot
    quirks: {{reply_delay: 1.5, force_broadcast: true, omit_pxe_options: true, boot_file: x}}
    boot_once: true
    nfs: [{{path: hosts/n1, access: rw, create: true}}]
""",
            base_dir=Path(directory),
        )
        machine = config.machines[0]
        shown = machine_json(machine, "config")
        self.assertEqual(shown.pop("source"), "config")
        self.assertEqual(shown["mac"], "52:54:00:00:00:01")
        self.assertEqual(parse_machine(shown, config), machine)
