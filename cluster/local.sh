#!/usr/bin/env bash
# A two-node Ray cluster on this machine (a head and one worker, reached at 127.0.0.1) with
# token authentication on: the closest thing to a real cluster that fits on a laptop or a CI
# runner.
#
#   cluster/local.sh start    start it (or say it is already running) and print what to export
#   cluster/local.sh status   running (exit 0, with its URLs), stopped (3) or unhealthy (1)
#   cluster/local.sh stop     stop this cluster's processes, and only them
#   cluster/local.sh env      print only the export lines:  eval "$(cluster/local.sh env)"
#   cluster/local.sh token    print the token (for the dashboard's login box)
#
# Settings (environment):
#   GECKO_CLUSTER_DIR          state dir: ports, token, logs, Ray's temp dir (./.gecko_cluster)
#   GECKO_HEAD_CPUS            CPUs of the head node (1)
#   GECKO_WORKER_CPUS          CPUs of the worker node (1)
#   GECKO_OBJECT_STORE_BYTES   object store of each node (200000000)
#   GECKO_WORKER_PORTS         size of each node's worker port range (100)
#   GECKO_START_TIMEOUT        seconds to wait for the dashboard (90)
#
# It uses whatever `ray` is on PATH (the same Ray as the code you will submit) and `python3`
# (only to pick free ports). `stop` never runs `ray stop`, which would stop every Ray on the
# machine: it ends the processes that carry this cluster's id in their environment (Linux) or
# this cluster's temp dir in their command line.
set -euo pipefail

STATE_DIR="${GECKO_CLUSTER_DIR:-./.gecko_cluster}"
HEAD_CPUS="${GECKO_HEAD_CPUS:-1}"
WORKER_CPUS="${GECKO_WORKER_CPUS:-1}"
OBJECT_STORE_BYTES="${GECKO_OBJECT_STORE_BYTES:-200000000}"
WORKER_PORT_SPAN="${GECKO_WORKER_PORTS:-100}"
START_TIMEOUT="${GECKO_START_TIMEOUT:-90}"
HOST=127.0.0.1
# Ray's Unix sockets live under <temp dir>/session_<date>_<time>_<pid>/sockets/ (~66 more
# characters) and the whole path must fit in 107 bytes (103 on macOS): a temp dir longer than
# this moves to /tmp/gecko-<cluster id> (recorded in the state dir, linked from it as tmp).
MAX_TEMP_DIR_CHARS=36

die() {
    echo "local.sh: $*" >&2
    exit 1
}

usage() {
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
}

python_bin() {
    local candidate
    for candidate in python3 python; do
        if command -v "$candidate" >/dev/null 2>&1; then
            echo "$candidate"
            return
        fi
    done
    die "python3 is needed to pick free ports"
}

# Absolute state dir; `create` makes it (start), otherwise it may not exist (status, stop).
resolve_state_dir() {
    if [[ "${1:-}" == create ]]; then
        mkdir -p "$STATE_DIR"
    fi
    if [[ -d "$STATE_DIR" ]]; then
        STATE_DIR="$(cd "$STATE_DIR" && pwd -P)"
    fi
    STATE_FILE="$STATE_DIR/cluster.env"
    TOKEN_FILE="$STATE_DIR/auth_token"
}

load_state() {
    [[ -f "$STATE_FILE" ]] || return 1
    # shellcheck disable=SC1090
    source "$STATE_FILE"
}

# Processes of this cluster. Every process the nodes start (GCS, raylets, dashboard, agents,
# workers, job drivers) inherits GECKO_CLUSTER_ID from `ray start`'s environment; on systems
# without /proc the temp dir in the command line (GCS, raylets, agents) is the fallback, and
# workers exit by themselves once their raylet is gone.
cluster_pids() {
    {
        if [[ -r /proc/self/environ ]]; then
            grep -lxzF "GECKO_CLUSTER_ID=$CLUSTER_ID" /proc/[0-9]*/environ 2>/dev/null |
                sed -n 's|^/proc/\([0-9]*\)/environ$|\1|p' || true
        fi
        # The temp dir, followed by "/" or " " or at the end of the line; it travels through
        # the environment so that awk's own command line does not match.
        ps -ax -o pid= -o command= 2>/dev/null | NEEDLE="$TEMP_DIR" awk '
            { line = $0 " "; needle = ENVIRON["NEEDLE"] }
            index(line, needle "/") || index(line, needle " ") { print $1 }' || true
    } | sort -un | while read -r pid; do
        if [[ "$pid" != "$$" ]] && kill -0 "$pid" 2>/dev/null; then
            echo "$pid"
        fi
    done
}

