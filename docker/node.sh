#!/bin/sh
# One PostgreSQL node of compose.yaml: the primary (initdb) or a replica (pg_basebackup from the primary).
# It runs in pgaurora/postgres:local, which has a shell and PostgreSQL's binaries and nothing else (so only
# shell builtins here), or in the public postgres:15 image.
set -eu
PATH=/usr/lib/postgresql/15/bin:$PATH
data=/tmp/pgdata
umask 077
# The password reaches libpq through a pgpass file, never a conninfo that PostgreSQL would log.
printf '*:*:*:postgres:%s\n' "$PGAURORA_PASSWORD" > /tmp/pgpass
export PGPASSFILE=/tmp/pgpass

if [ "$NODE_ROLE" = primary ]; then
    printf '%s\n' "$PGAURORA_PASSWORD" > /tmp/pwfile
    initdb -D "$data" -U postgres --pwfile=/tmp/pwfile --auth-local=trust --auth-host=scram-sha-256 \
        --encoding=UTF8 --locale=C > /dev/null
    printf '%s\n' \
        'host replication postgres 127.0.0.0/8 scram-sha-256' \
        'host all all 127.0.0.0/8 scram-sha-256' >> "$data/pg_hba.conf"
    # As `pgaurora up` sets them: an idle walsender pings every second, so replicas vouch for a live primary.
    printf '%s\n' \
        "wal_sender_timeout = '2s'" \
        "wal_receiver_timeout = '5s'" \
        "wal_receiver_status_interval = '10s'" \
        "wal_keep_size = '256MB'" \
        "hot_standby_feedback = on" \
        "wal_log_hints = on" \
        "unix_socket_directories = '/tmp'" >> "$data/postgresql.conf"
else
    pg_basebackup -h "$PRIMARY_HOST" -p 5432 -U postgres -D "$data" -R -X stream -c fast
    # Named after the node, as pgaurora's synchronous standbys expect; the password stays in the pgpass file.
    printf "primary_conninfo = 'host=%s port=5432 user=postgres passfile=/tmp/pgpass application_name=%s'\n" \
        "$PRIMARY_HOST" "$NODE_NAME" >> "$data/postgresql.auto.conf"
fi
exec postgres -D "$data" -c listen_addresses="$NODE_HOST" -c port=5432
