#!/usr/bin/env bash
# A throwaway PostgreSQL server on loopback for the tests of the service's store:
# installs Debian's server package if it is missing, makes a cluster in DIR (initdb,
# once), starts it (pg_ctl) as an unprivileged user, makes the database rlm_test and
# prints its URL on stdout (everything else goes to stderr). Safe to run again: a
# cluster already in DIR is reused, a running one left running.
#
#   url="$(scripts/setup-postgres.sh [start] [DIR])"   # DIR: $RLM_PG_DIR, else
#                                                      # ${TMPDIR:-/tmp}/rlm-test-postgres
#   scripts/setup-postgres.sh stop [DIR]
#
# Environment:
#   RLM_PG_DIR    the cluster's folder (data/, run/ for the socket, log, port)
#   RLM_PG_PORT   the TCP port of a new cluster (default: a free one, kept in DIR/port)
#   RLM_PG_USER   the system user the server runs as when this runs as root
#                 (default: postgres if it exists, else rlm-postgres, created)
#
# The cluster trusts every connection from 127.0.0.1 and has fsync off: it is for
# tests only, never for data anyone wants to keep.
set -euo pipefail

say() { printf '[setup-postgres] %s\n' "$*" >&2; }
die() { printf '[setup-postgres] ERROR: %s\n' "$*" >&2; exit 1; }

action=start
case "${1:-}" in
    start | stop) action="$1"; shift ;;
    -h | --help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
esac
[ "$#" -le 1 ] || die "usage: $0 [start|stop] [DIR]"
dir="${1:-${RLM_PG_DIR:-${TMPDIR:-/tmp}/rlm-test-postgres}}"
mkdir -p "$dir" || die "cannot make $dir"
dir="$(cd "$dir" && pwd)"
data="$dir/data"
database=rlm_test
superuser=rlm

# --- the server's binaries (Debian keeps them out of PATH) ------------------------
find_bindir() {
    local found
    found="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
    if [ -n "$found" ] && [ -x "$found/initdb" ]; then
        echo "$found"
    elif command -v initdb >/dev/null 2>&1; then
        dirname "$(command -v initdb)"
    fi
}
bindir="$(find_bindir)"
if [ -z "$bindir" ]; then
    [ "$action" = start ] || die "no PostgreSQL server is installed, so there is nothing to stop"
    [ "$(id -u)" -eq 0 ] || die "PostgreSQL is not installed; run this as root to install it (apt-get install postgresql)"
    say "installing postgresql from Debian's packages"
    apt-get update >&2 || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql >&2 ||
        die "apt-get install postgresql failed"
    bindir="$(find_bindir)"
    [ -n "$bindir" ] || die "postgresql installed, but no initdb under /usr/lib/postgresql/*/bin"
fi

# --- who runs it: PostgreSQL refuses to run as root --------------------------------
if [ "$(id -u)" -eq 0 ]; then
    user="${RLM_PG_USER:-}"
    if [ -z "$user" ]; then
        if id postgres >/dev/null 2>&1; then user=postgres; else user=rlm-postgres; fi
    fi
    if ! id "$user" >/dev/null 2>&1; then
        say "creating the system user $user to run the server"
        useradd --system --no-create-home --shell /usr/sbin/nologin "$user" ||
            die "useradd $user failed"
    fi
    as_user() { runuser -u "$user" -- "$@"; }
    chown "$user" "$dir" || die "cannot give $dir to $user"
else
    user="$(id -un)"
    as_user() { "$@"; }
fi
chmod 700 "$dir"
as_user test -w "$dir" ||
    die "$user cannot write to $dir: is a folder above it closed to $user? (pick another DIR)"

pg_ctl() { as_user "$bindir/pg_ctl" -D "$data" "$@"; }
running() { pg_ctl status >/dev/null 2>&1; }

if [ "$action" = stop ]; then
    if [ -f "$data/PG_VERSION" ] && running; then
        pg_ctl stop -m fast -w >&2 || die "pg_ctl stop failed (see $dir/log)"
        say "stopped the cluster in $dir"
    else
        say "no cluster running in $dir"
    fi
    exit 0
fi

# --- the cluster (once) ----------------------------------------------------------
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
if [ ! -f "$data/PG_VERSION" ]; then
    port="${RLM_PG_PORT:-$(free_port)}"
    [[ "$port" =~ ^[0-9]+$ ]] || die "RLM_PG_PORT must be a port number, not '$port'"
    say "initdb in $data (as $user, port $port)"
    rm -rf "$data"
    as_user mkdir -p "$dir/run"
    # --no-sync and fsync=off: a test cluster's speed matters, its durability does not.
    if ! as_user "$bindir/initdb" -D "$data" --username="$superuser" --auth=trust \
        --encoding=UTF8 --locale=C --no-sync >"$dir/initdb.log" 2>&1; then
        cat "$dir/initdb.log" >&2
        die "initdb failed (output above)"
    fi
    cat >>"$data/postgresql.conf" <<EOF

# scripts/setup-postgres.sh: a throwaway test cluster, loopback only
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir/run'
max_connections = 300
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
    echo "$port" >"$dir/port"
fi
port="$(cat "$dir/port")"

# --- the server ------------------------------------------------------------------
if running; then
    say "the cluster in $dir is already running on port $port"
else
    say "starting the cluster in $dir on 127.0.0.1:$port"
    if ! pg_ctl start -w -t 60 -l "$dir/log" >&2; then
        tail -n 20 "$dir/log" >&2 2>/dev/null || true
        die "pg_ctl start failed (the end of $dir/log is above; is port $port taken?)"
    fi
fi

psql() { "$bindir/psql" -X -q -h 127.0.0.1 -p "$port" -U "$superuser" "$@"; }
exists="$(psql -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$database'")" ||
    die "the server on port $port does not answer (see $dir/log)"
if [ "$exists" != 1 ]; then
    psql -d postgres -c "CREATE DATABASE $database" >&2 || die "CREATE DATABASE $database failed"
fi
echo "postgresql://$superuser@127.0.0.1:$port/$database"
