"""``pxetwist explain``: text and JSON output, captured requests, and how it fails.

Most tests call :func:`pxetwist.cli.main` in this process with stdout and stderr captured;
:class:`ConsoleScriptTests` runs the installed ``pxetwist`` console script once.  Expected
reply shapes are those of protocol-reference §7.7 (R1-R5); the ``--packet`` tests feed the §7
request vectors.  That explain's bytes equal what the running server sends is checked over
real sockets in :mod:`tests.dhcp.test_pxe_lab`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from pxetwist import cli
from pxetwist.dhcp.options import MessageType, OptionCode
from pxetwist.dhcp.packet import DhcpPacket, decode
from tests.dhcp.test_packet import R1, R2, V1, V3, V5, V6

SERVER = "192.0.2.10"
MAC = "52:54:00:00:00:01"
IGNORED_MAC = "52:54:00:00:00:0a"
KNOWN_MAC = "52:54:00:00:00:0b"
GUID = uuid.UUID("8b5a3c1e-2f44-4c1a-9d2e-0a1b2c3d4e5f")
HTTP_VENDOR = "HTTPClient:Arch:00016:UNDI:003000"
PXE_BOOT = b"\x06\x01\x08\xff"

CONFIG = """
{server_line}
data_dir: {base}/data
dhcp:
  mode: proxy
  subnets:
    - network: 192.0.2.0/24
      range: [192.0.2.50, 192.0.2.60]
      router: 192.0.2.1
      dns: [192.0.2.1]
      lease_time: 3600
tftp: {{enabled: false}}
http: {{enabled: false, port: 8080}}
boot:
  bios: undionly.kpxe
  efi-x86_64: ipxe.efi
  ipxe: "http://{{server}}:{{http_port}}/boot.ipxe?mac=${{mac}}"
  http-efi-x86_64: "http://{{server}}:{{http_port}}/efi/ipxe.efi"
machines:
  - {{mac: "{ignored}", name: skipme, action: ignore}}
  - {{mac: "{known}", name: node1, boot: {{bios: pxelinux.0}}}}
