#!/bin/sh
# wsm's Redis: every service has its own ACL user, with only what it needs, and Redis refuses
# anyone else (the `default` user is off). The passwords come from the environment (compose
# passes them from .env), so the ACL file is written at start into a tmpfs, never into the
# image or the data volume; then the image's entrypoint starts redis-server with it (dropping
# root). `start.sh --acl-only` writes the file and exits (tests/ops/test_edge_redis_acl.py).
#
#   healthcheck  PING only, no password (the container's health check)
#   gateway      the queue shards' keys only (<prefix>:{q*), data and script commands
#   worker       every key under <prefix>:, data and script commands
#   api          every key under <prefix>:, data and script commands, its pub/sub channels
#   admin        everything (an operator's redis-cli: docs/operations.md)
# Data commands are the @read, @write, @keyspace, @scripting and @transaction categories
# without @dangerous (no FLUSHALL, KEYS, CONFIG, DEBUG, MONITOR, ...), plus INFO (the version
# check at start) and TIME (the queue scripts read the clock).
set -eu

acl=${WSM_REDIS_ACL_FILE:-/run/wsm-redis/users.acl}
prefix=${WSM_KEY_PREFIX:-wsm}

for name in REDIS_GATEWAY_PASSWORD REDIS_WORKER_PASSWORD REDIS_API_PASSWORD REDIS_ADMIN_PASSWORD; do
    eval "value=\${$name:-}"
    # Letters and digits only: a space would let a "password" add ACL rules.
    case $value in
        *[!A-Za-z0-9]*) echo "$0: $name must be letters and digits only (openssl rand -hex 32)" >&2; exit 2 ;;
    esac
    if [ ${#value} -lt 32 ]; then
        echo "$0: $name must be set, at least 32 characters (openssl rand -hex 32)" >&2
        exit 2
    fi
done
case $prefix in
    *[!A-Za-z0-9_.-]*) echo "$0: WSM_KEY_PREFIX may hold A-Z a-z 0-9 _ . - only" >&2; exit 2 ;;
esac

data="-@all +@connection +@read +@write +@keyspace +@scripting +@transaction -@dangerous +info +time"
umask 077
mkdir -p "$(dirname "$acl")"
cat > "$acl" <<ACL
user default off
user healthcheck on nopass resetkeys resetchannels -@all +ping
user gateway on >$REDIS_GATEWAY_PASSWORD resetkeys ~$prefix:{q* resetchannels $data
user worker on >$REDIS_WORKER_PASSWORD resetkeys ~$prefix:* resetchannels $data
user api on >$REDIS_API_PASSWORD resetkeys ~$prefix:* resetchannels &$prefix:* $data +@pubsub
user admin on >$REDIS_ADMIN_PASSWORD ~* &* +@all
ACL

if [ "${1:-}" = "--acl-only" ]; then
    exit 0
fi
if [ "$(id -u)" = 0 ]; then
    chown -R redis:redis "$(dirname "$acl")"
fi
exec docker-entrypoint.sh "$@" --aclfile "$acl"