port_open() {
    (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null
}

# Prints <count> distinct free ports, then the first port of two free ranges of <span> ports
# (the nodes' worker ports), all held at once while they are chosen so that none repeats.
pick_ports() {
    "$(python_bin)" - "$1" "$2" <<'PY'
import random
import socket
import sys

count, span = int(sys.argv[1]), int(sys.argv[2])
held = []


def grab(port=0):
    sock = socket.socket()
    sock.bind(("127.0.0.1", port))
    held.append(sock)
    return sock.getsockname()[1]


singles = [grab() for _ in range(count)]
bases = []
# Below the usual ephemeral range (32768+), where the single ports above come from.
for _ in range(500):
    base = random.randrange(20000, 32000 - span)
    try:
        for port in range(base, base + span):
            grab(port)
    except OSError:
        continue
    bases.append(base)
    if len(bases) == 2:
        break
if len(bases) < 2:
    sys.exit("no free range of %d ports between 20000 and 32000" % span)
print(*singles, *bases)
PY
}

make_token() {
    [[ -s "$TOKEN_FILE" ]] && return
    (
        umask 077
        "$(python_bin)" -c 'import secrets; print(secrets.token_hex(32), end="")' >"$TOKEN_FILE"
    )
}

write_state() {
    local name
    : >"$STATE_FILE"
    for name in CLUSTER_ID TEMP_DIR GCS_PORT DASHBOARD_PORT CLIENT_PORT \
        HEAD_NODE_MANAGER_PORT HEAD_OBJECT_MANAGER_PORT HEAD_METRICS_PORT \
        HEAD_AGENT_LISTEN_PORT HEAD_AGENT_GRPC_PORT HEAD_RUNTIME_ENV_PORT HEAD_MIN_WORKER_PORT \
        WORKER_NODE_MANAGER_PORT WORKER_OBJECT_MANAGER_PORT WORKER_METRICS_PORT \
        WORKER_AGENT_LISTEN_PORT WORKER_AGENT_GRPC_PORT WORKER_RUNTIME_ENV_PORT \
        WORKER_MIN_WORKER_PORT; do
        printf '%s=%q\n' "$name" "${!name}" >>"$STATE_FILE"
    done
}

# `ray start` with this cluster's environment: token auth on with the cluster's own token
# file, the cluster id every child inherits, and nothing from the caller that would point
# Ray elsewhere (RAY_ADDRESS, a token value in RAY_AUTH_TOKEN). RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER
# lets a second node start on macOS (the default on Linux). There is no --node-ip-address:
# Ray turns 127.0.0.1 into the machine's own address anyway, so both nodes advertise that.
ray_start() {
    local log="$1"
    shift
    env -u RAY_ADDRESS -u RAY_AUTH_TOKEN \
        RAY_AUTH_MODE=token \
        RAY_AUTH_TOKEN_PATH="$TOKEN_FILE" \
        RAY_USAGE_STATS_ENABLED=0 \
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1 \
        GECKO_CLUSTER_ID="$CLUSTER_ID" \
        ray start --disable-usage-stats \
        --temp-dir="$TEMP_DIR" --object-store-memory="$OBJECT_STORE_BYTES" "$@" \
        >"$log" 2>&1
}

print_exports() {
    echo "export RAY_ADDRESS=http://$HOST:$DASHBOARD_PORT"
    echo "export RAY_AUTH_MODE=token"
    echo "export RAY_AUTH_TOKEN_PATH=$TOKEN_FILE"
}

print_running() {
    cat <<EOF
gecko cluster: running (head + 1 worker on this machine, token authentication on)
  dashboard:   http://$HOST:$DASHBOARD_PORT
  GCS:         $HOST:$GCS_PORT   (drivers: ray.init(address="$HOST:$GCS_PORT"))
  metrics:     http://$HOST:$HEAD_METRICS_PORT/metrics  http://$HOST:$WORKER_METRICS_PORT/metrics
  token file:  $TOKEN_FILE   (cluster/local.sh token prints it)
  logs:        $STATE_DIR/logs  $TEMP_DIR/session_latest/logs

Submit jobs (ray job submit, JobSubmissionClient, gecko-actors submit) after:
$(print_exports | sed 's/^/  /')
EOF
}

cmd_start() {
    resolve_state_dir create
    # The state dir holds the token: keep it out of any git repository it sits in.
    [[ -e "$STATE_DIR/.gitignore" ]] || echo '*' >"$STATE_DIR/.gitignore"
    if load_state && [[ -n "$(cluster_pids)" ]]; then
        echo "gecko cluster: already running"
        print_running
        return 0
    fi
    command -v ray >/dev/null 2>&1 || die "no 'ray' on PATH: activate the virtualenv that has ray[default]"

    CLUSTER_ID="$("$(python_bin)" -c 'import secrets; print(secrets.token_hex(8))')"
    TEMP_DIR="$STATE_DIR/tmp"
    if ((${#TEMP_DIR} > MAX_TEMP_DIR_CHARS)); then
        TEMP_DIR="/tmp/gecko-$CLUSTER_ID"
        mkdir -p "$TEMP_DIR"
        if [[ -L "$STATE_DIR/tmp" || ! -e "$STATE_DIR/tmp" ]]; then
            ln -sfn "$TEMP_DIR" "$STATE_DIR/tmp"
        fi
    fi
    mkdir -p "$TEMP_DIR" "$STATE_DIR/logs"
    make_token

    local ports
    read -r -a ports <<<"$(pick_ports 15 "$WORKER_PORT_SPAN")"
    ((${#ports[@]} == 17)) || die "could not pick free ports"
    GCS_PORT=${ports[0]} DASHBOARD_PORT=${ports[1]} CLIENT_PORT=${ports[2]}
    HEAD_NODE_MANAGER_PORT=${ports[3]} HEAD_OBJECT_MANAGER_PORT=${ports[4]}
    HEAD_METRICS_PORT=${ports[5]} HEAD_AGENT_LISTEN_PORT=${ports[6]}
    HEAD_AGENT_GRPC_PORT=${ports[7]} HEAD_RUNTIME_ENV_PORT=${ports[8]}
    WORKER_NODE_MANAGER_PORT=${ports[9]} WORKER_OBJECT_MANAGER_PORT=${ports[10]}
    WORKER_METRICS_PORT=${ports[11]} WORKER_AGENT_LISTEN_PORT=${ports[12]}
    WORKER_AGENT_GRPC_PORT=${ports[13]} WORKER_RUNTIME_ENV_PORT=${ports[14]}
    HEAD_MIN_WORKER_PORT=${ports[15]} WORKER_MIN_WORKER_PORT=${ports[16]}
    # Written before anything starts, so that `stop` finds a half-started cluster too.
    write_state

    echo "gecko cluster: starting the head node (logs: $STATE_DIR/logs/head.log)"
    if ! ray_start "$STATE_DIR/logs/head.log" --head \
        --port="$GCS_PORT" \
        --dashboard-host="$HOST" --dashboard-port="$DASHBOARD_PORT" \
        --ray-client-server-port="$CLIENT_PORT" \
        --node-manager-port="$HEAD_NODE_MANAGER_PORT" \
        --object-manager-port="$HEAD_OBJECT_MANAGER_PORT" \
        --metrics-export-port="$HEAD_METRICS_PORT" \
        --dashboard-agent-listen-port="$HEAD_AGENT_LISTEN_PORT" \
        --dashboard-agent-grpc-port="$HEAD_AGENT_GRPC_PORT" \
        --runtime-env-agent-port="$HEAD_RUNTIME_ENV_PORT" \
        --min-worker-port="$HEAD_MIN_WORKER_PORT" \
        --max-worker-port="$((HEAD_MIN_WORKER_PORT + WORKER_PORT_SPAN - 1))" \
        --num-cpus="$HEAD_CPUS"; then
        tail -n 30 "$STATE_DIR/logs/head.log" >&2
        cmd_stop >/dev/null
        die "the head node did not start"
    fi

    echo "gecko cluster: starting the worker node (logs: $STATE_DIR/logs/worker.log)"
    if ! ray_start "$STATE_DIR/logs/worker.log" \
        --address="$HOST:$GCS_PORT" \
        --node-manager-port="$WORKER_NODE_MANAGER_PORT" \
        --object-manager-port="$WORKER_OBJECT_MANAGER_PORT" \
        --metrics-export-port="$WORKER_METRICS_PORT" \
        --dashboard-agent-listen-port="$WORKER_AGENT_LISTEN_PORT" \
        --dashboard-agent-grpc-port="$WORKER_AGENT_GRPC_PORT" \
        --runtime-env-agent-port="$WORKER_RUNTIME_ENV_PORT" \
        --min-worker-port="$WORKER_MIN_WORKER_PORT" \
        --max-worker-port="$((WORKER_MIN_WORKER_PORT + WORKER_PORT_SPAN - 1))" \
        --num-cpus="$WORKER_CPUS"; then
        tail -n 30 "$STATE_DIR/logs/worker.log" >&2
        cmd_stop >/dev/null
        die "the worker node did not start"
    fi

    local waited=0
    until port_open "$DASHBOARD_PORT"; do
        if ((waited >= START_TIMEOUT)); then
            cmd_stop >/dev/null
            die "the dashboard did not answer on port $DASHBOARD_PORT within ${START_TIMEOUT}s"
        fi
        sleep 1
        waited=$((waited + 1))
    done
    print_running
}

# Waits up to <seconds> for this cluster's processes other than the GCS (with `all`: for all
# of them) to exit; prints those still there.
wait_for_exit() {
    local scope="$1" seconds="$2" tick left
    for tick in $(seq 1 $((seconds * 5))); do
        left="$(cluster_pids)"
        if [[ "$scope" != all ]]; then
            left="$(without_gcs "$left")"
        fi
        [[ -z "$left" ]] && return 0
        sleep 0.2
    done
    echo "$left"
}

without_gcs() {
    local pid name
    for pid in $1; do
        if [[ -r "/proc/$pid/comm" ]]; then
            name="$(cat "/proc/$pid/comm" 2>/dev/null || true)"
        else
            name="$(ps -o comm= -p "$pid" 2>/dev/null || true)"
        fi
        [[ "$name" == *gcs_server* ]] || echo "$pid"
    done
}

cmd_stop() {
    resolve_state_dir
    if ! load_state; then
        echo "gecko cluster: stopped (nothing was started from $STATE_DIR)"
        return 0
    fi
    local pids left
    pids="$(cluster_pids)"
    if [[ -z "$pids" ]]; then
        echo "gecko cluster: stopped"
        return 0
    fi
    echo "gecko cluster: stopping $(wc -w <<<"$pids") processes"
    # Everything but the GCS first: raylets and agents then exit at once instead of waiting
    # for a GCS that is going away (~1 s instead of ~10 s).
    # shellcheck disable=SC2086
    kill -TERM $(without_gcs "$pids") 2>/dev/null || true
    wait_for_exit others 5 >/dev/null
    # shellcheck disable=SC2086
    kill -TERM $(cluster_pids) 2>/dev/null || true
    left="$(wait_for_exit all 5)"
    if [[ -n "$left" ]]; then
        # shellcheck disable=SC2086
        kill -KILL $left 2>/dev/null || true
        left="$(wait_for_exit all 5)"
    fi
    [[ -z "$left" ]] || die "processes still running after SIGKILL: $(tr '\n' ' ' <<<"$left")"
    echo "gecko cluster: stopped"
}

cmd_status() {
    resolve_state_dir
    if ! load_state; then
        echo "gecko cluster: stopped"
        return 3
    fi
    local count
    count="$(cluster_pids | wc -l | tr -d ' ')"
    if ((count == 0)); then
        echo "gecko cluster: stopped"
        return 3
    fi
    if port_open "$GCS_PORT" && port_open "$DASHBOARD_PORT"; then
        print_running
        return 0
    fi
    echo "gecko cluster: unhealthy ($count processes, but the GCS or the dashboard does not" \
        "answer); run: cluster/local.sh stop"
    return 1
}

cmd_env() {
    resolve_state_dir
    load_state || die "not started: run cluster/local.sh start"
    print_exports
}

cmd_token() {
    resolve_state_dir
    [[ -s "$TOKEN_FILE" ]] || die "no token yet: run cluster/local.sh start"
    cat "$TOKEN_FILE"
    echo
}

case "${1:-}" in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
env) cmd_env ;;
token) cmd_token ;;
-h | --help | help) usage ;;
*)
    usage >&2
    exit 2
    ;;
esac
