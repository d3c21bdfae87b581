"""Twisted dropin: pxetwist's built-in boot policies, found by name like any third-party one."""

from pxetwist.policy.builtin import ArchPolicyFactory, StaticPolicyFactory

__all__ = ["ArchPolicyFactory", "StaticPolicyFactory"]
