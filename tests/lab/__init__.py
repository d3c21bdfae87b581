"""Tests of the network-namespace lab (:mod:`pxetwist.lab`)."""
