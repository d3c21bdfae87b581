"""The session registry, fed synthetic events through the MAC attribution (no sockets)."""

from __future__ import annotations

from ipaddress import IPv4Address

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pxetwist.config.model import SessionsConfig
from pxetwist.events import BootEvent, EventStage, Outcome
from pxetwist.policy.sightings import SightingRegistry
from pxetwist.policy.values import MacAddress
from pxetwist.sessions.attribution import Attribution
from pxetwist.sessions.model import BootStage, SessionState, session_from_json
from pxetwist.sessions.registry import SessionRegistry
from tests.sessions.events import CLIENT, MAC, OTHER, dhcp, full_boot, http, os_up, tftp


class Harness:
    def __init__(self, **settings: object) -> None:
        self.clock = Clock()
        self.neighbours: dict[IPv4Address, MacAddress] = {}
        self.sightings = SightingRegistry(self.clock.seconds, neighbours=lambda: self.neighbours)
        self.registry = SessionRegistry(self.clock, SessionsConfig(**settings))  # type: ignore[arg-type]
        self.attribution = Attribution([self.registry], self.sightings)

    def feed(self, *events: BootEvent) -> None:
        for event in events:
            if event.time > self.clock.seconds():
                self.clock.advance(event.time - self.clock.seconds())
            self.attribution(event)


class TimelineTests(SynchronousTestCase):
    def test_full_boot_has_every_stage_in_order(self) -> None:
        h = Harness()
        h.feed(*full_boot())
        (session,) = h.registry.sessions(MAC)
        self.assertEqual(session.state, SessionState.BOOTED)
        self.assertEqual(session.stage, BootStage.OS_UP)
        stages = [item["stage"] for item in session.stage_timeline()]
        self.assertEqual(
            stages,
            [
                "dhcp-offer",
                "dhcp-ack",
                "nbp",
                "ipxe-dhcp",
                "script",
                "kernel",
                "initrd",
                "os-up",
            ],
        )
        seconds = [item["seconds"] for item in session.stage_timeline()]
        self.assertEqual(seconds, [1.0, 1.0, 3.0, 2.0, 1.0, 2.0, 20.0, 0.0])
        self.assertEqual(session.ended, 1030.0)
        self.assertEqual(session.client, str(CLIENT))
        self.assertEqual(session.policy, "static")
        self.assertEqual([e.time for e in session.events], sorted(e.time for e in session.events))
        # the address-only HTTP events were tied to the MAC through the DHCP REQUEST's address
        self.assertEqual(len(session.events), 9)

    def test_json_round_trip(self) -> None:
        h = Harness()
        h.feed(*full_boot())
        (session,) = h.registry.sessions(MAC)
        value = session.as_json()
        self.assertEqual(value["mac"], "52:54:00:77:00:10")
        self.assertEqual(value["state"], "booted")
        event = value["events"][2]  # type: ignore[index]
        self.assertEqual(
            (event["protocol"], event["stage"], event["details"]["file"]),
            ("tftp", "nbp", "undionly.kpxe"),
        )
        again = session_from_json(value)
        self.assertEqual(again.as_json(), value)

    def test_decision_names_the_kernel_whatever_its_file_name(self) -> None:
        h = Harness()
        h.feed(dhcp(1.0), dhcp(2.0, EventStage.REQUEST, reply="ACK", client=CLIENT))
        h.feed(http(3.0, "/debian/linux"), http(4.0, "/debian/initrd.gz"))
        (session,) = h.registry.sessions(MAC)
        self.assertEqual(
            [e.stage for e in session.events][-2:], [BootStage.KERNEL, BootStage.INITRD]
        )

    def test_generated_files_are_the_loaders_config(self) -> None:
        h = Harness()
        h.feed(*full_boot()[:3], tftp(1004.0, "menu/node1", generated=True))
        (session,) = h.registry.sessions(MAC)
        self.assertEqual(session.stage, BootStage.SCRIPT)

    def test_proxy_mode_boot_server_and_ignored_request(self) -> None:
        h = Harness()
        h.feed(
            dhcp(1.0, firmware="pxe", arch=7),
            dhcp(1.5, EventStage.REQUEST, outcome=Outcome.IGNORED, reply=None),
            dhcp(2.0, EventStage.BOOT_SERVER, reply="ACK", client=CLIENT),
            tftp(3.0, "ipxe.efi"),
        )
        (session,) = h.registry.sessions(MAC)
        self.assertEqual(
            [item["stage"] for item in session.stage_timeline()],
            ["dhcp-offer", "boot-server", "nbp"],
        )
        self.assertEqual(session.events[1].stage, BootStage.DHCP_REQUEST)


