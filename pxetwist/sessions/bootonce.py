# -*- test-case-name: tests.sessions.test_bootonce -*-
"""Boot once, confirmed by the server: network-boot a machine once, then boot it locally.

A decision with ``boot_once`` (``boot_once: true`` on a machine, its group or ``defaults``; a
plugin may set it too) *arms* the machine.  The machine's one network boot is *used up* when
the server has seen it go through:

* its kernel and every initrd of its decision served completely (a whole-file HTTP GET or a
  TFTP transfer that ended well), in one attempt: a DISCOVER from its firmware starts the count
  again, so a boot cut off after the NBP, or after the kernel, leaves it armed;
* or the booted OS's call-back (``/boot/done?mac=...``, see :mod:`pxetwist.http.callback`), the
  only signal for a decision with no kernel (an installer NBP that fetches what it needs).

From then on :meth:`BootOnce.gate`, which the policy chain applies to every decision it returns,
turns the machine's network-boot decision into the local-boot answer, whatever protocol asks:
DHCP sends no boot file, the iPXE script says ``exit``, PXELINUX ``LOCALBOOT``.  The state is
kept in ``sessions.sqlite`` (:mod:`pxetwist.sessions.store`), so it holds across restarts, until
``pxetwist machines reset-boot MAC`` deletes it; the running server notices within a second.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable
from typing import Final

import attrs

from pxetwist.events import BootEvent, EventProtocol, EventStage, Outcome
from pxetwist.policy.decision import BootDecision
from pxetwist.policy.request import BootRequest
from pxetwist.policy.values import BootAction, MacAddress
from pxetwist.sessions.classify import (
    BootFiles,
    event_file_stage,
    file_of,
    firmware_of,
    normalize,
    served_completely,
)
from pxetwist.sessions.model import BootStage
from pxetwist.sessions.store import UsedBoot

NOTES_LIMIT: Final = 65536  # machines whose last decision's files are remembered
FILES_CACHE_LIMIT: Final = 4096  # distinct (program, kernel, initrds) normalized and kept

_Told = tuple[str | None, str | None, tuple[str, ...]]  # a decision's program, kernel, initrds


@attrs.define
class _Progress:
    """An armed machine's current attempt: what it must fetch and what it has."""

    files: BootFiles
    kernel: bool = False
    initrds: set[str] = attrs.field(factory=set)

    def restart(self) -> None:
        self.kernel = False
        self.initrds.clear()

    def complete(self) -> bool:
        if self.files.kernel is None or not self.kernel:
            return False
        if self.files.initrds:
            return all(initrd in self.initrds for initrd in self.files.initrds)
        return True


