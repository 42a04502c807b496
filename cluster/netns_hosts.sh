#!/usr/bin/env bash
# Three separate network hosts on this machine, for rehearsing `ray up` onto an on-prem cluster
# (cluster/netns.yaml). Root only.
#
#   cluster/netns_hosts.sh up            # hosts head, w1, w2 + a client namespace, sshd on each host
#   cluster/netns_hosts.sh client CMD..  # run CMD in the client namespace with the client's env
#   cluster/netns_hosts.sh status        # namespaces, addresses, routes, processes per host
#   cluster/netns_hosts.sh kill HOST     # kill everything on one host at once (a machine lost)
#   cluster/netns_hosts.sh down          # removes exactly what `up` made (also after a failed run)
#
# The network exists only between the namespaces: one bridge in a namespace of its own
# (axnet-net), one veth pair per host from it, addresses from 198.18.0.0/24 (reserved for network
# tests), no default route, no NAT, no link to the machine's interfaces, IPv6 off on the veths.
#
#   axnet-client  198.18.0.1    where the launcher runs (ray up / exec / dashboard / job submit)
#   axnet-head    198.18.0.10   Ray head
#   axnet-w1      198.18.0.11   Ray worker
#   axnet-w2      198.18.0.12   Ray worker
#
# Each host runs /usr/sbin/sshd -D listening on its own address only, root login by the client
# key only, inside its own PID namespace (unshare --pid --mount-proc, sshd is its PID 1). Hence:
#   * `ray stop`, which `ray down` runs on the head and the configs run before `ray start`, kills
#     Ray processes by name in /proc; in a PID namespace it sees only that host's processes,
#     never the machine's other Ray clusters. The driver's search for the local raylet
#     (psutil over /proc) likewise finds only the host's own.
#   * killing a host's PID 1 makes the kernel kill every process on that host (`kill HOST`).
# Each host has its own home for root (<host>/home, through a per-host /etc/passwd bind-mounted in
# the host's private mount namespace: ~/.ssh/authorized_keys, ~/ray_bootstrap_config.yaml,
# ~/ray_bootstrap_key.pem, ~/.ray/auth_token, ~/.bashrc are per host, as on separate machines; the
# machine's /root is never touched) and, through sshd's SetEnv, its own RAY_TMPDIR (Ray's sessions, logs and the address file `ray status` reads). Everything else,
# including the venv, is the one filesystem every host sees, like an NFS mount.
#
# State directory /tmp/arxivcls-netns (fixed: cluster/netns.yaml names paths in it):
#   made                  what `up` created, one line each, appended before each step
#   client_key{,.pub}     the client's SSH key (the launcher's auth.ssh_private_key)
#   auth_token            the cluster's Ray token (0600), file-mounted to ~/.ray/auth_token on hosts
#   client.env            the client's environment (PATH with the venv, RAY_AUTH_MODE=token,
#                         RAY_AUTH_TOKEN_PATH, RAY_TMPDIR and TMPDIR in client/)
#   venv                  symlink to the Python environment every host uses ($ARXIVCLS_NETNS_VENV,
#                         default: this checkout's .venv)
#   shared/               ARXIVCLS_WORKDIR (shared/work) and ARXIVCLS_STORAGE (shared/runs) of the
#                         cluster: results and checkpoints every host sees
#   <host>/               sshd_config, host key, passwd, sshd.log, init.pid, home/, tmp/
set -Eeuo pipefail

STATE=/tmp/arxivcls-netns
PREFIX=axnet
NET_NS=$PREFIX-net
HOSTS=(head w1 w2)
declare -A ADDR=([client]=198.18.0.1 [head]=198.18.0.10 [w1]=198.18.0.11 [w2]=198.18.0.12)
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
VENV=${ARXIVCLS_NETNS_VENV:-$REPO/.venv}
SSHD=/usr/sbin/sshd
START_TIMEOUT=${ARXIVCLS_NETNS_TIMEOUT:-30}

