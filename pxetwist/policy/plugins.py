"""Find policy plugins by name: installed dropins and site-local plugin directories.

Both are ordinary Twisted plugins found with :func:`twisted.plugin.getPlugins`: each plugin
directory is added to the ``twisted.plugins`` package path, exactly where installed packages put
their dropins.  Its files are imported by us first, so a broken one stops startup with its own
error instead of being logged and skipped the way Twisted treats broken dropins.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from twisted.internet.interfaces import IReactorTime
from twisted.plugin import getPlugins
from zope.interface.exceptions import Invalid
from zope.interface.verify import verifyObject

import twisted.plugins
from pxetwist.config.model import Config
from pxetwist.policy.chain import PolicyChain
from pxetwist.policy.interfaces import IBootPolicy, IBootPolicyFactory

_STAMP = "_pxetwist_mtime_ns"  # on each plugin module: the file's mtime when it was imported


class PluginError(Exception):
    """A policy plugin that cannot be found, imported, verified or built."""


def _mount_directory(directory: Path) -> None:
    """Put the directory on ``twisted.plugins.__path__`` and import its ``.py`` files."""
    if str(directory) not in twisted.plugins.__path__:
        twisted.plugins.__path__.append(str(directory))
    for file in sorted(directory.glob("*.py")):
        if file.name.startswith("_"):
            continue
        module_name = f"twisted.plugins.{file.stem}"
        loaded = sys.modules.get(module_name)
        stamp = file.stat().st_mtime_ns
        if (
            loaded is not None
            and getattr(loaded, "__file__", None) == str(file)
            and getattr(loaded, _STAMP, stamp) == stamp
        ):
            continue  # already imported, and not changed since (a reload imports it again)
        spec = importlib.util.spec_from_file_location(module_name, file)
        if spec is None or spec.loader is None:
            raise PluginError(f"plugin file {file} cannot be imported")
        module = importlib.util.module_from_spec(spec)
        setattr(module, _STAMP, stamp)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as error:
            if loaded is not None:  # a reload that fails keeps the version that worked
                sys.modules[module_name] = loaded
            else:
                del sys.modules[module_name]
            raise PluginError(
                f"plugin file {file} failed to import: {type(error).__name__}: {error}"
            ) from error
        setattr(twisted.plugins, file.stem, module)


def _origin(factory: object) -> str:
    module = sys.modules.get(getattr(factory, "__module__", "") or type(factory).__module__)
    return str(getattr(module, "__file__", None) or "twisted.plugins")


def find_factories(plugin_dirs: Iterable[Path]) -> dict[str, tuple[IBootPolicyFactory, str]]:
    """Every policy factory by name, with the file it came from."""
    for directory in plugin_dirs:
        if directory.is_dir():
            _mount_directory(directory.resolve())
    found: dict[str, tuple[IBootPolicyFactory, str]] = {}
    for factory in getPlugins(IBootPolicyFactory):
        name = getattr(factory, "name", None)
        if not isinstance(name, str):
            continue
        origin = _origin(factory)
        if name in found and found[name][1] != origin:
            raise PluginError(
                f"two policy plugins are named {name!r}: {found[name][1]} and {origin}"
            )
        found[name] = (factory, origin)
    return found


def _where_looked(plugin_dirs: Sequence[Path]) -> str:
    return ", ".join(["twisted.plugins", *(str(d) for d in plugin_dirs)])


def build_policies(config: Config) -> list[tuple[str, IBootPolicy]]:
    """Build the policies ``policy.chain`` names, verified against their interfaces."""
    dirs = config.policy.plugin_dirs
    factories = find_factories(dirs)
    policies: list[tuple[str, IBootPolicy]] = []
    for name in config.policy.chain:
        if name not in factories:
            known = ", ".join(sorted(factories)) or "none"
            raise PluginError(
                f"policy {name!r} not found (looked in {_where_looked(dirs)}; found: {known})"
            )
        factory, where = factories[name]
        try:
            verifyObject(IBootPolicyFactory, factory)
        except Invalid as error:
            raise PluginError(
                f"policy {name!r} from {where} is not a valid IBootPolicyFactory: {error}"
            ) from error
        try:
            policy = factory.build(config)
        except Exception as error:
            raise PluginError(
                f"policy {name!r} from {where} could not be built: {type(error).__name__}: {error}"
            ) from error
        try:
            verifyObject(IBootPolicy, policy)
        except Invalid as error:
            raise PluginError(
                f"policy {name!r} from {where} built an object that is not an IBootPolicy: {error}"
            ) from error
        policies.append((name, policy))
    return policies


def build_chain(config: Config, clock: IReactorTime) -> PolicyChain:
    return PolicyChain(build_policies(config), clock, config.policy.timeout)
