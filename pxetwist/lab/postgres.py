"""A throw-away PostgreSQL cluster for tests and benchmarks (Debian's postgresql-15).

:class:`PostgresCluster` runs ``initdb`` into a temporary directory owned by an unprivileged
user (``postgres`` when the machine has it, else ``nobody``), starts the ``postgres`` binary
itself (no ``pg_ctl``, no systemd, no host-wide cluster) listening only on a Unix socket in that
directory, and stops it by its PID.  It can be stopped and started again on the same data (the
"database went away for 10 s" lab case) and removes everything at :meth:`close`.

    with PostgresCluster() as pg:
        url = pg.url("pxetwist")     # postgresql://postgres@/pxetwist?host=/tmp/...&port=...
"""

from __future__ import annotations

import atexit
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

PG_BIN = Path(os.environ.get("PXETWIST_PG_BIN", "/usr/lib/postgresql/15/bin"))


class PostgresUnavailable(Exception):
    """The PostgreSQL server binaries are not installed (``scripts/setup.sh --test``)."""


def postgres_available() -> bool:
    return (PG_BIN / "initdb").is_file() and (PG_BIN / "postgres").is_file()


def _free_port() -> int:
    # Only names the socket file (.s.PGSQL.<port>) and Kea's TCP setting: nothing listens on TCP
    # unless tcp=True, but a free loopback port keeps both choices consistent.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _run_as(user: pwd.struct_passwd) -> tuple[int | None, int | None]:
    """The (uid, gid) to run the server as: the unprivileged account when we are root."""
    if os.geteuid() != 0:
        return None, None
    return user.pw_uid, user.pw_gid


class PostgresCluster:
    """One private PostgreSQL server; see the module docstring."""

    def __init__(self, *, tcp: bool = False, user: str | None = None) -> None:
        if not postgres_available():
            raise PostgresUnavailable(f"no PostgreSQL server in {PG_BIN} (postgresql-15)")
        names = [user] if user else ["postgres", "nobody"]
        account = None
        for name in names:
            try:
                account = pwd.getpwnam(name)
                break
            except KeyError:
                continue
        if account is None:
            raise PostgresUnavailable(f"no unprivileged user among {names}")
        self.account = account
        self.root = Path(tempfile.mkdtemp(prefix="pxetwist-pg-"))
        self.data = self.root / "data"
        self.socket_dir = self.root
        self.log_path = self.root / "postgres.log"
        self.port = _free_port()
        self.tcp = tcp
        self.superuser = "postgres"
        self.process: subprocess.Popen[bytes] | None = None
        if os.geteuid() == 0:
            os.chown(self.root, account.pw_uid, account.pw_gid)
        os.chmod(self.root, 0o755)
        subprocess.run(
            [
                str(PG_BIN / "initdb"),
                "-D",
                str(self.data),
                "-U",
                self.superuser,
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-instructions",
            ],
            check=True,
            capture_output=True,
            cwd=self.root,
            user=_run_as(account)[0],
            group=_run_as(account)[1],
        )

    # -- life cycle -----------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        log = open(self.log_path, "ab")  # noqa: SIM115 (handed to the child)
        try:
            self.process = subprocess.Popen(
                [
                    str(PG_BIN / "postgres"),
                    "-D",
                    str(self.data),
                    "-k",
                    str(self.socket_dir),
                    "-p",
                    str(self.port),
                    "-c",
                    f"listen_addresses={'127.0.0.1' if self.tcp else ''}",
                    "-c",
                    "max_connections=60",
                    "-c",
                    "shared_buffers=32MB",
                    "-c",
                    "fsync=on",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                user=_run_as(self.account)[0],
                group=_run_as(self.account)[1],
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited at start: {self.log_tail()}")
            ready = subprocess.run(
                [
                    str(PG_BIN / "pg_isready"),
                    "-h",
                    str(self.socket_dir),
                    "-p",
                    str(self.port),
                    "-U",
                    self.superuser,
                ],
                capture_output=True,
            )
            if ready.returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError(f"postgres not ready in {timeout} s: {self.log_tail()}")

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT to the postmaster, by PID): open transactions roll back."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)

    def close(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresCluster:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- using it -------------------------------------------------------------------------------

    def url(self, database: str = "postgres") -> str:
        """A libpq URL for ``database`` over the Unix socket."""
        return (
            f"postgresql://{self.superuser}@/{database}"
            f"?host={quote(str(self.socket_dir), safe='')}&port={self.port}"
        )

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run ``sql`` with psql (tab-separated, unaligned) and return its output."""
        done = subprocess.run(
            [
                str(PG_BIN.parent / "bin" / "psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-F",
                "\t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                str(self.socket_dir),
                "-p",
                str(self.port),
                "-U",
                self.superuser,
                "-d",
                database,
                "-c",
                sql,
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        return done.stdout

    def create_database(self, name: str) -> str:
        """Create an empty database and return its URL."""
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


_shared: PostgresCluster | None = None


def shared_cluster() -> PostgresCluster:
    """One running cluster for a whole test process (started on first use, stopped by PID and
    removed at exit): test modules create a database each on it.  Works under pytest and trial
    alike (trial calls no ``setUpClass``)."""
    global _shared
    if _shared is None:
        cluster = PostgresCluster()
        try:
            cluster.start()
        except BaseException:
            cluster.close()
            raise
        atexit.register(cluster.close)
        _shared = cluster
    elif _shared.process is None or _shared.process.poll() is not None:
        _shared.start()  # a test stopped it (an outage) and failed before starting it again
    return _shared
