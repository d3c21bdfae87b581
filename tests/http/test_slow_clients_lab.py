"""Slow HTTP clients against ``twistd -n pxe`` in a namespace lab (issue 18, defect 5).

1,000 connections from the client namespace each send a request line and then a byte every two
seconds, never finishing their headers.  With ``http.header_timeout: 6`` every one of them must be
answered 408 and closed about six seconds after it connected (the bytes do not extend the
deadline), a real download during them must complete byte-identical, and the server must hold no
more descriptors afterwards than before.  The per-address idle cap is set above 1,000 here so
that it is the header deadline that closes them (the cap has its own unit tests).
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import re
import subprocess
import time
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from pxetwist.lab import NetLab, require_binary, require_lab
from pxetwist.lab.started import descriptors, wait_started
from tests.http.test_service_lab import IGNORED, KNOWN, TWISTD, VENV_BIN, _tempdir, _tree

PORT = 8080
SLOW_CLIENTS = 1000
HEADER_TIMEOUT = 6.0
BYTE_EVERY = 2.0
SEND_TIMEOUT = 4.0
BIG = 64 * 1024 * 1024  # more than the kernel's socket buffers on both sides hold
SLACK = 6.0  # seconds of scheduling delay allowed on a loaded two-core machine

_CONFIG = """
interfaces: [srv0]
data_dir: {base}/data
dhcp: {{mode: off}}
tftp: {{enabled: false}}
http:
  root: {base}/http
  port: {port}
  header_timeout: {header_timeout}
  send_timeout: {send_timeout}
  max_idle_per_client: 5000
policy: {{chain: [static, arch], plugin_dirs: []}}
defaults: {{kernel: default/linux, initrd: [default/initrd.gz], cmdline: quiet}}
machines:
  - {{mac: "{known}", name: node1, kernel: node/linux}}
  - {{mac: "{ignored}", action: ignore}}
"""

# Runs in the client namespace: argv = host, port, count, byte interval, time limit.  Opens
# `count` connections, sends a request line on each and then one header byte per interval, never
# the end of the headers.  Prints "connected N" once all are open, then one JSON line: for every
# connection, the seconds from its connect to the server's close and the status it was sent.
_SLOW_CLIENTS = r"""
import json, resource, select, socket, sys, time
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
interval, limit = float(sys.argv[4]), float(sys.argv[5])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if soft != resource.RLIM_INFINITY and soft < count + 100:
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(count + 100, hard), hard))
open_socks, opened, received, results = {}, {}, {}, []
poller = select.poll()
for _ in range(count):
    s = socket.create_connection((host, port), timeout=10)
    s.sendall(b"GET /node/linux HTTP/1.1\r\n")
    s.setblocking(False)
    open_socks[s.fileno()] = s
    opened[s.fileno()] = time.monotonic()
    poller.register(s.fileno(), select.POLLIN)
print("connected", len(open_socks), flush=True)
start = time.monotonic()
next_byte = start + interval
while open_socks and time.monotonic() - start < limit:
    for fd, _ in poller.poll(100):
        s = open_socks[fd]
        try:
            data = s.recv(4096)
        except BlockingIOError:
            continue
        except OSError:
            data = b""
        if data:
            received[fd] = received.get(fd, b"") + data
            continue
        answer = received.pop(fd, b"")
        status = answer[9:12].decode("ascii", "replace") if answer.startswith(b"HTTP/") else ""
        results.append([round(time.monotonic() - opened[fd], 3), status])
        poller.unregister(fd)
        s.close()
        del open_socks[fd]
    if time.monotonic() >= next_byte:
        for s in open_socks.values():
            try:
                s.send(b"X")
            except OSError:
                pass
        next_byte += interval
print(json.dumps({"closed": results, "still_open": len(open_socks)}), flush=True)
"""

# Runs in the client namespace: argv = host, port, path, seconds.  Asks for a file with a small
# receive buffer, reads nothing for `seconds`, then reads what it can; prints the bytes it got
# and how the connection ended.
_STALLED_READER = r"""
import json, socket, sys, time
host, port, path, pause = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
s.connect((host, port))
s.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n")
time.sleep(pause)
s.settimeout(10)
got, end = 0, "timeout"
try:
    while True:
        data = s.recv(1 << 20)
        if not data:
            end = "closed"
            break
        got += len(data)
