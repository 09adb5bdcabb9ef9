"""What several pgaurora instances agree on through a DCS: an instance's standing, and etcd being out of reach."""

from __future__ import annotations

from enum import Enum


class InstanceRole(str, Enum):
    """A pgaurora instance's standing among its peers (a node's role is topology.Role)."""

    LEADER = "leader"  # holds the leader key under a live lease: decides and acts
    FOLLOWER = "follower"  # another instance leads: probe, route, never act
    CANDIDATE = "candidate"  # nobody leads: try to take the key
    CUT_OFF = "cut_off"  # etcd has not answered for too long: never act, whatever was true before


class DcsUnavailable(Exception):
    """No etcd endpoint answered in time."""