class NfsTests(SynchronousTestCase):
    def test_grant_and_mount_of_a_diskless_boot(self) -> None:
        from pxetwist.events import EventProtocol

        def nfs(time: float, stage: EventStage, **details: object) -> BootEvent:
            return BootEvent(
                time=time,
                protocol=EventProtocol.NFS,
                stage=stage,
                outcome=Outcome.OK,
                mac=MAC,
                client=CLIENT,
                details=details,
            )

        h = Harness()
        h.feed(*full_boot()[:2], nfs(1001.5, EventStage.NFS_GRANT, path="node1", access="rw"))
        h.feed(*full_boot()[2:], nfs(1031.0, EventStage.NFS_MOUNT, paths=["node1"]))
        (session,) = h.registry.sessions(MAC)
        self.assertEqual(session.state, SessionState.BOOTED)
        self.assertEqual(
            [item["stage"] for item in session.stage_timeline()][-2:], ["os-up", "nfs-mount"]
        )
        stages = [e.stage for e in session.events]
        self.assertIn(BootStage.NFS_EXPORT, stages)
        self.assertEqual(session.events[-1].details["paths"], ["node1"])


class AttemptTests(SynchronousTestCase):
    def test_retransmitted_discover_is_the_same_attempt(self) -> None:
        h = Harness()
        h.feed(dhcp(1.0), dhcp(5.0), dhcp(13.0))
        self.assertEqual(len(h.registry.sessions(MAC)), 1)

    def test_ipxe_discover_after_the_nbp_is_the_same_attempt(self) -> None:
        h = Harness()
        h.feed(*full_boot()[:4])
        (session,) = h.registry.sessions(MAC)
        self.assertEqual(session.stage, BootStage.IPXE_DHCP)

    def test_rom_discover_after_the_nbp_starts_over(self) -> None:
        h = Harness()
        h.feed(*full_boot()[:3])
        h.feed(dhcp(1010.0))
        newer, older = h.registry.sessions(MAC)
        self.assertEqual(older.state, SessionState.FAILED)
        self.assertEqual(older.stage, BootStage.NBP)
        assert older.hint is not None
        self.assertIn("started over", older.hint)
        self.assertIn("Secure Boot", older.hint)
        self.assertEqual(newer.state, SessionState.IN_PROGRESS)
        self.assertEqual(newer.started, 1010.0)

    def test_a_booted_machine_that_boots_again_gets_a_new_session(self) -> None:
        h = Harness()
        h.feed(*full_boot(1000.0))
        h.feed(*full_boot(2000.0))
        newer, older = h.registry.sessions(MAC)
        self.assertEqual((older.state, newer.state), (SessionState.BOOTED, SessionState.BOOTED))

    def test_plain_dhcp_without_a_session_is_not_a_session(self) -> None:
        h = Harness()
        h.feed(dhcp(1.0, firmware="plain", decision=None))
        self.assertEqual(h.registry.sessions(), [])

    def test_files_fetched_by_a_booted_os_are_left_out(self) -> None:
        h = Harness()
        h.feed(*full_boot())
        h.feed(http(1100.0, "/debian/pool/main/l/linux/linux-image.deb"))
        h.feed(http(1101.0, "/debian/linux"))
        (session,) = h.registry.sessions(MAC)
        self.assertEqual(len(session.events), 9)

    def test_os_call_back_ends_the_session(self) -> None:
        h = Harness()
        h.feed(*full_boot()[:8], os_up(1020.0))
        (session,) = h.registry.sessions(MAC)
        self.assertEqual((session.state, session.stage), (SessionState.BOOTED, BootStage.OS_UP))
        self.assertEqual(session.events[-1].protocol.value, "os")

    def test_machines_are_kept_apart(self) -> None:
        h = Harness()
        h.feed(dhcp(1.0), dhcp(1.0, mac=OTHER))
        self.assertEqual(len(h.registry.sessions()), 2)
        self.assertEqual(len(h.registry.sessions(OTHER)), 1)