die() { echo "error: $*" >&2; exit 2; }
record() { echo "$*" >>"$STATE/made"; }
ns() { echo "$PREFIX-$1"; }
alive() { [ -d "/proc/$1" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }

# The host's PID 1 (sshd) as seen from here: the child of the `unshare` we started.
init_pid() {
    local unshare_pid
    unshare_pid=$(cat "$STATE/$1/init.pid" 2>/dev/null) || return 1
    alive "$unshare_pid" || return 1
    cat "/proc/$unshare_pid/task/$unshare_pid/children" 2>/dev/null | awk '{print $1}'
}

# Every process inside the host's PID namespace.
host_pids() {
    local init pidns p
    init=$(init_pid "$1") || return 0
    [ -n "$init" ] || return 0
    pidns=$(readlink "/proc/$init/ns/pid") || return 0
    for p in /proc/[0-9]*; do
        [ "$(readlink "$p/ns/pid" 2>/dev/null)" = "$pidns" ] && echo "${p#/proc/}"
    done
    return 0
}

check_prerequisites() {
    [ "$(id -u)" = 0 ] || die "run as root (network namespaces)"
    [ -x "$SSHD" ] || die "$SSHD not found: apt-get install openssh-server"
    command -v rsync >/dev/null || die "rsync not found: apt-get install rsync"
    command -v unshare >/dev/null || die "unshare not found (util-linux)"
    [ -x "$VENV/bin/ray" ] || die "no ray in $VENV (set ARXIVCLS_NETNS_VENV to an environment with arxivcls installed)"
}

write_sshd_config() {
    local host=$1 dir=$STATE/$1
    cat >"$dir/sshd_config" <<EOF
# sshd of rehearsal host $host ($(ns "$host")), written by cluster/netns_hosts.sh
ListenAddress ${ADDR[$host]}
Port 22
HostKey $dir/ssh_host_ed25519_key
PidFile $dir/sshd.pid
AuthorizedKeysFile .ssh/authorized_keys
AllowUsers root
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
# ray dashboard / ssh -L tunnels only
AllowTcpForwarding local
X11Forwarding no
PermitTunnel no
PrintMotd no
LogLevel VERBOSE
SetEnv RAY_TMPDIR=$dir/tmp
EOF
}

start_host() {
    local host=$1 name dir
    name=$(ns "$host")
    dir=$STATE/$host
    # setsid: its own session, so the caller's terminal signals do not reach the host.
    # unshare --fork: sshd is PID 1 of a fresh PID namespace with its own /proc; --kill-child:
    # if the unshare parent dies, PID 1 gets SIGKILL and with it every process on the host.
    # The host's own home for root: a copy of /etc/passwd naming <host>/home, bind-mounted over
    # /etc/passwd inside the host's private mount namespace (ssh and sshd take ~ from the passwd
    # entry; the machine's /etc/passwd and /root are never touched).
    setsid ip netns exec "$name" unshare --pid --fork --mount-proc --kill-child \
        sh -c 'mount --bind "$1" /etc/passwd && exec "$2" -D -e -f "$3"' host "$dir/passwd" "$SSHD" "$dir/sshd_config" \
        >"$dir/sshd.log" 2>&1 </dev/null &
    echo $! >"$dir/init.pid"
    record "host $host"
}

wait_for_sshd() {
    local host=$1 deadline=$((SECONDS + START_TIMEOUT))
    while [ $SECONDS -lt $deadline ]; do
        if ip netns exec "$(ns client)" ssh -q -i "$STATE/client_key" -o BatchMode=yes \
            -o UserKnownHostsFile="$STATE/known_hosts" -o StrictHostKeyChecking=yes -o ConnectTimeout=5 \
            "root@${ADDR[$host]}" true 2>/dev/null; then
            return 0
        fi
        sleep 0.5
    done
    cat "$STATE/$host/sshd.log" >&2 || true
    return 1
}

cmd_up() {
    check_prerequisites
    if [ -e "$STATE" ] || ip netns list | grep -q "^$PREFIX-"; then
        die "$STATE or $PREFIX-* namespaces exist already (cluster/netns_hosts.sh down first)"
    fi
    trap 'echo "error: up failed; removing what it made" >&2; cmd_down >&2 || true' ERR
    mkdir -m 700 "$STATE"
    : >"$STATE/made"
    mkdir -p "$STATE/shared/work" "$STATE/shared/runs" "$STATE/client/tmp"
    ln -s "$VENV" "$STATE/venv"
    if [ ! -d /run/sshd ]; then  # sshd's privilege separation directory
        record "dir /run/sshd"
        mkdir -m 755 /run/sshd
    fi
    ssh-keygen -q -t ed25519 -N '' -C arxivcls-netns-client -f "$STATE/client_key"
    (umask 077 && "$VENV/bin/python" -c 'import secrets; print(secrets.token_hex(32), end="")' >"$STATE/auth_token")
    cat >"$STATE/client.env" <<EOF
# source me (or use \`cluster/netns_hosts.sh client CMD\`): the launcher's environment
export PATH='$STATE/venv/bin':"\$PATH"
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH='$STATE/auth_token'
export RAY_TMPDIR='$STATE/client/tmp'
export TMPDIR='$STATE/client/tmp'
export RAY_USAGE_STATS_ENABLED=0
unset RAY_ADDRESS RAY_AUTH_TOKEN RAY_API_SERVER_ADDRESS
EOF

    record "netns $NET_NS"
    ip netns add "$NET_NS"
    ip netns exec "$NET_NS" sysctl -qw net.ipv6.conf.default.disable_ipv6=1
    ip -n "$NET_NS" link add br0 type bridge
    ip -n "$NET_NS" link set br0 up
    local host name
    for host in client "${HOSTS[@]}"; do
        name=$(ns "$host")
        record "netns $name"
        ip netns add "$name"
        ip netns exec "$name" sysctl -qw net.ipv6.conf.default.disable_ipv6=1
        # created inside the bridge's namespace with the peer placed straight into the host's:
        # nothing of it ever exists in the machine's own namespace
        ip -n "$NET_NS" link add "veth-$host" type veth peer name eth0 netns "$name"
        ip -n "$NET_NS" link set "veth-$host" master br0 up
        ip -n "$name" link set lo up
        ip -n "$name" addr add "${ADDR[$host]}/24" dev eth0
        ip -n "$name" link set eth0 up
    done

    for host in "${HOSTS[@]}"; do
        mkdir -p "$STATE/$host/home/.ssh" "$STATE/$host/tmp"
        chmod 700 "$STATE/$host/home/.ssh"
        install -m 600 "$STATE/client_key.pub" "$STATE/$host/home/.ssh/authorized_keys"
        awk -F: -v OFS=: -v home="$STATE/$host/home" '$1 == "root" { $6 = home } 1' /etc/passwd >"$STATE/$host/passwd"
        ssh-keygen -q -t ed25519 -N '' -C "arxivcls-netns-$host" -f "$STATE/$host/ssh_host_ed25519_key"
        echo "${ADDR[$host]} $(cut -d' ' -f1,2 "$STATE/$host/ssh_host_ed25519_key.pub")" >>"$STATE/known_hosts"
        write_sshd_config "$host"
        start_host "$host"
    done
    for host in "${HOSTS[@]}"; do
        wait_for_sshd "$host" || { echo "error: sshd on $host did not answer within ${START_TIMEOUT}s" >&2; false; }
    done
    trap - ERR
    echo "hosts up; state in $STATE"
    for host in client "${HOSTS[@]}"; do printf '  %-7s %-14s %s\n' "$host" "${ADDR[$host]}" "$(ns "$host")"; done
    echo "  ssh:     ip netns exec $(ns client) ssh -i $STATE/client_key root@${ADDR[head]}"
    echo "  launch:  cluster/netns_hosts.sh client ray up -y cluster/netns.yaml"
}

kill_host() {
    local host=$1 unshare_pid init
    unshare_pid=$(cat "$STATE/$host/init.pid" 2>/dev/null) || return 0
    init=$(init_pid "$host" || true)
    # PID 1 first: the kernel then kills every other process in the host's PID namespace
    [ -n "$init" ] && kill -KILL "$init" 2>/dev/null || true
    kill -KILL "$unshare_pid" 2>/dev/null || true
    local _
    for _ in $(seq 1 40); do
        alive "$unshare_pid" || { [ -n "$init" ] && alive "$init"; } || return 0
        sleep 0.25
    done
    return 1
}

# Processes in a network namespace (the client's launcher, tunnels, ssh masters): TERM, then KILL.
kill_netns_pids() {
    local name=$1 pids _
    pids=$(ip netns pids "$name" 2>/dev/null | tr '\n' ' ')
    [ -n "${pids// /}" ] || return 0
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null || true
    for _ in $(seq 1 20); do
        [ -z "$(ip netns pids "$name" 2>/dev/null)" ] && return 0
        sleep 0.25
    done
    # shellcheck disable=SC2046
    kill -KILL $(ip netns pids "$name" 2>/dev/null) 2>/dev/null || true
    sleep 0.5
}

cmd_down() {
    [ -f "$STATE/made" ] || { echo "nothing to remove ($STATE/made not found)"; return 0; }
    local kind what failed=""
    # undo in reverse order
    while read -r kind what; do
        case $kind in
            host) kill_host "$what" || failed="$failed host:$what" ;;
            netns)
                if ip netns list | grep -q "^$what\b"; then
                    kill_netns_pids "$what"
                    ip netns del "$what" || failed="$failed netns:$what"
                fi
                ;;
            dir) rmdir "$what" 2>/dev/null || true ;;
        esac
    done < <(tac "$STATE/made")
    if [ -n "$failed" ]; then
        echo "error: could not remove:$failed (state kept in $STATE)" >&2
        return 1
    fi
    rm -rf "$STATE"
    echo "removed hosts, namespaces and $STATE"
}