except ConnectionResetError:
    end = "reset"
except socket.timeout:
    pass
print(json.dumps({"bytes": got, "end": end}), flush=True)
"""


class SlowClientsLabTests(SynchronousTestCase):
    """``twistd -n pxe`` (HTTP only) in ``<lab>-srv``; slow clients and curl in ``<lab>-cli``."""

    def setUp(self) -> None:
        require_lab(self)
        self.curl = require_binary("curl", self)
        if not TWISTD.exists():
            require_binary(str(TWISTD), self)
        self.base = _tempdir(self)
        self.files = _tree(self.base)
        (self.base / "http" / "big.iso").write_bytes(b"i" * BIG)
        self.lab = NetLab(clients=0).up()
        self.addCleanup(self.lab.down)
        config = self.base / "pxe.yaml"
        config.write_text(
            _CONFIG.format(
                base=self.base,
                port=PORT,
                header_timeout=HEADER_TIMEOUT,
                send_timeout=SEND_TIMEOUT,
                known=KNOWN,
                ignored=IGNORED,
            )
        )
        self.config = config
        self.log = self.base / "twistd.log"
        self.url = f"http://{self.lab.srv_ip}:{PORT}/"

    def start(self, *prefix: str) -> None:
        """``twistd -n pxe`` in the server namespace, its argv after ``prefix`` (prlimit)."""
        argv = [*prefix, str(TWISTD), "-n", "--pidfile", str(self.base / "twistd.pid")]
        argv += ["--logfile", str(self.log), "pxe", "--config", str(self.config)]
        self.server = self.lab.spawn(self.lab.srv, argv, stderr=subprocess.DEVNULL)
        self.addCleanup(NetLab.stop, self.server)
        self.lab.wait_port(self.lab.srv, "tcp", PORT, timeout=30, proc=self.server)
        # The session recorder opens sessions.sqlite (and its -wal and -shm) on its writer
        # thread, which may run after the port is listening; a count taken before that would
        # see three descriptors appear later and blame the requests for them.
        deadline = time.monotonic() + 30
        while not any(name.endswith("sessions.sqlite-shm") for name in self.open_files()):
            self.assertLess(time.monotonic(), deadline, self.open_files())
            time.sleep(0.05)
        # Listening is not started: the reactor opens its SIGCHLD pipe and the services their
        # control socket after the port is bound (in CI, once, only after the count below).
        wait_started(self.server.pid, proc=self.server)

    def slow_clients(self, limit: float) -> subprocess.Popen[str]:
        """Start the slow clients; returns once all of them are connected."""
        slow = self.lab.spawn(
            self.lab.cli,
            [
                str(VENV_BIN / "python"),
                "-c",
                _SLOW_CLIENTS,
                self.lab.srv_ip,
                str(PORT),
                str(SLOW_CLIENTS),
                str(BYTE_EVERY),
                str(limit),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.addCleanup(NetLab.stop, slow)
        assert slow.stdout is not None
        connected = slow.stdout.readline()
        self.assertEqual(connected.split(), ["connected", str(SLOW_CLIENTS)], slow.stderr)
        return slow

    def descriptors(self) -> int:
        return len(os.listdir(f"/proc/{self.server.pid}/fd"))

    def open_files(self) -> list[str]:
        """What each of the server's descriptors refers to, for a failure message."""
        return descriptors(self.server.pid)

    def test_slow_clients_are_closed_at_the_header_deadline(self) -> None:
        self.start()
        before, files_before = self.descriptors(), self.open_files()
        limit = HEADER_TIMEOUT + 4 * SLACK + 30  # the script's own bound, far above the deadline
        slow = self.slow_clients(limit)
        # A real machine's download while all of them hold their connections.
        body = self.base / "download"
        started = time.monotonic()
        curl = [self.curl, "-sS", "-m", "30", "-o", str(body), "-w", "%{http_code}"]
        done = self.lab.run(self.lab.cli, [*curl, self.url + "node/initrd.gz"], timeout=60)
        took = time.monotonic() - started
        self.assertEqual((done.returncode, done.stdout), (0, "200"), done.stderr)
        digest = hashlib.sha256(Path(body).read_bytes()).hexdigest()
        self.assertEqual(digest, hashlib.sha256(self.files["node/initrd.gz"]).hexdigest())
        self.assertLess(took, HEADER_TIMEOUT, "the download had to wait for the slow clients")

        out, err = slow.communicate(timeout=limit + 30)
        report = json.loads(out.strip().splitlines()[-1])
        closed = report["closed"]
        self.assertEqual((len(closed), report["still_open"]), (SLOW_CLIENTS, 0), err[-2000:])
        statuses = collections.Counter(status for _, status in closed)
        self.assertEqual(statuses, {"408": SLOW_CLIENTS})
        seconds = sorted(took for took, _ in closed)
        # Closed by the deadline: not before it (the trickled bytes were received), and not
        # much after it (the bytes did not extend it).
        self.assertGreaterEqual(seconds[0], HEADER_TIMEOUT - 0.5, seconds[:5])
        self.assertLessEqual(seconds[-1], HEADER_TIMEOUT + SLACK, seconds[-5:])
        # Every descriptor is released.
        for _ in range(50):
            if self.descriptors() <= before:
                break
            time.sleep(0.1)
        self.assertLessEqual(self.descriptors(), before, (files_before, self.open_files()))
        # Each refusal is a line, or counted in a summary line once over the log budget.
        log = self.log.read_text()
        logged = log.count("408 refused: request headers not complete within 6 s")
        summed = sum(int(n) for n in re.findall(r"(\d+) http-request dropped", log))
        self.assertGreater(logged, 0)
        self.assertEqual(logged + summed, SLOW_CLIENTS)
        self.assertIn("GET /node/initrd.gz 200", log)

    def test_a_client_that_stops_reading_is_aborted(self) -> None:
        """A download whose client reads nothing is aborted after the send timeout, and its
        socket and file are released (a slow-read client cannot hold them for ever)."""
        self.start()
        before, files_before = self.descriptors(), self.open_files()
        pause = SEND_TIMEOUT + SLACK
        done = self.lab.run(
            self.lab.cli,
            [
                str(VENV_BIN / "python"),
                "-c",
                _STALLED_READER,
                self.lab.srv_ip,
                str(PORT),
                "/big.iso",
                str(pause),
            ],
            timeout=pause + 60,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        report = json.loads(done.stdout.strip().splitlines()[-1])
        self.assertIn(report["end"], ("reset", "closed"), report)
        self.assertLess(report["bytes"], BIG, "the whole file went out: nothing was stalled")
        for _ in range(50):
            if self.descriptors() <= before:
                break
            time.sleep(0.1)
        self.assertLessEqual(self.descriptors(), before, (files_before, self.open_files()))
        self.assertIn("GET /big.iso 200", self.log.read_text())
        self.assertIn("(client went away)", self.log.read_text())

    def test_few_descriptors_slow_clients_do_not_lock_real_clients_out(self) -> None:
        """With an open-file limit of 300 (``ulimit -n``), 1,000 slow clients from many ports
        would take every descriptor and ``accept`` would fail until the header deadline; idle
        connections are capped below the limit (the oldest closed first), so a real download
        gets through while they are still connected."""
        prlimit = require_binary("prlimit", self)
        self.start(prlimit, "--nofile=300:300", "--")
        slow = self.slow_clients(HEADER_TIMEOUT + 4 * SLACK + 30)
        connected_at = time.monotonic()
        body = self.base / "download"
        curl = [self.curl, "-sS", "-m", "10", "-o", str(body), "-w", "%{http_code}"]
        attempts = []
        while time.monotonic() - connected_at < HEADER_TIMEOUT - 1:
            done = self.lab.run(self.lab.cli, [*curl, self.url + "node/linux"], timeout=20)
            attempts.append((round(time.monotonic() - connected_at, 2), done.stdout))
            if done.stdout == "200":
                break
            time.sleep(0.25)
        self.assertEqual(attempts[-1][1], "200", attempts)
        self.assertEqual(body.read_bytes(), self.files["node/linux"])
        self.assertIsNone(slow.poll())  # the slow clients are still there
        out, _ = slow.communicate(timeout=HEADER_TIMEOUT + 4 * SLACK + 60)
        report = json.loads(out.strip().splitlines()[-1])
        self.assertEqual((len(report["closed"]), report["still_open"]), (SLOW_CLIENTS, 0))