policy: {{chain: [static, arch], plugin_dirs: []}}
"""

#: The command-line flags that make explain build each kind of client's DISCOVER.
CLIENTS: dict[str, list[str]] = {
    "bios": ["--arch", "0", "--vendor-class", "PXEClient:Arch:00000:UNDI:002001"],
    "uefi": ["--arch", "7"],
    "ipxe": ["--arch", "7", "--user-class", "iPXE"],
    "http": ["--arch", "16", "--vendor-class", HTTP_VENDOR],
}
FILES = {
    "bios": b"undionly.kpxe",
    "uefi": b"ipxe.efi",
    "ipxe": b"http://192.0.2.10:8080/boot.ipxe?mac=${mac}",
    "http": b"http://192.0.2.10:8080/efi/ipxe.efi",
}


def config_text(base: Path, server_line: str = f"server_address: {SERVER}") -> str:
    return CONFIG.format(base=base, ignored=IGNORED_MAC, known=KNOWN_MAC, server_line=server_line)


class ExplainCase(SynchronousTestCase):
    server_line = f"server_address: {SERVER}"  # the config's; PacketTests give their own

    def setUp(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="pxetwist-explain-"))
        self.addCleanup(shutil.rmtree, self.base, ignore_errors=True)
        self.config = self.write_config(config_text(self.base, self.server_line))

    def write_config(self, text: str, name: str = "pxe.yaml") -> Path:
        path = self.base / name
        path.write_text(text)
        return path

    def explain(self, *args: str, config: Path | None = None) -> tuple[int, str, str]:
        """``pxetwist explain`` in this process: (exit code, stdout, stderr)."""
        out, err = io.StringIO(), io.StringIO()
        argv = ["explain", "--config", str(config or self.config), *args]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(argv)
        return code, out.getvalue(), err.getvalue()

    def text(self, *args: str) -> str:
        code, out, err = self.explain(*args)
        self.assertEqual((code, err), (0, ""))
        return out

    def steps(self, *args: str) -> list[dict[str, Any]]:
        code, out, err = self.explain(*args, "--json")
        self.assertEqual((code, err), (0, ""))
        steps: list[dict[str, Any]] = json.loads(out)["steps"]
        return steps

    def replies(self, step: dict[str, Any]) -> list[DhcpPacket]:
        return [decode(bytes.fromhex(reply["hex"])) for reply in step["replies"]]


class TextOutputTests(ExplainCase):
    """The human-readable report: the request, the deciding policy and every reply field."""

    def test_bios_proxy(self) -> None:
        out = self.text("--mac", MAC, *CLIENTS["bios"])
        self.assertIn("request: DISCOVER to port 67\n", out)
        self.assertIn(f"client {MAC}  firmware pxe  arch 0 (BIOS)  stage proxy\n", out)
        self.assertIn("decision: boot by policy arch: by architecture (defaults)", out)
        self.assertIn("  program: undionly.kpxe\n", out)
        self.assertIn("reply to 255.255.255.255:68\n", out)
        self.assertIn(f"OFFER: yiaddr 0.0.0.0  siaddr {SERVER}  ciaddr 0.0.0.0", out)
        self.assertIn(f"sname '{SERVER}'  file 'undionly.kpxe'\n", out)
        self.assertIn("option  60 vendor-class: PXEClient\n", out)
        self.assertIn("option  43 vendor-specific: 06 01 08 ff\n", out)
        self.assertIn("option  67 bootfile: undionly.kpxe\\0\n", out)
        self.assertNotIn("4011", out)

    def test_uefi_proxy_follows_the_redirect_to_4011(self) -> None:
        out = self.text("--mac", MAC, *CLIENTS["uefi"])
        first, second = out.split("request: REQUEST to port 4011\n")
        self.assertIn("firmware pxe  arch 7 (EFI_X86_64)  stage proxy\n", first)
        self.assertIn("proxy offer, redirect to port 4011", first)
        self.assertNotIn("vendor-specific", first)
        self.assertIn("option  60 vendor-class: PXEClient\n", first)
        self.assertIn("stage proxy-4011\n", second)
        self.assertIn("reply to 192.0.2.100:4011\n", second)
        self.assertIn(f"ACK: yiaddr 0.0.0.0  siaddr {SERVER}  ciaddr 192.0.2.100", second)
        self.assertIn("file 'ipxe.efi'", second)

    def test_ipxe(self) -> None:
        out = self.text("--mac", MAC, *CLIENTS["ipxe"])
        self.assertIn("firmware ipxe", out)
        self.assertIn("iPXE client -> boot[ipxe] = ", out)
        self.assertIn("file 'http://192.0.2.10:8080/boot.ipxe?mac=${mac}'", out)
        self.assertNotIn("4011", out)

    def test_http_boot(self) -> None:
        out = self.text("--mac", MAC, *CLIENTS["http"])
        self.assertIn("firmware http-boot  arch 16 (HTTP_EFI_X86_64)", out)
        self.assertIn("option  60 vendor-class: HTTPClient\n", out)
        self.assertIn("file 'http://192.0.2.10:8080/efi/ipxe.efi'", out)
        self.assertNotIn("vendor-specific", out)

    def test_authoritative(self) -> None:
        out = self.text("--mac", MAC, *CLIENTS["uefi"], "--mode", "authoritative")
        self.assertIn("stage dhcp\n", out)
        self.assertIn(f"OFFER: yiaddr 192.0.2.50  siaddr {SERVER}", out)
        self.assertIn("option  51 lease-time: 3600 s\n", out)
        self.assertIn("option   1 subnet-mask: 255.255.255.0\n", out)
        self.assertIn("option   3 router: 192.0.2.1\n", out)
        self.assertIn("option  43 vendor-specific: 06 01 08 ff\n", out)
        self.assertNotIn("4011", out)

    def test_uuid_is_echoed(self) -> None:
        out = self.text("--mac", MAC, *CLIENTS["bios"], "--uuid", str(GUID))
        echoed = (b"\x00" + GUID.bytes_le).hex(" ")
        self.assertIn(f"option  97 client-uuid: {echoed}\n", out)

    def test_machine_from_the_config(self) -> None:
        out = self.text("--mac", KNOWN_MAC, *CLIENTS["bios"])
        self.assertIn("decision: boot by policy static: machine node1 (by MAC)", out)
        self.assertIn("file 'pxelinux.0'", out)

    def test_ignored_machine_gets_no_reply(self) -> None:
        out = self.text("--mac", IGNORED_MAC, *CLIENTS["bios"])
        self.assertIn(
            "decision: ignore by policy static: machine skipme (by MAC): action ignore", out
        )
        self.assertIn("outcome: ignored: policy:", out)
        self.assertNotIn("reply to", out)

    def test_plain_client_in_proxy_mode(self) -> None:
        out = self.text("--mac", MAC)
        self.assertIn("firmware plain", out)
        self.assertIn("decision: none (no policy answered)\n", out)
        self.assertIn("outcome: ignored: not a network-boot client\n", out)
        self.assertNotIn("reply to", out)


class JsonOutputTests(ExplainCase):
    """``--json``: per step the port, policy, verdict and each reply's address and bytes."""

    def assert_boot(self, reply: DhcpPacket, kind: str) -> None:
        self.assertEqual(reply.file, FILES[kind])
        self.assertEqual(reply.get(OptionCode.BOOTFILE), FILES[kind] + b"\x00")
        self.assertEqual(reply.server_id, IPv4Address(SERVER))
        if kind == "http":
            self.assertEqual(reply.get(OptionCode.VENDOR_CLASS), b"HTTPClient")
            self.assertIsNone(reply.get(OptionCode.VENDOR_SPECIFIC))
        else:
            self.assertEqual(reply.get(OptionCode.VENDOR_CLASS), b"PXEClient")
            self.assertEqual(reply.siaddr, IPv4Address(SERVER))

    def test_proxy(self) -> None:
        for kind, flags in CLIENTS.items():
            steps = self.steps("--mac", MAC, *flags)
            self.assertEqual(steps[0]["port"], 67)
            self.assertEqual(steps[0]["policy"], "arch")
            self.assertEqual((steps[0]["action"], steps[0]["verdict"]), ("boot", "answered"))
            [reply] = steps[0]["replies"]
            self.assertEqual((reply["address"], reply["port"]), ("255.255.255.255", 68))
            [offer] = self.replies(steps[0])
            self.assertEqual(offer.message_type, MessageType.OFFER)
            self.assertEqual(offer.yiaddr, IPv4Address(0))
            self.assertIsNone(offer.lease_time)
            self.assert_boot(offer, kind)
            if kind == "uefi":
                self.assertIsNone(offer.get(OptionCode.VENDOR_SPECIFIC))  # R2
                self.assertEqual(len(steps), 2)
                self.assertEqual(steps[1]["port"], 4011)
                [reply] = steps[1]["replies"]
                self.assertEqual((reply["address"], reply["port"]), ("192.0.2.100", 4011))
                [ack] = self.replies(steps[1])
                self.assertEqual(ack.message_type, MessageType.ACK)
                self.assertEqual((ack.xid, ack.chaddr), (offer.xid, offer.chaddr))
                self.assertEqual(ack.ciaddr, IPv4Address("192.0.2.100"))
                self.assert_boot(ack, kind)
            else:
                self.assertEqual(len(steps), 1, kind)
                if kind != "http":
                    self.assertEqual(offer.get(OptionCode.VENDOR_SPECIFIC), PXE_BOOT)  # R1

    def test_authoritative(self) -> None:
        for kind, flags in CLIENTS.items():
            steps = self.steps("--mac", MAC, *flags, "--mode", "authoritative")
            self.assertEqual(len(steps), 1, kind)
            [offer] = self.replies(steps[0])
            self.assertEqual(offer.message_type, MessageType.OFFER)
            self.assertEqual(offer.yiaddr, IPv4Address("192.0.2.50"))
            self.assertEqual(offer.lease_time, 3600)
            self.assert_boot(offer, kind)
            if kind != "http":
                self.assertEqual(offer.get(OptionCode.VENDOR_SPECIFIC), PXE_BOOT)  # R3

    def test_ignored_and_plain(self) -> None:
        [step] = self.steps("--mac", IGNORED_MAC, *CLIENTS["bios"])
        self.assertEqual((step["policy"], step["action"]), ("static", "ignore"))
        self.assertEqual((step["verdict"], step["replies"]), ("ignored", []))
        [step] = self.steps("--mac", MAC)
        self.assertEqual((step["policy"], step["action"]), (None, None))
        self.assertEqual((step["verdict"], step["replies"]), ("ignored", []))


