"""Integration tests for :mod:`pxetwist.http.service`.

* :class:`LoopbackServiceTests`: an :class:`HttpService` on 127.0.0.1 in this process, checked
  with treq: the wiring (listeners, dispatch, access log) and that file bodies really go out
  through ``os.sendfile`` when served through the Site.
* :class:`LabServiceTests`: the real thing, ``twistd -n pxe`` (the venv's twistd; DHCP off,
  TFTP off, HTTP on) in a :class:`~pxetwist.lab.NetLab` server namespace, with curl and a treq
  client running in the client namespace: UEFI's HEAD (protocol-reference §3.1), ranges and
  conditional requests (RFC 9110 §13, §14), traversal attempts, the iPXE script for a known
  and an unknown machine (§4.2), and 100 concurrent downloads.

All traffic goes to 127.0.0.1 or to addresses inside the namespaces these tests create.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Generator
from ipaddress import IPv4Interface
from pathlib import Path
from typing import Any, cast

import treq
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import HTTPConnectionPool

from pxetwist.context import IServerReactor, ServerContext
from pxetwist.events import BootEvent, BootEventBus
from pxetwist.http.service import HttpService
from pxetwist.lab import NetLab, require_binary, require_lab
from pxetwist.netinfo import InterfaceInfo
from pxetwist.policy.builtin import ArchPolicy, StaticPolicy
from pxetwist.policy.chain import PolicyChain
from pxetwist.policy.sightings import SightingRegistry
from pxetwist.testing import config_from_yaml

HERE = Path(__file__).resolve()
VENV_BIN = Path(sys.executable).parent
TWISTD = VENV_BIN / "twistd"
PORT = 8080
KNOWN = "52:54:00:77:00:10"
IGNORED = "52:54:00:77:00:13"
UNKNOWN = "52:54:00:99:99:99"
MiB = 1024 * 1024


def _tempdir(case: SynchronousTestCase) -> Path:
    path = Path(tempfile.mkdtemp(prefix="pxetwist-httplab-"))
    os.chmod(path, 0o755)
    case.addCleanup(shutil.rmtree, path, ignore_errors=True)
    return path


def _tree(base: Path) -> dict[str, bytes]:
    """The served root (``base/http``) and a secret beside it; returns name -> content."""
    rng = random.Random(6)
    root = base / "http"
    files = {
        "ipxe.efi": rng.randbytes(300_000),
        "BOOTX64.EFI": rng.randbytes(5_000),
        "node/linux": rng.randbytes(1_000_000),
        "node/initrd.gz": rng.randbytes(3 * MiB + 17),
        "default/linux": rng.randbytes(70_000),
        "default/initrd.gz": rng.randbytes(9_000),
        "menu.ipxe": b"#!ipxe\nmenu site\n",
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (base / "secret").write_bytes(b"TOP-SECRET-BESIDE-THE-ROOT\n")
    os.symlink(base / "secret", root / "escape")
    return files


_CONFIG = """
interfaces: [{interface}]
data_dir: {base}/data
dhcp: {{mode: off}}
tftp: {{enabled: false}}
http: {{root: {base}/http, port: {port}}}
policy: {{chain: [static, arch], plugin_dirs: []}}
defaults: {{kernel: default/linux, initrd: [default/initrd.gz], cmdline: quiet}}
machines:
  - {{mac: "{known}", name: node1, kernel: node/linux, initrd: [node/initrd.gz],
      cmdline: "console=ttyS0"}}
  - {{mac: "{ignored}", action: ignore}}
{extra}
"""


# --- In this process, on loopback ---------------------------------------------------------------


class LoopbackServiceTests(TestCase):
    """:class:`HttpService` bound to 127.0.0.1 (port 0), exercised with treq."""

    def setUp(self) -> Any:
        self.base = _tempdir(self)
        self.files = _tree(self.base)
        (self.base / "http" / "boot.ipxe").write_bytes(b"#!ipxe\nshadowed file\n")
        config = config_from_yaml(
            _CONFIG.format(
                interface="lo", base=self.base, port=0, known=KNOWN, ignored=IGNORED, extra=""
            )
        )
        chain = PolicyChain(
            [("static", StaticPolicy(config)), ("arch", ArchPolicy(config))], reactor
        )
        self.sightings = SightingRegistry(reactor.seconds, neighbours=dict)
        lo = InterfaceInfo("lo", 1, IPv4Interface("127.0.0.1/8"), 65536)
        self.events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, self.events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        self.boot_events: list[BootEvent] = []
        bus = BootEventBus()
        bus.subscribe(self.boot_events.append)
        self.service = HttpService(
            ServerContext.build(
                config,
                chain,
                cast(IServerReactor, reactor),
                interfaces=[lo],
                sightings=self.sightings,
                events=bus,
            )
        )
        self.service.privilegedStartService()
        self.service.startService()
        self.addCleanup(self.service.stopService)
        [(host, port)] = self.service.addresses
        self.base_url = f"http://{host}:{port}/"
        self.pool = HTTPConnectionPool(reactor, persistent=False)

    def access(self) -> list[BootEvent]:
        return self.boot_events

    @defer.inlineCallbacks
    def test_scripts_and_files(self) -> Generator[Any, Any, None]:
        response = yield treq.get(self.base_url + f"boot.ipxe?mac={KNOWN}", pool=self.pool)
        body = yield response.text()
        self.assertEqual(response.code, 200)
        self.assertIn(f"kernel {self.base_url}node/linux initrd=initrd.gz console=ttyS0", body)
        self.assertNotIn("shadowed", body)
        response = yield treq.get(self.base_url + "menu.ipxe", pool=self.pool)
        self.assertEqual((yield response.content()), self.files["menu.ipxe"])
        self.assertTrue(
            any("is a generated name" in e.get("log_format", "") for e in self.events),
            "the shadowed boot.ipxe is reported at start",
        )

    @defer.inlineCallbacks
    def test_sendfile_through_the_site(self) -> Generator[Any, Any, None]:
        """Bodies leave through ``os.sendfile``, not through Twisted's write buffer."""
        calls: list[int] = []
        real = os.sendfile

        def counting(out: int, fd: int, offset: int | None, count: int) -> int:
            sent = real(out, fd, offset, count)
            calls.append(sent)
            return sent

        self.patch(os, "sendfile", counting)
        response = yield treq.get(self.base_url + "node/initrd.gz", pool=self.pool)
        data = yield response.content()
        self.assertEqual(data, self.files["node/initrd.gz"])
        self.assertEqual(sum(calls), len(data))

    @defer.inlineCallbacks
    def test_uncorked_after_the_body(self) -> Generator[Any, Any, None]:
        """The body is sent corked (TCP_CORK); a kept-alive connection is uncorked afterwards,
        or the next response's last segment would wait for the kernel's 200 ms cork timer."""
        channels: list[Any] = []
        build = self.service.site.buildProtocol

        def recording(addr: Any) -> Any:
            channel = build(addr)
            channels.append(channel)
            return channel

        self.patch(self.service.site, "buildProtocol", recording)
        pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(pool.closeCachedConnections)
        for name in ("node/initrd.gz", "node/linux"):
            response = yield treq.get(self.base_url + name, pool=pool)
            self.assertEqual((yield response.content()), self.files[name])
        [channel] = channels  # one connection for both
        handle = channel.transport.getHandle()
        self.assertEqual(handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK), 0)

    @defer.inlineCallbacks
    def test_access_log(self) -> Generator[Any, Any, None]:
        response = yield treq.get(self.base_url + "node/linux", pool=self.pool)
        yield response.content()
        for _ in range(100):  # the log line is written when the last byte is handed over
            if self.access():
                break
            yield deferLater(reactor, 0.01, lambda: None)
        [event] = self.access()
        self.assertEqual(event.details["path"], "/node/linux")
        self.assertEqual((event.details["status"], event.details["bytes"]), (200, 1_000_000))
        self.assertEqual(str(event.client), "127.0.0.1")
        self.assertIsNone(event.mac)
        self.assertGreaterEqual(cast(float, event.details["seconds"]), 0)

    def test_listens_only_on_the_interfaces(self) -> None:
        self.assertEqual([host for host, _ in self.service.addresses], ["127.0.0.1"])


