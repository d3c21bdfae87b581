"""The tokens file and the ``api`` config section."""

from __future__ import annotations

from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from pxetwist.api.service import check_api_config
from pxetwist.api.tokens import Access, TokenSet
from pxetwist.config import ConfigError, parse_config
from tests.util import temp_dir

GOOD = """\
ops: {token: aaaaaaaaaaaaaaaaaaaa, access: read}
admin: {token: bbbbbbbbbbbbbbbbbbbb, access: write}
"""


class TokenFileTests(SynchronousTestCase):
    def test_lookup_by_header(self) -> None:
        tokens = TokenSet.parse(GOOD, "t.yaml")
        admin = tokens.from_header(b"Bearer bbbbbbbbbbbbbbbbbbbb")
        self.assertEqual((admin.name, admin.access) if admin else None, ("admin", Access.WRITE))
        self.assertEqual(tokens.from_header(b"bearer   aaaaaaaaaaaaaaaaaaaa ").name, "ops")  # type: ignore[union-attr]
        for header in (
            None,
            b"",
            b"Bearer",
            b"Bearer ",
            b"Basic aaaaaaaaaaaaaaaaaaaa",
            b"Bearer aaaaaaaaaaaaaaaaaaa",
            b"Bearer aaaaaaaaaaaaaaaaaaaaa",
        ):
            self.assertIsNone(tokens.from_header(header), header)
        self.assertTrue(Access.WRITE.allows(Access.READ))
        self.assertFalse(Access.READ.allows(Access.WRITE))
        self.assertNotIn("aaaa", repr(tokens))

    def test_bad_files_name_the_key(self) -> None:
        for text, where in (
            ("ops: {token: short, access: read}", "ops.token"),
            ("ops: {token: aaaaaaaaaaaaaaaaaaaa, access: admin}", "ops.access"),
            ("ops: {token: aaaaaaaaaaaaaaaaaaaa, acess: read}", "ops"),
            ("ops: {token: aaaaaaaaaaaaaaaaaaaa}\nb: {token: aaaaaaaaaaaaaaaaaaaa}", "b.token"),
            ("- a\n- b", "mapping"),
            ("ops: [", "YAML"),
        ):
            with self.assertRaises(ConfigError) as caught:
                TokenSet.parse(text, "t.yaml")
            self.assertIn(where, str(caught.exception))

    def test_api_section(self) -> None:
        directory = temp_dir(self)
        (directory / "tokens.yaml").write_text(GOOD)
        config = parse_config(
            "api: {listen: '0.0.0.0:9000', tokens_file: tokens.yaml, metrics_token: ops}",
            base_dir=directory,
        )
        self.assertEqual(
            (config.api.enabled, config.api.host, config.api.port), (True, "0.0.0.0", 9000)
        )
        self.assertEqual(config.api.tokens_file, directory / "tokens.yaml")
        self.assertEqual(len(check_api_config(config).tokens), 2)
        self.assertFalse(parse_config("dhcp: {mode: proxy}").api.enabled)
        self.assertEqual(parse_config("api: {}").api.port, 8090)
        for text, where in (
            ("api: {listen: 'localhost'}", "api.listen"),
            ("api: {listen: 'x:99999'}", "api.listen"),
            ("api: {port: 1}", "api.port"),
        ):
            with self.assertRaises(ConfigError) as caught:
                parse_config(text)
            self.assertIn(where, str(caught.exception))
        missing = parse_config(
            "api: {metrics_token: nobody, tokens_file: tokens.yaml}", base_dir=directory
        )
        with self.assertRaises(ConfigError) as caught:
            check_api_config(missing)
        self.assertIn("api.metrics_token", str(caught.exception))
        gone = parse_config("api: {tokens_file: nothere.yaml}", base_dir=Path(directory))
        self.assertRaises(ConfigError, check_api_config, gone)
