"""The running service: the Service that wires proxy, monitor and DNS together, its admin HTTP API and metrics."""