# --- twistd -n pxe in a network namespace --------------------------------------------------------

# Runs inside the client namespace with the venv's Python: argv = url, count. Fetches the URL
# count times at once with treq (one connection each) and prints [status, length, sha256] each.
_TREQ_CLIENT = """
import hashlib, json, sys
import treq
from twisted.internet import defer, task
from twisted.web.client import HTTPConnectionPool

def main(reactor, url, count):
    pool = HTTPConnectionPool(reactor, persistent=False)
    @defer.inlineCallbacks
    def one():
        response = yield treq.get(url, pool=pool, timeout=60)
        body = yield response.content()
        return [response.code, len(body), hashlib.sha256(body).hexdigest()]
    d = defer.gatherResults([one() for _ in range(int(count))], consumeErrors=True)
    d.addCallback(lambda results: print(json.dumps(results)))
    return d

task.react(main, sys.argv[1:3])
"""


# Runs inside the client namespace: argv = host, port; stdin = the request in hex. Prints the
# whole answer (until the server closes, at most 10 s) in hex.
_RAW_CLIENT = """
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
s.sendall(bytes.fromhex(sys.stdin.read().strip()))
data = []
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    data.append(chunk)
print(b"".join(data).hex())
"""


class LabServiceTests(SynchronousTestCase):
    """``twistd -n pxe`` with HTTP only, in ``<lab>-srv``; clients in ``<lab>-cli``."""

    def setUp(self) -> None:
        require_lab(self)
        self.curl = require_binary("curl", self)
        if not TWISTD.exists():
            require_binary(str(TWISTD), self)
        self.base = _tempdir(self)
        self.files = _tree(self.base)
        self.lab = NetLab(clients=0).up()
        self.addCleanup(self.lab.down)
        # The client namespace's bridge address is who curl connects from; its MAC is in the
        # config, so a boot.ipxe without mac= finds it through the server's neighbour table.
        links = json.loads(
            self.lab.run(self.lab.cli, ["ip", "-j", "link", "show", "br0"], check=True).stdout
        )
        self.cli_mac = links[0]["address"]
        extra = f'  - {{mac: "{self.cli_mac}", name: lab-client, kernel: node/linux}}'
        config = self.base / "pxe.yaml"
        config.write_text(
            _CONFIG.format(
                interface="srv0",
                base=self.base,
                port=PORT,
                known=KNOWN,
                ignored=IGNORED,
                extra=extra,
            )
        )
        self.log = self.base / "twistd.log"
        argv = [str(TWISTD), "-n", "--pidfile", str(self.base / "twistd.pid")]
        argv += ["--logfile", str(self.log), "pxe", "--config", str(config)]
        self.server = self.lab.spawn(self.lab.srv, argv, stderr=subprocess.PIPE)
        self.addCleanup(self._stop)
        try:
            self.lab.wait_port(self.lab.srv, "tcp", PORT, timeout=20, proc=self.server)
        except Exception:
            self._stop()
            raise AssertionError(f"twistd pxe did not start:\n{self._log_text()}") from None
        self.url = f"http://{self.lab.srv_ip}:{PORT}/"

    def _stop(self) -> None:
        NetLab.stop(self.server)
        if self.server.stderr is not None:
            self.server.stderr.close()

    def _log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else "(no log)"

    def curl_call(
        self, *args: str, output: Path | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """curl in the client namespace: (status, headers of the last response, body)."""
        body = output or self.base / "body"
        headers = self.base / "headers"
        if output is None:
            body.unlink(missing_ok=True)  # curl leaves the file alone when there is no body
        argv = [self.curl, "-sS", "-m", "20", "-D", str(headers), "-o", str(body), *args]
        done = self.lab.run(self.lab.cli, argv, timeout=30)
        self.assertEqual(done.returncode, 0, done.stderr)
        blocks = headers.read_bytes().decode("latin-1").strip().split("\r\n\r\n")
        lines = blocks[-1].split("\r\n")
        status = int(lines[0].split()[1])
        fields = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        return status, fields, body.read_bytes() if body.exists() else b""

    def raw(self, request: bytes) -> bytes:
        """Send *request* verbatim from the client namespace; everything until the server closes."""
        done = self.lab.run(
            self.lab.cli,
            [str(VENV_BIN / "python"), "-c", _RAW_CLIENT, self.lab.srv_ip, str(PORT)],
            input=request.hex(),
            stdin=None,
            timeout=30,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        return bytes.fromhex(done.stdout.strip())

    def test_head_for_uefi(self) -> None:
        """UEFI HTTP Boot's HEAD: exact Content-Length and application/efi (§3.1)."""
        for name in ("ipxe.efi", "BOOTX64.EFI"):
            status, fields, _ = self.curl_call("-I", self.url + name)
            self.assertEqual(status, 200)
            self.assertEqual(fields["content-length"], str(len(self.files[name])))
            self.assertEqual(fields["content-type"], "application/efi")
            self.assertEqual(fields["accept-ranges"], "bytes")
            # On the wire: the header block and not one byte more.
            answer = self.raw(
                f"HEAD /{name} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
            )
            self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer)
            self.assertTrue(answer.endswith(b"\r\n\r\n"), answer)
            self.assertIn(b"\r\nContent-Length: %d\r\n" % len(self.files[name]), answer)
        status, fields, body = self.curl_call(self.url + "ipxe.efi")
        self.assertEqual((status, body), (200, self.files["ipxe.efi"]))

    def test_ranges(self) -> None:
        data = self.files["node/initrd.gz"]
        size = len(data)
        status, fields, body = self.curl_call("-r", "100-1099", self.url + "node/initrd.gz")
        self.assertEqual((status, body), (206, data[100:1100]))
        self.assertEqual(fields["content-range"], f"bytes 100-1099/{size}")
        status, _, body = self.curl_call("-r", "-5000", self.url + "node/initrd.gz")
        self.assertEqual((status, body), (206, data[-5000:]))
        status, fields, body = self.curl_call("-r", "0-9,500000-500009", self.url + "node/linux")
        self.assertEqual(status, 206)
        self.assertTrue(fields["content-type"].startswith("multipart/byteranges"))
        self.assertIn(
            b"Content-Range: bytes 0-9/1000000\r\n\r\n" + self.files["node/linux"][:10], body
        )
        self.assertIn(
            b"Content-Range: bytes 500000-500009/1000000\r\n\r\n"
            + self.files["node/linux"][500000:500010],
            body,
        )
        status, fields, _ = self.curl_call("-r", f"{size}-", self.url + "node/initrd.gz")
        self.assertEqual((status, fields["content-range"]), (416, f"bytes */{size}"))
        # An interrupted download resumed with curl -C: the pieces make the whole file.
        partial = self.base / "resumed"
        partial.write_bytes(data[: 2 * MiB])
        status, _, body = self.curl_call("-C", "-", self.url + "node/initrd.gz", output=partial)
        self.assertEqual((status, body), (206, data))

    def test_conditional_requests(self) -> None:
        status, fields, _ = self.curl_call("-I", self.url + "node/linux")
        etag, modified = fields["etag"], fields["last-modified"]
        status, _, body = self.curl_call("-H", f"If-None-Match: {etag}", self.url + "node/linux")
        self.assertEqual((status, body), (304, b""))
        status, _, body = self.curl_call(
            "-H", f"If-Modified-Since: {modified}", self.url + "node/linux"
        )
        self.assertEqual((status, body), (304, b""))
        status, _, _ = self.curl_call("-H", 'If-Match: "other"', self.url + "node/linux")
        self.assertEqual(status, 412)
        status, _, body = self.curl_call(
            "-r", "0-9", "-H", 'If-Range: "stale"', self.url + "node/linux"
        )
        self.assertEqual((status, body), (200, self.files["node/linux"]))
        status, _, body = self.curl_call(
            "-r", "0-9", "-H", f"If-Range: {etag}", self.url + "node/linux"
        )
        self.assertEqual((status, body), (206, self.files["node/linux"][:10]))

    def test_traversal(self) -> None:
        """Nothing outside the root, however the path is spelled (sent as is, --path-as-is)."""
        attempts = {
            "../secret": 400,
            "node/../../secret": 400,
            "%2e%2e/secret": 400,
            "node/%2E%2E/%2e%2e/secret": 400,
            "..%2fsecret": 400,
            "node%2f..%2f..%2fsecret": 400,
            "..%5csecret": 400,
            "escape": 404,  # a symlink out of the root
            "node/": 404,
            "%2e%2e/etc/passwd": 400,
        }
        for path, expected in attempts.items():
            status, _, body = self.curl_call("--path-as-is", self.url + path)
            self.assertEqual(status, expected, path)
            self.assertNotIn(b"SECRET", body, path)
        log = self._log_text()
        self.assertIn("Refused GET /%2e%2e/secret", log)

    def test_boot_ipxe(self) -> None:
        """The iPXE script for a known machine, an unknown one, an ignored one, and one found by
        its address alone (the server's neighbour table), as iPXE would ask (§4.2)."""
        query = "?mac={mac}&uuid=&arch=x86_64"
        status, fields, body = self.curl_call(self.url + "boot.ipxe" + query.format(mac=KNOWN))
        self.assertEqual(status, 200)
        script = body.decode()
        self.assertTrue(script.startswith("#!ipxe\n"), script)
        self.assertIn(f"kernel {self.url}node/linux initrd=initrd.gz console=ttyS0\n", script)
        self.assertIn(f"initrd {self.url}node/initrd.gz\n", script)
        self.assertEqual(fields["content-length"], str(len(body)))
        status, _, body = self.curl_call(self.url + "boot.ipxe" + query.format(mac=UNKNOWN))
        self.assertEqual(status, 200)
        self.assertIn(f"kernel {self.url}default/linux initrd=initrd.gz quiet\n", body.decode())
        status, _, body = self.curl_call(self.url + "boot.ipxe" + query.format(mac=IGNORED))
        self.assertEqual(status, 404)
        self.assertIn(b"ignored by policy static", body)
        status, _, body = self.curl_call(self.url + "boot.ipxe?arch=x86_64")
        self.assertEqual(status, 200)
        self.assertIn("lab-client", body.decode())
        self.assertIn(f"kernel {self.url}node/linux", body.decode())
        log = self._log_text()
        self.assertIn(f"GET /boot.ipxe?mac={KNOWN}&uuid=&arch=x86_64 200", log)
        self.assertIn(f"mac {KNOWN}", log)
        self.assertIn(f"mac {self.cli_mac}", log)

    def test_concurrent_downloads(self) -> None:
        """100 downloads at once from a treq client, every one byte-identical."""
        data = self.files["node/initrd.gz"]
        python = str(VENV_BIN / "python")
        done = self.lab.run(
            self.lab.cli,
            [python, "-c", _TREQ_CLIENT, self.url + "node/initrd.gz", "100"],
            timeout=120,
        )
        self.assertEqual(done.returncode, 0, done.stderr[-2000:])
        results = json.loads(done.stdout.strip().splitlines()[-1])
        expected = [200, len(data), hashlib.sha256(data).hexdigest()]
        self.assertEqual(len(results), 100)
        self.assertEqual([r for r in results if r != expected], [])
        # The server is still fine afterwards, and logged one line per download.
        status, _, body = self.curl_call(self.url + "default/linux")
        self.assertEqual((status, body), (200, self.files["default/linux"]))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if self._log_text().count("GET /node/initrd.gz 200") >= 100:
                break
            time.sleep(0.05)
        self.assertEqual(self._log_text().count(f"GET /node/initrd.gz 200 {len(data)} bytes"), 100)