class PacketTests(ExplainCase):
    """``--packet``: the §7 request vectors, answered in the shapes of §7.7.

    The config names no ``server_address``, so ``--server-address`` (default 192.0.2.1) is
    the address the replies carry.
    """

    server_line = ""

    def packet_steps(self, vector: bytes, *args: str) -> list[dict[str, Any]]:
        return self.steps("--packet", vector.hex(), *args)

    def test_v1_gets_r1(self) -> None:
        """R1's header byte for byte (with R1's server address), and every R1 option."""
        steps = self.packet_steps(V1, "--server-address", "192.168.16.10")
        self.assertEqual(len(steps), 1)
        [reply] = steps[0]["replies"]
        wire = bytes.fromhex(reply["hex"])
        self.assertEqual(wire[:236], R1[:236])
        ours, r1 = decode(wire), decode(R1)
        for code, value in r1.options:
            self.assertEqual(ours.get(code), value, f"option {code}")

    def test_v3_gets_r2_then_the_4011_ack(self) -> None:
        steps = self.packet_steps(
            V3, "--server-address", "10.0.16.129", "--network", "10.0.16.0/21"
        )
        self.assertEqual([step["port"] for step in steps], [67, 4011])
        [offer] = self.replies(steps[0])
        self.assertEqual(offer.get(OptionCode.VENDOR_CLASS), b"PXEClient")
        self.assertIsNone(offer.get(OptionCode.VENDOR_SPECIFIC))
        self.assertEqual((offer.siaddr, offer.sname), (IPv4Address("10.0.16.129"), b"10.0.16.129"))
        [ack] = self.replies(steps[1])
        r2 = decode(R2)
        # R2's fields; ciaddr and flags are the follow-up request's (explain's is .100 + V3's).
        for field in ("op", "xid", "yiaddr", "siaddr", "giaddr", "chaddr", "sname", "file"):
            self.assertEqual(getattr(ack, field), getattr(r2, field), field)
        self.assertEqual(ack.ciaddr, IPv4Address("10.0.16.100"))
        for code, value in r2.options:
            self.assertEqual(ack.get(code), value, f"option {code}")

    def test_v5_gets_r4(self) -> None:
        [step] = self.packet_steps(V5, "--mode", "authoritative", "--server-address", SERVER)
        [offer] = self.replies(step)
        self.assertEqual(offer.yiaddr, IPv4Address("192.0.2.50"))
        self.assertEqual(offer.siaddr, IPv4Address(SERVER))
        self.assertEqual(offer.file, FILES["ipxe"])
        self.assertEqual(offer.get(OptionCode.CLIENT_ID), bytes.fromhex("01525400123456"))
        self.assertEqual(offer.lease_time, 3600)
        for code in (OptionCode.SUBNET_MASK, OptionCode.ROUTER, OptionCode.DNS):
            self.assertIn(code, offer)

    def test_v6_gets_r5(self) -> None:
        for mode in ("authoritative", "proxy"):
            [step] = self.packet_steps(V6, "--mode", mode, "--server-address", SERVER)
            [offer] = self.replies(step)
            self.assertEqual(offer.get(OptionCode.VENDOR_CLASS), b"HTTPClient")
            self.assertEqual(offer.file, FILES["http"])
            self.assertEqual(
                offer.get(OptionCode.CLIENT_UUID), decode(V6).get(OptionCode.CLIENT_UUID)
            )
            self.assertEqual(offer.yiaddr != IPv4Address(0), mode == "authoritative")

    def test_text_for_a_packet(self) -> None:
        out = self.text("--packet", V1.hex())
        self.assertIn("client d0:50:99:4e:05:57  firmware pxe  arch 0 (BIOS)", out)
        self.assertIn("option  97 client-uuid: 00 00 02 00 03", out)
        self.assertIn("siaddr 192.0.2.1  ", out)  # neither config nor flag: the documented default