cmd_status() {
    [ -f "$STATE/made" ] || { echo "not up (no $STATE/made)"; return 3; }
    local host name pids
    for host in client "${HOSTS[@]}"; do
        name=$(ns "$host")
        if ! ip netns list | grep -q "^$name\b"; then echo "$host: namespace $name missing"; continue; fi
        echo "$host ($name): $(ip -n "$name" -4 -o addr show dev eth0 | awk '{print $4}')"
        ip -n "$name" route | sed 's/^/  route: /'
        if [ "$host" != client ]; then
            pids=$(host_pids "$host" | tr '\n' ' ')
            if [ -z "${pids// /}" ]; then echo "  down (no processes)"; continue; fi
            for p in $pids; do
                printf '  %6s %s\n' "$p" "$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | cut -c1-110)"
            done
        fi
    done
}

cmd_client() {
    [ -f "$STATE/client.env" ] || die "not up (no $STATE/client.env)"
    [ $# -gt 0 ] || die "usage: $0 client CMD [ARGS...]"
    # shellcheck disable=SC1091
    . "$STATE/client.env"
    exec ip netns exec "$(ns client)" "$@"
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    client) shift; cmd_client "$@" ;;
    kill)
        [ -n "${2:-}" ] && [ -n "${ADDR[$2]:-}" ] && [ "$2" != client ] || die "usage: $0 kill head|w1|w2"
        kill_host "$2" ;;
    pids)
        [ -n "${2:-}" ] && [ -n "${ADDR[$2]:-}" ] && [ "$2" != client ] || die "usage: $0 pids head|w1|w2"
        host_pids "$2" ;;
    *) echo "usage: $0 up|down|status|client CMD..|kill HOST|pids HOST   (state: $STATE)" >&2; exit 2 ;;
esac
