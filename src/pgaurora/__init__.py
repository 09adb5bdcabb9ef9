"""pgaurora: Aurora-style writer/reader endpoints, failover and DNS for a plain PostgreSQL cluster."""

__version__ = "0.1.0"