class ErrorTests(ExplainCase):
    """A broken config: one line and exit 1.  Bad input on the command line: exit 2."""

    def fails(self, expected: int, *args: str, config: Path | None = None) -> str:
        code, out, err = self.explain(*args, config=config)
        self.assertEqual((code, out), (expected, ""))
        self.assertEqual(err.count("\n"), 1, err)
        return err

    def test_unknown_key(self) -> None:
        bad = self.write_config("dhcp:\n  mode: proxy\n  bogus: 1\n", "bad.yaml")
        err = self.fails(1, "--mac", MAC, "--arch", "0", config=bad)
        self.assertTrue(err.startswith(f"{bad}:3: dhcp.bogus: unknown key"), err)

    def test_bad_value(self) -> None:
        bad = self.write_config("dhcp: {mode: sometimes}\n", "bad.yaml")
        err = self.fails(1, "--mac", MAC, config=bad)
        self.assertTrue(err.startswith(f"{bad}:1: dhcp.mode:"), err)

    def test_not_yaml(self) -> None:
        bad = self.write_config("dhcp: [\n", "bad.yaml")
        err = self.fails(1, "--mac", MAC, config=bad)
        self.assertIn("not valid YAML", err)

    def test_missing_config(self) -> None:
        err = self.fails(1, "--mac", MAC, config=self.base / "absent.yaml")
        self.assertIn("cannot read the config", err)

    def test_unknown_policy(self) -> None:
        bad = self.write_config("policy: {chain: [static, nosuch], plugin_dirs: []}\n", "p.yaml")
        err = self.fails(1, "--mac", MAC, config=bad)
        self.assertTrue(err.startswith(f"{bad}: policy 'nosuch' not found"), err)

    def test_bad_mac(self) -> None:
        err = self.fails(2, "--mac", "52:54:00:zz:00:01", "--arch", "0")
        self.assertEqual(err, "pxetwist explain: '52:54:00:zz:00:01' is not a MAC address\n")

    def test_bad_packet(self) -> None:
        self.assertIn("non-hexadecimal", self.fails(2, "--packet", "not hex"))
        self.assertIn("shorter than the 240-byte header", self.fails(2, "--packet", "0101"))
        wrong_cookie = V1[:236] + b"\x00\x00\x00\x00" + V1[240:]
        self.assertIn("magic cookie", self.fails(2, "--packet", wrong_cookie.hex()))


