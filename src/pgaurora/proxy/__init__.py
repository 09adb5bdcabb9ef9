"""The proxy: writer and reader endpoints that relay the PostgreSQL wire protocol to the right node."""
