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

from pxetwist.config.model import Config
from pxetwist.nfs.paths import NfsPathError, confine, expand, load_or_create_key, pseudo_path
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
        """``SERVER:/PSEUDO`` of each export in decision order: ``{nfs}``, ``{nfs2}``...

        An export that cannot be served (it leads out of nfs.root, ``{name}`` without a name) is
        an empty string, so the numbering stays the decision's and ``{nfsN}`` of a refused
        export is an error rather than the next export.
        """
        if decision is None:
            return []
        locations: list[str] = []
        for export in decision.nfs:
            plan = self.plan(attrs.evolve(decision, nfs=(export,)), mac)
            locations.append(f"{server}:{plan.exports[0].pseudo}" if plan.exports else "")
        return locations


def state_dir(config: Config) -> Path:
    return config.data_dir / "nfs"


def planner_for(config: Config, *, create_key: bool) -> ExportPlanner | None:
    """The planner with this data_dir's pseudo-path key (``None`` if there is no key yet)."""
    key_file = state_dir(config) / "pseudo.key"
    if create_key:
        key = load_or_create_key(key_file)
    else:
        try:
            key = key_file.read_bytes()
        except OSError:
            return None
    return ExportPlanner(config.nfs.root, key)


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


@attrs.frozen
class ExplainedExport:
    """One export of a decision as ``pxetwist explain`` shows it."""

    template: str
    access: NfsAccess
    create: bool
    relative: str | None = None
    path: Path | None = None
    pseudo: str | None = None  # None: refused, or no pseudo-path key yet
    location: str | None = None  # SERVER:/PSEUDO, what {nfs}, {nfs2}... become
    problem: str | None = None

    def as_json(self) -> dict[str, object]:
        return {
            "path": self.template,
            "expanded": self.relative,
            "directory": None if self.path is None else str(self.path),
            "access": self.access.value,
            "create": self.create,
            "pseudo": self.pseudo,
            "location": self.location,
            "problem": self.problem,
        }


def explain_exports(
    config: Config, decision: BootDecision | None, mac: MacAddress, server: str
) -> tuple[list[ExplainedExport], str | None]:
    """The decision's exports as the server would grant them, and a note (or ``None``).

    Read-only: the pseudo-path key is read from ``data_dir`` but never made here, so before the
    server's first start the pseudo paths are not known yet (the note says so).
    """
    if decision is None or not decision.nfs:
        return [], None
    note: str | None = None if config.nfs.enabled else "nfs.enabled is false: no export is made"
    planner = planner_for(config, create_key=False)
    if planner is None:
        planner = ExportPlanner(config.nfs.root, b"\0" * 32)
        keyless = True
        note = note or (
            f"no pseudo-path key in {state_dir(config)} yet: pxetwist makes it at its first "
            "start, and pseudo paths are fixed from then on"
        )
    else:
        keyless = False
    explained = []
    for export in decision.nfs:
        plan = planner.plan(attrs.evolve(decision, nfs=(export,)), mac)
        if not plan.exports:
            refusal = plan.refused[0][1] if plan.refused else "refused"
            explained.append(
                ExplainedExport(export.path, export.access, export.create, problem=refusal)
            )
            continue
        planned = plan.exports[0]
        problem: str | None = None
        if not planned.path.is_dir() and not export.create:
            problem = "does not exist (and create is false): not exported until it does"
        pseudo = None if keyless else planned.pseudo
        explained.append(
            ExplainedExport(
                export.path,
                export.access,
                export.create,
                relative=planned.relative,
                path=planned.path,
                pseudo=pseudo,
                location=f"{server}:{pseudo or '/<pseudo path: made at first start>'}",
                problem=problem,
            )
        )
    return explained, note
