# Sourced by the scripts under tests/: a local 3-node `flagstaff cluster up` on free loopback
# ports in a temporary directory, stopped (by its PID) when the script exits.
#
# The caller, in the repo root, sets `name` (for messages) and sources this file, which sets
# `target_dir` (absolute); then it calls `require_tools`, `flagstaff_binary` (sets `bin`:
# $FLAGSTAFF_BIN, or a fresh build) and `python_venv DIR REQUIREMENTS` if it needs one (sets
# `venv`), then `start_local_cluster [ARGS for cluster up...]` (`--tls` makes the URLs https and
# sets `ca`, the CA file, and `curl_ca`, the curl options that trust it). Afterwards: `work`
# (temporary dir), `data`, `urls` (the three client URLs), `token` (admin token), `leader_url`,
# `followers`, `node_pids` (by node id, from 1). `start_node PID` starts a stopped node again as
# it was started. KEEP_DATA=1 keeps the directory.

t0=$SECONDS
phase() { echo "== [$((SECONDS - t0))s] $*"; }

target_dir="${CARGO_TARGET_DIR:-target}"
case "$target_dir" in /*) ;; *) target_dir="$PWD/$target_dir" ;; esac

# require_tools TOOL...: fail early, by name, when a command is missing.
require_tools() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "$name: $tool is required" >&2; exit 1; }
  done
}

work="$(mktemp -d "${TMPDIR:-/tmp}/flagstaff-$name.XXXXXX")"
cluster_pid=""
restarted_pids=()
curl_ca=()
cleanup() {
  local rc=$?
  local pid
  for pid in "${restarted_pids[@]}"; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [ -n "$cluster_pid" ] && kill -0 "$cluster_pid" 2>/dev/null; then
    kill "$cluster_pid" 2>/dev/null || true
    for _ in $(seq 1 100); do # up to 10 s for a clean stop
      kill -0 "$cluster_pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$cluster_pid" 2>/dev/null; then
      echo "$name: cluster did not stop on SIGTERM; killing it" >&2
      kill -KILL "$cluster_pid" 2>/dev/null || true
    fi
    wait "$cluster_pid" 2>/dev/null || true
  fi
  if [ "$rc" -ne 0 ]; then
    echo "$name: FAILED (exit $rc); cluster output and node logs follow" >&2
    for f in "$work"/cluster.log "$work"/data/node-*.log; do
      [ -f "$f" ] && { echo "--- $f (last 40 lines)" >&2; tail -n 40 "$f" >&2; }
    done
  fi
  if [ "${KEEP_DATA:-0}" = 1 ]; then
    echo "$name: data and logs kept in $work" >&2
  else
    rm -rf "$work"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

flagstaff_binary() {
  if [ -n "${FLAGSTAFF_BIN:-}" ]; then # a prebuilt binary instead of building one
    bin="$FLAGSTAFF_BIN"
  else
    phase "build flagstaff"
    # Workspace-wide, so features resolve as in every other build and RocksDB is built once.
    cargo build --locked --workspace --bins
    bin="$target_dir/debug/flagstaff"
  fi
  [ -x "$bin" ] || { echo "$name: $bin was not built" >&2; exit 1; }
}

# python_venv DIR REQUIREMENTS: a venv with the pinned requirements, rebuilt when they change.
python_venv() {
  venv="$1"
  local req="$2" stamp="$1/.requirements.sha256" want
  want="$(sha256sum "$req" | cut -d' ' -f1)"
  if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input -r "$req"
    echo "$want" >"$stamp"
  fi
}

start_local_cluster() {
  phase "start cluster"
  # node N uses BASE+N-1 for each of its listeners (client, peer, flagd sync)
  read -r client_port peer_port sync_port < <(python3 - <<'PY'
import random, socket, sys
def free(port):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()
for _ in range(200):
    c = random.randrange(20000, 30000)
    p, s = c + 10000, c - 10000
    if all(free(c + i) and free(p + i) and free(s + i) for i in range(3)):
        print(c, p, s)
        sys.exit(0)
sys.exit("no free ports found")
PY
  )
  data="$work/data"
  "$bin" cluster up --data-dir "$data" --client-port "$client_port" --peer-port "$peer_port" \
    --sync-port "$sync_port" "$@" \
    >"$work/cluster.log" 2>&1 &
  cluster_pid=$!
  local scheme=http arg
  for arg in "$@"; do
    if [ "$arg" = --tls ]; then
      scheme=https ca="$data/tls/ca.pem" curl_ca=(--cacert "$data/tls/ca.pem")
    fi
  done
  urls=("$scheme://127.0.0.1:$client_port" "$scheme://127.0.0.1:$((client_port + 1))" "$scheme://127.0.0.1:$((client_port + 2))")

  local ready=0 n u
  for _ in $(seq 1 300); do # up to 300 tries, 60 s
    kill -0 "$cluster_pid" 2>/dev/null || { echo "$name: cluster exited during start" >&2; exit 1; }
    n=0
    for u in "${urls[@]}"; do
      [ -f "$data/tls/ca.pem" ] || [ "$scheme" = http ] || continue
      curl -sf "${curl_ca[@]}" --max-time 2 "$u/readyz" >/dev/null 2>&1 && n=$((n + 1))
    done
    if [ "$n" = 3 ] && grep -q "is up" "$work/cluster.log"; then ready=1; break; fi
    sleep 0.2
  done
  [ "$ready" = 1 ] || { echo "$name: cluster not ready within 60 s" >&2; exit 1; }
  token="$(cat "$data/admin.token")"

  node_pids=("" $(sed -n 's/^  node [0-9]* .* pid \([0-9]*\)$/\1/p' "$work/cluster.log"))
  [ "${#node_pids[@]}" = 4 ] || { echo "$name: cluster up did not list three node pids" >&2; exit 1; }
  leader_url="$(curl -sS "${curl_ca[@]}" --fail-with-body --max-time 10 -H "Authorization: Bearer $token" "${urls[0]}/v1/cluster" |
    python3 -c 'import json,sys; c=json.load(sys.stdin); print(next(m["api_addr"] for m in c["members"] if m["is_leader"]))')"
  followers=()
  for u in "${urls[@]}"; do [ "$u" != "$leader_url" ] && followers+=("$u"); done
  [ "${#followers[@]}" = 2 ] || { echo "$name: expected 2 followers besides leader $leader_url" >&2; exit 1; }
  phase "cluster up: leader $leader_url, followers ${followers[*]}"
}

# admin METHOD PATH [BODY]: an admin request to the leader; fails on an error status.
admin() {
  curl -sS "${curl_ca[@]}" --fail-with-body --max-time 10 -X "$1" -H "Authorization: Bearer $token" \
    -H 'Content-Type: application/json' "$leader_url$2" ${3:+-d "$3"}
  echo
}

# start_node PID URL: starts the node that ran as PID (now stopped) again with the same command
# line, data dir and secrets, and waits until URL (its client URL) is ready. Sets `started_pid`.
start_node() {
  local pid="$1" url="$2" args=()
  if kill -0 "$pid" 2>/dev/null; then
    echo "$name: node $pid is still running; not starting it again" >&2
    exit 1
  fi
  mapfile -d '' -t args <"$work/cmdline-$pid"
  FLAGSTAFF_CLUSTER_SECRET="$(cat "$data/cluster.secret")" FLAGSTAFF_ADMIN_TOKEN="$token" \
    "${args[@]}" >>"$work/restarted-$pid.log" 2>&1 &
  started_pid=$!
  restarted_pids+=("$started_pid")
  local _
  for _ in $(seq 1 150); do # up to 30 s
    kill -0 "$started_pid" 2>/dev/null || { echo "$name: restarted node $url exited; see $work/restarted-$pid.log" >&2; exit 1; }
    curl -sf "${curl_ca[@]}" --max-time 2 "$url/readyz" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "$name: restarted node $url not ready within 30 s" >&2
  exit 1
}

# remember_node PID: keeps the command line of a running node, for start_node.
remember_node() {
  cat "/proc/$1/cmdline" >"$work/cmdline-$1"
}
