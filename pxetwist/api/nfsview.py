"""The NFS export wrapper's grants as the API sees them (:class:`INfsView`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from zope.interface import implementer

from pxetwist.api.sources import INfsView


@implementer(INfsView)
class NfsExports:
    """The NFS service's grants (``desired``: what the policy grants; ``applied``: in Ganesha)."""

    def __init__(self, service: Callable[[], Any]) -> None:
        self._service = service

    def exports(self) -> Sequence[dict[str, Any]]:
        service = self._service()
        if service is None:
            return []
        desired = dict(getattr(service, "desired", {}))
        applied = dict(getattr(service, "applied", {}))
        found = []
        for export_id in sorted(set(desired) | set(applied)):
            grant = desired.get(export_id) or applied[export_id]
            state = (
                "active"
                if export_id in desired and export_id in applied
                else "granting"
                if export_id in desired
                else "withdrawing"
            )
            found.append(
                {
                    "export_id": grant.export_id,
                    "mac": str(grant.mac),
                    "client": str(grant.client),
                    "path": str(grant.path),
                    "relative": grant.relative,
                    "pseudo": grant.pseudo,
                    "access": getattr(grant.access, "value", str(grant.access)),
                    "state": state,
                }
            )
        return found