class BootOnce:
    """Armed and used-up machines, the chain's gate and a bus observer; see the module."""

    def __init__(self, used: Iterable[UsedBoot] = ()) -> None:
        self._used: dict[MacAddress, UsedBoot] = {}
        self._armed: dict[MacAddress, _Progress] = {}
        self._notes: OrderedDict[MacAddress, _Told] = OrderedDict()
        self._files_cache: dict[_Told, BootFiles] = {}
        self._unsaved: list[UsedBoot] = []
        self.replace_used(used)

    # -- the chain's gate -----------------------------------------------------------------

    def gate(self, request: BootRequest, decision: BootDecision) -> BootDecision:
        """Every decision the chain returns passes here (on the hot path: dictionaries only)."""
        mac = request.mac
        if decision.action is not BootAction.BOOT:
            return decision
        told = (decision.program, decision.kernel, decision.initrds)
        notes = self._notes
        if notes.get(mac) != told:
            notes[mac] = told
            notes.move_to_end(mac)
            if len(notes) > NOTES_LIMIT:
                notes.popitem(last=False)
        if not decision.boot_once:
            if self._armed:
                self._armed.pop(mac, None)
            return decision
        files = self._files(told)
        used = self._used.get(mac)
        if used is not None:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(used.used_at))
            return BootDecision(
                action=BootAction.LOCAL,
                quirks=decision.quirks,
                name=decision.name,
                group=decision.group,
                policy=decision.policy,
                boot_once=True,
                reason=(
                    f"{decision.reason}; boot once used up at {when} ({used.how}): local boot "
                    f"until `pxetwist machines reset-boot {mac}`"
                ),
            )
        progress = self._armed.get(mac)
        if progress is None or progress.files != files:
            # a changed decision (a reload) means another kernel to wait for
            self._armed[mac] = _Progress(files)
        return decision

    def files_for(self, mac: MacAddress) -> BootFiles | None:
        """What the machine's last network-boot decision told it to fetch (for sessions)."""
        told = self._notes.get(mac)
        return None if told is None else self._files(told)

    def _files(self, told: _Told) -> BootFiles:
        """Normalized once per distinct decision: a fleet boots a handful of images."""
        files = self._files_cache.get(told)
        if files is None:
            if len(self._files_cache) >= FILES_CACHE_LIMIT:
                self._files_cache.clear()
            program, kernel, initrds = told
            files = self._files_cache[told] = BootFiles.from_decision(
                BootDecision(program=program, kernel=kernel, initrds=initrds)
            )
        return files

    # -- the bus observer -----------------------------------------------------------------

    def __call__(self, event: BootEvent) -> None:
        mac = event.mac
        if mac is None:
            return
        progress = self._armed.get(mac)
        if progress is None:
            return
        protocol = event.protocol
        if protocol is EventProtocol.OS:
            if event.outcome is Outcome.OK:
                self._use(mac, event.time, "the OS called back")
            return
        if protocol is EventProtocol.DHCP:
            firmware = firmware_of(event.details)
            if event.stage is EventStage.DISCOVER and firmware not in (None, "ipxe", "plain"):
                progress.restart()  # the firmware starts again: earlier fetches do not count
            return
        if protocol not in (EventProtocol.HTTP, EventProtocol.TFTP):
            return
        if not served_completely(event):
            return
        name = file_of(event)
        if name is None:
            return
        stage = event_file_stage(event, progress.files)
        if stage is BootStage.SCRIPT:
            progress.restart()  # a loader reading its config again is a new attempt
        elif stage is BootStage.KERNEL:
            progress.kernel = True
        elif stage is BootStage.INITRD:
            path = normalize(name)
            for initrd in progress.files.initrds:
                if initrd == path or path.endswith("/" + initrd) or initrd.endswith("/" + path):
                    progress.initrds.add(initrd)
        else:
            return
        if progress.complete():
            self._use(mac, event.time, "kernel and initrd served")

    def _use(self, mac: MacAddress, when: float, how: str) -> None:
        self._armed.pop(mac, None)
        record = UsedBoot(mac=str(mac), used_at=when, how=how)
        self._used[mac] = record
        self._unsaved.append(record)

    # -- state ----------------------------------------------------------------------------

    def is_used(self, mac: MacAddress) -> bool:
        return mac in self._used

    def is_armed(self, mac: MacAddress) -> bool:
        return mac in self._armed

    def used_record(self, mac: MacAddress) -> UsedBoot | None:
        return self._used.get(mac)

    def forget_used(self, mac: MacAddress) -> None:
        """Arm the machine again at once (the operator API's reset; the store is done apart)."""
        self._used.pop(mac, None)
        text = str(mac)
        self._unsaved = [record for record in self._unsaved if record.mac != text]

    @property
    def unsaved(self) -> tuple[UsedBoot, ...]:
        return tuple(self._unsaved)

    def requeue(self, records: Iterable[UsedBoot]) -> None:
        """Records a failed write did not store: try them again with the next write."""
        self._unsaved[:0] = list(records)

    def take_unsaved(self) -> list[UsedBoot]:
        """Used boots not yet handed to the store (the persistence timer takes them)."""
        unsaved, self._unsaved = self._unsaved, []
        return unsaved

    def replace_used(self, stored: Iterable[UsedBoot], unsaved: Iterable[UsedBoot] = ()) -> None:
        """Take the store's table (at start, and after ``reset-boot`` changed it)."""
        used: dict[MacAddress, UsedBoot] = {}
        for record in (*stored, *unsaved):
            try:
                used[MacAddress.parse(record.mac)] = record
            except ValueError:
                continue
        self._used = used