class ConsoleScriptTests(SynchronousTestCase):
    """The installed ``pxetwist`` entry point, as an operator runs it."""

    def test_console_script(self) -> None:
        script = Path(sys.executable).parent / "pxetwist"
        if not script.exists():
            self.fail(f"{script} is missing: install the project into the venv (pip install -e .)")
        base = Path(tempfile.mkdtemp(prefix="pxetwist-explain-"))
        self.addCleanup(shutil.rmtree, base, ignore_errors=True)
        config = base / "pxe.yaml"
        config.write_text(config_text(base))
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        argv = [str(script), "explain", "--config", str(config), "--mac", MAC, "--arch", "7"]
        done = subprocess.run(
            [*argv, "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )
        self.assertEqual((done.returncode, done.stderr), (0, ""))
        steps = json.loads(done.stdout)["steps"]
        self.assertEqual([step["port"] for step in steps], [67, 4011])
        ack = decode(bytes.fromhex(steps[1]["replies"][0]["hex"]))
        self.assertEqual((ack.message_type, ack.file), (MessageType.ACK, b"ipxe.efi"))
        done = subprocess.run(
            [str(script), "explain", "--config", str(config), "--mac", "nonsense"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )
        self.assertEqual(done.returncode, 2)
        self.assertEqual(done.stderr, "pxetwist explain: 'nonsense' is not a MAC address\n")