class StuckTests(SynchronousTestCase):
    def judged(self, *events: BootEvent, stuck_after: int = 60) -> tuple[SessionState, str]:
        h = Harness(stuck_after=stuck_after)
        h.feed(*events)
        self.assertEqual(h.registry.sweep(events[-1].time + stuck_after - 1), 0)
        self.assertEqual(h.registry.sweep(events[-1].time + stuck_after), 1)
        (session,) = h.registry.sessions(MAC)[:1]
        assert session.hint is not None
        return session.state, session.hint

    def test_offer_and_no_request(self) -> None:
        state, hint = self.judged(dhcp(1.0))
        self.assertEqual(state, SessionState.STUCK)
        self.assertIn("another DHCP server", hint)

    def test_proxy_offer_then_another_servers_address_and_nothing_next(self) -> None:
        _state, hint = self.judged(
            dhcp(1.0, reply="proxy"),
            dhcp(2.0, EventStage.REQUEST, outcome=Outcome.IGNORED, reply="none", decision=None),
        )
        self.assertIn("another DHCP server owns the addresses", hint)

    def test_nbp_and_nothing_next(self) -> None:
        state, hint = self.judged(*full_boot()[:3])
        self.assertEqual(state, SessionState.STUCK)
        self.assertIn("undionly.kpxe was downloaded but nothing was asked for next", hint)
        self.assertIn("Secure Boot", hint)

    def test_script_and_no_kernel(self) -> None:
        _state, hint = self.judged(*full_boot()[:6])
        self.assertIn("script was fetched but not the kernel", hint)

    def test_kernel_and_initrd_and_no_os(self) -> None:
        state, hint = self.judged(*full_boot()[:8])
        self.assertEqual(state, SessionState.STUCK)
        self.assertIn("kernel panic", hint)
        self.assertIn("done_url", hint)

    def test_many_retransmits(self) -> None:
        events = [*full_boot()[:2], tftp(3.0 + 1000, "undionly.kpxe", retransmits=40, blksize=1468)]
        _state, hint = self.judged(*events)
        self.assertIn("40 retransmits at blksize 1468", hint)
        self.assertIn("path MTU", hint)

    def test_missing_kernel_is_failed_with_the_404(self) -> None:
        events = [
            *full_boot()[:6],
            http(1008.0, "/debian/linux", status=404, outcome=Outcome.REFUSED),
        ]
        state, hint = self.judged(*events)
        self.assertEqual(state, SessionState.FAILED)
        self.assertIn("kernel debian/linux", hint.replace("/debian", "debian"))
        self.assertIn("404", hint)

    def test_ignored_discover_is_failed(self) -> None:
        state, hint = self.judged(
            dhcp(1.0, outcome=Outcome.IGNORED, reply=None, decision=None, reason="action ignore")
        )
        self.assertEqual(state, SessionState.FAILED)
        self.assertIn("did not answer it (action ignore)", hint)

    def test_a_stuck_session_that_moves_again_is_in_progress(self) -> None:
        h = Harness(stuck_after=60)
        h.feed(*full_boot()[:3])
        h.registry.sweep(2000.0)
        h.feed(dhcp(2001.0, firmware="ipxe"))
        # a PXE ROM DISCOVER after silence is a new attempt, but iPXE's continues only an
        # attempt in progress: this one was stuck, so it starts a new session
        newer, older = h.registry.sessions(MAC)
        self.assertEqual(older.state, SessionState.STUCK)
        h.feed(http(2002.0, "/boot.ipxe"))
        h.registry.sweep(2003.0)
        self.assertEqual(newer.state, SessionState.IN_PROGRESS)
        self.assertEqual(newer.stage, BootStage.SCRIPT)

    def test_a_late_file_event_revives_a_stuck_session(self) -> None:
        h = Harness(stuck_after=60)
        h.feed(*full_boot()[:6])
        h.registry.sweep(1100.0)
        (session,) = h.registry.sessions(MAC)
        self.assertEqual(session.state, SessionState.STUCK)
        h.feed(http(1101.0, "/debian/linux"))
        self.assertEqual((session.state, session.hint), (SessionState.IN_PROGRESS, None))


