"""One error type for a config that cannot run, worded so the operator can fix it in one go."""

from __future__ import annotations

KeyPath = tuple[str | int, ...]


def format_path(path: KeyPath) -> str:
    """``("dhcp", "subnets", 0, "range", 1)`` -> ``dhcp.subnets[0].range[1]``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text or "(top level)"


class ConfigError(Exception):
    """A config problem, rendered as ``file:line: key.path: what is wrong``."""

    def __init__(
        self, message: str, *, source: str = "", line: int | None = None, path: KeyPath = ()
    ) -> None:
        super().__init__(message)
        self.message = message
        self.source = source
        self.line = line
        self.path = path

    def __str__(self) -> str:
        where = self.source or "<config>"
        if self.line is not None:
            where += f":{self.line}"
        if self.path:
            return f"{where}: {format_path(self.path)}: {self.message}"
        return f"{where}: {self.message}"
