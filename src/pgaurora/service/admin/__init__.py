"""The admin HTTP API: its route table (routes), credentials (auth), server and blocking client."""
