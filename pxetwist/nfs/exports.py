"""From a decision to exports: expanded paths, pseudo paths, stable Export_Ids, ``{nfs}`` text.

:class:`ExportPlanner` is what the rest of pxetwist asks about a machine's exports: the boot-config
renderer for ``{nfs}``, ``{nfs2}``... in command lines and templates, ``pxetwist explain``, and the
NFS service that grants them.  It needs only ``nfs.root`` and the pseudo-path key, so explain and
the renderer work out the same pseudo paths the server grants.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import attrs

from pxetwist.nfs.paths import NfsPathError, confine, expand, pseudo_path
from pxetwist.policy.decision import BootDecision, NfsAccess
from pxetwist.policy.values import MacAddress


@attrs.frozen
class PlannedExport:
    """One of a machine's exports, before it is granted to an address."""

    relative: str  # under nfs.root, placeholders filled in
    path: Path  # the real directory (symlinks resolved, confined under nfs.root)
    pseudo: str
    access: NfsAccess
    create: bool


@attrs.frozen
class Plan:
    """A machine's exports in decision order, and the ones refused (with why)."""

    exports: tuple[PlannedExport, ...] = ()
    refused: tuple[tuple[str, str], ...] = ()  # (path template, problem)


class ExportPlanner:
    """Works out a machine's exports from its decision (pure apart from ``realpath``)."""

    def __init__(self, root: Path, key: bytes) -> None:
        self.root = root
        self.key = key

    def plan(self, decision: BootDecision | None, mac: MacAddress) -> Plan:
        if decision is None:
            return Plan()
        exports: list[PlannedExport] = []
        refused: list[tuple[str, str]] = []
        seen: set[str] = set()
        for export in decision.nfs:
            try:
                relative = expand(export.path, mac, decision.name)
                path = confine(self.root, relative)
            except NfsPathError as error:
                refused.append((export.path, str(error)))
                continue
            if relative in seen:
                refused.append((export.path, f"{relative!r} is already exported to {mac}"))
                continue
            seen.add(relative)
            exports.append(
                PlannedExport(
                    relative=relative,
                    path=path,
                    pseudo=pseudo_path(self.key, mac, relative),
                    access=export.access,
                    create=export.create,
                )
            )
        return Plan(tuple(exports), tuple(refused))

    def locations(self, decision: BootDecision | None, mac: MacAddress, server: str) -> list[str]:
        """``SERVER:/PSEUDO`` of each export, in order: what ``{nfs}``, ``{nfs2}``... become."""
        return [f"{server}:{export.pseudo}" for export in self.plan(decision, mac).exports]


class ExportIds:
    """Ganesha Export_Ids by pseudo path, kept in a file so a restart keeps every id.

    NFS file handles carry the export id: a machine whose export came back under another id
    after a restart would find every open file stale.  Ids are handed out lowest-free-first
    from ``first..last``; when the range is full, the id of an export not granted now is reused.
    """

    def __init__(self, path: Path | None, first: int, last: int) -> None:
        self.path = path
        self.first = first
        self.last = last
        self._ids: dict[str, int] = {}
        if path is not None:
            try:
                raw = json.loads(path.read_text())
            except FileNotFoundError:
                raw = {}
            except (OSError, ValueError) as error:
                raise NfsPathError(f"{path}: cannot read the export-id table: {error}") from None
            for pseudo, export_id in dict(raw.get("ids", {})).items():
                if isinstance(export_id, int) and first <= export_id <= last:
                    self._ids[str(pseudo)] = export_id

    def id_for(self, pseudo: str, in_use: set[int]) -> int:
        known = self._ids.get(pseudo)
        if known is not None:
            return known
        taken = set(self._ids.values())
        for candidate in range(self.first, self.last + 1):
            if candidate not in taken:
                return self._assign(pseudo, candidate)
        for old, candidate in list(self._ids.items()):
            if candidate not in in_use:
                del self._ids[old]
                return self._assign(pseudo, candidate)
        raise NfsPathError(f"no free Export_Id in {self.first}..{self.last}")

    def _assign(self, pseudo: str, export_id: int) -> int:
        self._ids[pseudo] = export_id
        self._save()
        return export_id

    def _save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps({"ids": self._ids}, indent=1, sort_keys=True))
        os.replace(temporary, self.path)
