#!/usr/bin/env bash
# A throwaway PostgreSQL for the test suite: loopback only, trust auth, data and socket in a temp dir.
#
#   eval "$(bash scripts/pg-test-server.sh start)"   # exports CLAUDEMESH_TEST_PG_DSN and PG_TEST_DIR
#   bash scripts/pg-test-server.sh stop "$PG_TEST_DIR"
#   bash scripts/pg-test-server.sh pause|resume DIR   # stop/start the server, keeping data and port
#                                                     # (the PostgreSQL-restart fault test)
#
# `start` exits 3 (printing nothing on stdout) when no PostgreSQL server binaries are found, so the
# caller can skip the PostgreSQL half of the suite. The binaries are looked up on PATH, then in
# /usr/lib/postgresql/<version>/bin (Debian's layout). initdb refuses to run as root: as root the
# server runs as the `postgres` user (runuser); as anyone else, as that user.
set -euo pipefail

find_bin() {
  local name=$1 dir
  if command -v "$name" >/dev/null 2>&1; then command -v "$name"; return 0; fi
  for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -rV); do
    if [ -x "$dir/$name" ]; then echo "$dir/$name"; return 0; fi
  done
  return 1
}

as_owner() {  # run a command as the server's owner
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

start() {
  local initdb pg_ctl dir port
  initdb=$(find_bin initdb) && pg_ctl=$(find_bin pg_ctl) && find_bin postgres >/dev/null || {
    echo "pg-test-server: no PostgreSQL server binaries (initdb, pg_ctl, postgres) found" >&2
    return 3
  }
  if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
    echo "pg-test-server: running as root but there is no 'postgres' user to run the server as" >&2
    return 3
  fi
  # as root the server user must reach the directory: /tmp, whatever TMPDIR says
  local base=${TMPDIR:-/tmp}
  [ "$(id -u)" = 0 ] && base=/tmp
  dir=$(mktemp -d "$base/claudemesh-pg.XXXXXX")
  chmod 700 "$dir"
  [ "$(id -u)" = 0 ] && chown postgres: "$dir"
  if ! as_owner "$initdb" -D "$dir/data" -U postgres --auth=trust --encoding=UTF8 --no-locale \
      >"$dir/initdb.log" 2>&1; then
    cat "$dir/initdb.log" >&2
    echo "pg-test-server: initdb failed" >&2
    rm -rf "$dir"
    return 1
  fi
  port=$(free_port)
  # loopback TCP only; the unix socket lives in the temp dir; fsync off: a test server loses nothing
  # that matters when the machine dies, and the suite runs much faster on a slow disk
  # (PG_TEST_DURABLE=1 keeps the production defaults instead: the benchmark uses it)
  local durability="-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
  [ "${PG_TEST_DURABLE:-0}" = 1 ] && durability=""
  echo "-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories=$dir $durability" \
       "-c max_connections=200" > "$dir/options"
  [ "$(id -u)" = 0 ] && chown postgres: "$dir/options"
  if ! server_start "$dir" "$pg_ctl"; then
    cat "$dir/server.log" >&2 || true
    echo "pg-test-server: the server did not start" >&2
    rm -rf "$dir"
    return 1
  fi
  if command -v psql >/dev/null 2>&1; then
    as_owner psql -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -c "CREATE DATABASE claudemesh_test" >&2
    db=claudemesh_test
  else
    db=postgres  # no client to create one with: the default database is empty too
  fi
  echo "export PG_TEST_DIR=$dir"
  echo "export CLAUDEMESH_TEST_PG_DSN=postgresql://postgres@127.0.0.1:$port/$db"
  echo "pg-test-server: PostgreSQL $("$pg_ctl" --version | awk '{print $3}') on 127.0.0.1:$port ($dir)" >&2
}

server_start() {
  as_owner "$2" -D "$1/data" -l "$1/server.log" -w -t 60 -o "$(cat "$1/options")" start >/dev/null
}

pause() {
  local dir=${1:?usage: pg-test-server.sh pause DIR}
  as_owner "$(find_bin pg_ctl)" -D "$dir/data" -m fast -w -t 30 stop >/dev/null
}

resume() {
  local dir=${1:?usage: pg-test-server.sh resume DIR}
  server_start "$dir" "$(find_bin pg_ctl)"
}

stop() {
  local dir=${1:?usage: pg-test-server.sh stop DIR} pg_ctl
  case "$dir" in */claudemesh-pg.*) ;; *) echo "pg-test-server: refusing to remove $dir" >&2; return 1 ;; esac
  pg_ctl=$(find_bin pg_ctl) || true
  if [ -n "$pg_ctl" ] && [ -f "$dir/data/postmaster.pid" ]; then
    as_owner "$pg_ctl" -D "$dir/data" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
  fi
  rm -rf "$dir"
}

case "${1:-}" in
  start) start ;;
  stop) stop "${2:-}" ;;
  pause) pause "${2:-}" ;;
  resume) resume "${2:-}" ;;
  *) echo "usage: $0 start | stop DIR | pause DIR | resume DIR" >&2; exit 2 ;;
esac
