#!/usr/bin/env bash
# A real two-node Ray cluster on this machine (addresses 127.0.0.1), token auth on.
#
#   cluster/local_two_node.sh start    # head (1 CPU, dashboard on 127.0.0.1) + node2 (1 CPU, {"node2": 1})
#   cluster/local_two_node.sh status   # pids, addresses, `ray status`
#   cluster/local_two_node.sh stop     # stops exactly the processes this script started
#
# Everything lives in one state directory, $ARXIVCLS_TWO_NODE_DIR (default /tmp/arxivcls-2n;
# keep it short: Ray puts unix sockets under it and socket paths are capped at 107 bytes):
#
#   auth_token   the cluster's token (0600). Both nodes and every client read it through
#                RAY_AUTH_TOKEN_PATH, so ~/.ray/auth_token (shared by everything else that
#                runs Ray as this user) is neither read nor written.
#   env.sh       `source` it to talk to the cluster:
#                  RAY_AUTH_MODE=token, RAY_AUTH_TOKEN_PATH=<dir>/auth_token,
#                  RAY_ADDRESS=127.0.0.1:<gcs port>              (ray.init, ray status, arxivcls tune --address)
#                  RAY_API_SERVER_ADDRESS=http://127.0.0.1:<dash> (ray job submit/logs/stop)
#   cluster.env  the ports (GCS_PORT, DASHBOARD_PORT, ...), sourceable
#   pids         the pids this script started (head + node2 daemons and their children)
#   head/ node2/ each node's own --temp-dir (sessions, logs). Using our own temp dirs also keeps
#                /tmp/ray/ray_current_cluster untouched, so a plain `ray.init()` elsewhere on this
#                machine still starts its own local cluster instead of joining this one.
#
# `ray stop` is deliberately not used: it kills every Ray process on the machine by name,
# including other people's clusters. We kill our pids (TERM, then KILL) and verify they are gone.
#
# Jobs see ARXIVCLS_WORKDIR (default: this checkout) and ARXIVCLS_STORAGE (if set) as they were
# when `start` ran; cluster/submit.sh runs `arxivcls tune` there (see cluster/README.md).
#
# Other knobs: RAY_BIN (default: `ray` on PATH), ARXIVCLS_OBJECT_STORE_BYTES (default 200 MB per
# node), ARXIVCLS_START_TIMEOUT (seconds to wait for both nodes, default 240).
set -euo pipefail

STATE_DIR=${ARXIVCLS_TWO_NODE_DIR:-/tmp/arxivcls-2n}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
RAY_BIN=${RAY_BIN:-ray}
OBJECT_STORE_BYTES=${ARXIVCLS_OBJECT_STORE_BYTES:-200000000}
START_TIMEOUT=${ARXIVCLS_START_TIMEOUT:-240}

die() { echo "error: $*" >&2; exit 2; }

# Python that can import ray (the one next to the ray CLI).
py() {
    local raypath
    raypath=$(command -v "$RAY_BIN") || die "ray not found (activate the venv or set RAY_BIN)"
    "$(dirname "$raypath")/python" "$@"
}

