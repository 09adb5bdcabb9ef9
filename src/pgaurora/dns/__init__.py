"""Authoritative DNS for writer, reader and instance names, answered from the current Topology."""