class CostTests(SynchronousTestCase):
    def test_plain_dhcp_costs_no_details(self) -> None:
        """A busy DHCP server's plain clients: sessions read only what the event had at hand."""
        from pxetwist.events import BootEvent, EventProtocol, LazyDetails

        def expensive() -> dict[str, object]:
            raise AssertionError("the details were worked out")

        h = Harness()
        for stage in (EventStage.DISCOVER, EventStage.REQUEST):
            h.feed(
                BootEvent(
                    time=1.0,
                    protocol=EventProtocol.DHCP,
                    stage=stage,
                    outcome=Outcome.OK,
                    mac=MAC,
                    client=CLIENT,
                    details=LazyDetails(expensive, known={"firmware": "plain", "pxe": False}),
                )
            )
        self.assertEqual(h.registry.sessions(), [])


class BoundsTests(SynchronousTestCase):
    def test_events_per_session_are_bounded(self) -> None:
        h = Harness(max_events=20)
        h.feed(*full_boot()[:3])
        h.feed(*(tftp(1003.0 + i, f"grub/x86_64-efi/mod{i}.mod") for i in range(100)))
        (session,) = h.registry.sessions(MAC)
        self.assertEqual(len(session.events), 20)
        self.assertEqual(session.dropped_events, 83)
        self.assertEqual(session.events[0].stage, BootStage.DHCP_OFFER)  # the head is kept
        self.assertEqual(session.events[-1].details["file"], "grub/x86_64-efi/mod99.mod")
        self.assertEqual(len(session.stage_timeline()), 3)

    def test_machines_are_bounded(self) -> None:
        h = Harness(max_machines=50)
        for index in range(200):
            h.feed(dhcp(1.0 + index, mac=MacAddress(index.to_bytes(6, "big"))))
        self.assertEqual(h.registry.machines, 50)
        # evicted ones still go to the store, up to twice max_machines changes between writes
        self.assertEqual(len(h.registry.take_dirty()), 100)
        self.assertEqual(h.registry.unsaved, 100)
        self.assertEqual(h.registry.sweep(10_000.0), 50)  # evicted ones are not judged

    def test_dirty_sessions_are_handed_over_once(self) -> None:
        h = Harness()
        h.feed(*full_boot())
        self.assertEqual(len(h.registry.take_dirty()), 1)
        self.assertEqual(h.registry.take_dirty(), [])


class AttributionTests(SynchronousTestCase):
    def test_unknown_address_waits_for_the_neighbour_table(self) -> None:
        h = Harness()
        h.feed(dhcp(1.0), dhcp(2.0, EventStage.REQUEST, reply="ACK"))  # no client address
        h.feed(tftp(3.0, "undionly.kpxe"))
        self.assertEqual(h.attribution.pending, 1)
        h.neighbours[CLIENT] = MAC
        self.assertEqual(h.attribution.resolve(), 1)
        (session,) = h.registry.sessions(MAC)
        self.assertEqual(session.stage, BootStage.NBP)

    def test_address_dhcp_recorded_in_the_sightings(self) -> None:
        from pxetwist.testing import make_request

        h = Harness()
        h.sightings.record(make_request(str(MAC)), CLIENT)
        h.feed(dhcp(1.0), tftp(3.0, "undionly.kpxe"))
        self.assertEqual(h.registry.sessions(MAC)[0].stage, BootStage.NBP)

    def test_never_placed_events_are_counted_and_dropped(self) -> None:
        h = Harness()
        h.feed(tftp(3.0, "undionly.kpxe"))
        self.assertEqual(h.attribution.resolve(), 0)
        self.assertEqual((h.attribution.pending, h.attribution.unplaced), (0, 1))