alive() { [ -d "/proc/$1" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }

# Pids whose command line names one of our two temp dirs (every Ray daemon of this cluster
# has its --temp-dir / session dir in argv), plus all their descendants (dashboard modules,
# agents, workers, job drivers).
our_pids() {
    py - "$STATE_DIR" <<'EOF'
import os, re, sys
state = re.escape(os.path.realpath(sys.argv[1]).encode())
ours_re = re.compile(state + rb"/(head|node2)(/|\x00|\s|$)")
me = os.getpid()
procs = {}
for d in os.listdir("/proc"):
    if not d.isdigit():
        continue
    try:
        with open(f"/proc/{d}/cmdline", "rb") as f:
            cmd = f.read()
        with open(f"/proc/{d}/stat", "rb") as f:
            ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
    except OSError:
        continue
    procs[int(d)] = (ppid, cmd)
ours = {p for p, (_, cmd) in procs.items() if ours_re.search(cmd) and p != me}
changed = True
while changed:
    changed = False
    for p, (ppid, _) in procs.items():
        if ppid in ours and p not in ours and p != me:
            ours.add(p)
            changed = True
print(" ".join(str(p) for p in sorted(ours)))
EOF
}

free_ports() {
    py - "$1" <<'EOF'
import socket, sys
socks, ports = [], []
while len(ports) < int(sys.argv[1]):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
    p = s.getsockname()[1]
    # keep every port (and the one above it, which some Ray components use) distinct
    if p not in ports and p + 1 not in ports and p - 1 not in ports:
        ports.append(p)
print(" ".join(map(str, ports)))
EOF
}

recorded_pids() { [ -f "$STATE_DIR/pids" ] && cat "$STATE_DIR/pids" || true; }

any_alive() {
    local p
    for p in "$@"; do alive "$p" && return 0; done
    return 1
}

cmd_start() {
    # shellcheck disable=SC2046
    if [ -f "$STATE_DIR/pids" ] && any_alive $(recorded_pids); then
        die "a cluster from $STATE_DIR is already running (cluster/local_two_node.sh stop first)"
    fi
    mkdir -p "$STATE_DIR"
    STATE_DIR=$(cd "$STATE_DIR" && pwd -P)
    rm -rf "$STATE_DIR/head" "$STATE_DIR/node2" "$STATE_DIR/pids" "$STATE_DIR/env.sh"

    # A fresh token per cluster. `ray start --head` never creates one (only ray.init() does):
    # with RAY_AUTH_MODE=token it refuses to start without a token, so write it first.
    (umask 077 && py -c 'import secrets; print(secrets.token_hex(32), end="")' >"$STATE_DIR/auth_token")

    read -r GCS_PORT DASHBOARD_PORT CLIENT_PORT \
        H_NM H_OM H_METRICS H_AGENT_HTTP H_AGENT_GRPC H_RTENV \
        N_NM N_OM N_METRICS N_AGENT_HTTP N_AGENT_GRPC N_RTENV <<<"$(free_ports 15)"
    # Worker port ranges: two small disjoint ranges in 20000-32199, below the kernel's ephemeral
    # range (32768+) so outgoing connections do not take them; varied by the GCS port so two
    # such clusters on one machine are unlikely to overlap.
    local base=$(( (GCS_PORT % 1200) * 10 + 20000 ))
    H_WMIN=$base; H_WMAX=$((base + 99)); N_WMIN=$((base + 100)); N_WMAX=$((base + 199))

    cat >"$STATE_DIR/cluster.env" <<EOF
GCS_PORT=$GCS_PORT
DASHBOARD_PORT=$DASHBOARD_PORT
CLIENT_PORT=$CLIENT_PORT
GCS_ADDRESS=127.0.0.1:$GCS_PORT
DASHBOARD_URL=http://127.0.0.1:$DASHBOARD_PORT
EOF

    # Inherited by every Ray process of this cluster, hence by job entrypoints: like the cloud
    # configs, jobs from cluster/submit.sh run in $ARXIVCLS_WORKDIR (default: this checkout, so
    # reports/<study>/ lands where a local run puts it); $ARXIVCLS_STORAGE passes through if set.
    export ARXIVCLS_WORKDIR=${ARXIVCLS_WORKDIR:-$REPO}
    export RAY_AUTH_MODE=token
    export RAY_AUTH_TOKEN_PATH="$STATE_DIR/auth_token"
    unset RAY_AUTH_TOKEN RAY_ADDRESS
    # Workers inherit this from their raylet: Ray Train's PlacementGroupCleaner then finds the
    # state API of *this* cluster even when another Ray instance runs on the machine.
    export RAY_API_SERVER_ADDRESS="http://127.0.0.1:$DASHBOARD_PORT"
    export RAY_USAGE_STATS_ENABLED=0

    echo "starting head (GCS 127.0.0.1:$GCS_PORT, dashboard 127.0.0.1:$DASHBOARD_PORT) ..."
    # No --node-ip-address: Ray rewrites 127.0.0.1 to this machine's routable IP anyway
    # (services.resolve_ip_for_localhost); traffic to one's own IP still goes over `lo`.
    # The GCS and raylets listen on all interfaces, guarded by the token; the dashboard
    # (HTTP: UI + job API) is bound to 127.0.0.1 only.
    if ! "$RAY_BIN" start --head \
        --port="$GCS_PORT" \
        --num-cpus=1 --num-gpus=0 \
        --include-dashboard=true --dashboard-host=127.0.0.1 --dashboard-port="$DASHBOARD_PORT" \
        --ray-client-server-port="$CLIENT_PORT" \
        --node-manager-port="$H_NM" --object-manager-port="$H_OM" \
        --metrics-export-port="$H_METRICS" \
        --dashboard-agent-listen-port="$H_AGENT_HTTP" --dashboard-agent-grpc-port="$H_AGENT_GRPC" \
        --runtime-env-agent-port="$H_RTENV" \
        --min-worker-port="$H_WMIN" --max-worker-port="$H_WMAX" \
        --object-store-memory="$OBJECT_STORE_BYTES" \
        --temp-dir="$STATE_DIR/head" --disable-usage-stats \
        >"$STATE_DIR/head.log" 2>&1; then
        cat "$STATE_DIR/head.log" >&2
        our_pids >"$STATE_DIR/pids"
        cmd_stop >&2 || true
        die "ray start --head failed (log above, $STATE_DIR/head.log)"
    fi
    our_pids >"$STATE_DIR/pids"

    echo "starting node2 ..."
    if ! "$RAY_BIN" start --address="127.0.0.1:$GCS_PORT" \
        --num-cpus=1 --num-gpus=0 --resources='{"node2": 1}' \
        --node-manager-port="$N_NM" --object-manager-port="$N_OM" \
        --metrics-export-port="$N_METRICS" \
        --dashboard-agent-listen-port="$N_AGENT_HTTP" --dashboard-agent-grpc-port="$N_AGENT_GRPC" \
        --runtime-env-agent-port="$N_RTENV" \
        --min-worker-port="$N_WMIN" --max-worker-port="$N_WMAX" \
        --object-store-memory="$OBJECT_STORE_BYTES" \
        --temp-dir="$STATE_DIR/node2" --disable-usage-stats \
        >"$STATE_DIR/node2.log" 2>&1; then
        cat "$STATE_DIR/node2.log" >&2
        our_pids >"$STATE_DIR/pids"
        cmd_stop >&2 || true
        die "ray start (node2) failed (log above, $STATE_DIR/node2.log)"
    fi
    our_pids >"$STATE_DIR/pids"

    cat >"$STATE_DIR/env.sh" <<EOF
# source me: the environment a client needs to use the two-node cluster in $STATE_DIR
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH='$STATE_DIR/auth_token'
export RAY_ADDRESS='127.0.0.1:$GCS_PORT'
export RAY_API_SERVER_ADDRESS='http://127.0.0.1:$DASHBOARD_PORT'
EOF

    echo "waiting for 2 alive nodes and the job API (up to ${START_TIMEOUT}s) ..."
    if ! py - "127.0.0.1:$GCS_PORT" "http://127.0.0.1:$DASHBOARD_PORT" "$START_TIMEOUT" <<'EOF'
import sys, time, urllib.request
from ray._private.authentication.http_token_authentication import get_auth_headers_if_auth_enabled
from ray._raylet import GcsClient

gcs, dash, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
deadline = time.time() + timeout
client = GcsClient(address=gcs)
headers = get_auth_headers_if_auth_enabled({})
nodes = jobs_ok = False
while time.time() < deadline:
    try:
        infos = client.get_all_node_info(timeout=10)
        nodes = sum(1 for i in infos.values() if i.state == 0) >= 2  # 0 == ALIVE
        req = urllib.request.Request(dash + "/api/jobs/", headers=headers)
        jobs_ok = urllib.request.urlopen(req, timeout=10).status == 200
    except Exception as e:  # not up yet
        last = e
    if nodes and jobs_ok:
        sys.exit(0)
    time.sleep(2)
print(f"timed out: nodes_ok={nodes} job_api_ok={jobs_ok}", file=sys.stderr)
sys.exit(1)
EOF
    then
        our_pids >"$STATE_DIR/pids"
        cmd_stop >&2 || true
        die "cluster did not come up (logs under $STATE_DIR)"
    fi
    our_pids >"$STATE_DIR/pids"

    echo "two-node Ray cluster up; state in $STATE_DIR"
    echo "  GCS address:   127.0.0.1:$GCS_PORT"
    echo "  dashboard/job: http://127.0.0.1:$DASHBOARD_PORT  (bound to 127.0.0.1 only; token required)"
    echo "  client env:    source $STATE_DIR/env.sh"
    echo "  pids:          $(cat "$STATE_DIR/pids")"
}

cmd_stop() {
    [ -d "$STATE_DIR" ] || { echo "nothing to stop ($STATE_DIR does not exist)"; return 0; }
    STATE_DIR=$(cd "$STATE_DIR" && pwd -P)
    local pids p
    # the recorded pids plus anything of ours started since (workers, job drivers)
    pids=$( { recorded_pids; echo; our_pids; } | tr ' ' '\n' | grep -E '^[0-9]+$' | sort -un | tr '\n' ' ' )
    if [ -z "${pids// /}" ]; then
        echo "no processes to stop"
    else
        echo "stopping: $pids"
        # TERM first (raylets exit in ~10 s and take their workers along; the GCS and the
        # autoscaler monitor tend to ignore it), KILL whatever is left after 15 s.
        for p in $pids; do kill -TERM "$p" 2>/dev/null || true; done
        for _ in $(seq 1 30); do
            # shellcheck disable=SC2086
            any_alive $pids || break
            sleep 0.5
        done
        for p in $pids; do alive "$p" && kill -KILL "$p" 2>/dev/null || true; done
        for _ in $(seq 1 20); do
            # shellcheck disable=SC2086
            any_alive $pids || break
            sleep 0.5
        done
    fi
    # anything of ours still there (e.g. a worker forked during shutdown)?
    local left
    left=$(our_pids)
    if [ -n "$left" ]; then
        for p in $left; do kill -KILL "$p" 2>/dev/null || true; done
        sleep 1
        left=$(our_pids)
    fi
    local still=""
    for p in $pids $left; do alive "$p" && still="$still $p"; done
    rm -f "$STATE_DIR/pids" "$STATE_DIR/env.sh"
    if [ -n "$still" ]; then
        echo "error: still running:$still" >&2
        return 1
    fi
    echo "stopped"
}

cmd_status() {
    [ -f "$STATE_DIR/pids" ] || { echo "not running (no $STATE_DIR/pids)"; return 3; }
    local p up=0 down=0
    for p in $(recorded_pids); do if alive "$p"; then up=$((up + 1)); else down=$((down + 1)); fi; done
    echo "state dir: $STATE_DIR"
    echo "recorded pids: $up alive, $down exited"
    [ -f "$STATE_DIR/cluster.env" ] && sed 's/^/  /' "$STATE_DIR/cluster.env"
    if [ -f "$STATE_DIR/env.sh" ]; then
        (
            # shellcheck disable=SC1091
            . "$STATE_DIR/env.sh"
            "$RAY_BIN" status --address="$RAY_ADDRESS" || true
        )
    fi
    [ "$up" -gt 0 ]
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) echo "usage: $0 start|stop|status   (state dir: \$ARXIVCLS_TWO_NODE_DIR, default /tmp/arxivcls-2n)" >&2; exit 2 ;;
esac
