"""Shared basics every layer stands on: config, topology, errors, the event log, TLS contexts, polling."""
