#!/bin/sh
# pgaurora of compose.yaml: writes its configuration from the environment, then fronts the three nodes.
set -eu
umask 077
python3 - <<'PY'
import json
import os

net, password = os.environ["PGAURORA_NET"], os.environ["PGAURORA_PASSWORD"]
nodes = "".join(f'[[nodes]]\nname = "n{i}"\nhost = "{net}.{i}"\nport = 5432\n\n' for i in (1, 2, 3))
listen = f'host = "{net}.10"'
config = f"""cluster = "compose"
state_dir = "/tmp/pgaurora"

{nodes}[writer]
{listen}
port = 6432

[reader]
{listen}
port = 6433

[dns]
{listen}
port = 8053

[admin]
{listen}
port = 6434

[monitor]
user = "postgres"
password = {json.dumps(password)}

[failover]
replication_user = "postgres"
replication_passfile = "/tmp/pgpass"
"""
with open("/tmp/pgaurora.toml", "w") as f:
    f.write(config)
PY
exec python3 -m pgaurora proxy -c /tmp/pgaurora.toml
