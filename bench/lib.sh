# shellcheck shell=bash
# Shared set-up for the bench scripts (sourced, not run): a temp dir cleaned
# on exit, free loopback ports, a bench user, a sallyport server started from
# a policy, a user certificate, an OpenSSH sshd trusting the same user CA,
# an ssh_config naming both, and medians over repeated, interleaved runs.
#
# Every script measures sallyport and sshd on the same machine in the same
# run, alternating them (sp, sshd, sp, sshd, ...) so load that comes and goes
# hits both alike, and reports the ratio of the medians.
#
# Environment read here:
#   SALLYPORT   sallyport binary (default: cargo build --release, then
#               $CARGO_TARGET_DIR/release/sallyport)
#   BENCH_USER  an existing account to log in as (default: a throwaway
#               system user with /bin/sh, removed on exit; needs root)
#   KEEP=1      keep the temp dir (logs, configs) after the run
#   SP_SSH      extra lines for sallyport's [ssh] section (e.g. tuning:
#               "window_size = 8388608")

set -euo pipefail
shopt -s inherit_errexit

BENCH_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# bench_init: build or find sallyport, make the temp dir $W, install cleanup.
bench_init() {
    if [[ -z "${SALLYPORT:-}" ]]; then
        (cd "$BENCH_ROOT" && cargo build --release --bin sallyport >&2)
        SALLYPORT="${CARGO_TARGET_DIR:-$BENCH_ROOT/target}/release/sallyport"
    fi
    [[ -x "$SALLYPORT" ]] || { echo "no sallyport binary at $SALLYPORT" >&2; exit 2; }
    W=$(mktemp -d /tmp/sallyport-bench.XXXXXX)
    chmod 755 "$W"
    PIDS=()
    CGROUPS=()
    CREATED_USER=
    trap bench_cleanup EXIT
}

bench_cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    for d in "${CGROUPS[@]}"; do rmdir "$d" 2>/dev/null || true; done
    if [[ -n "$CREATED_USER" ]]; then userdel "$CREATED_USER" 2>/dev/null || true; fi
    if [[ -n "${KEEP:-}" ]]; then echo "kept $W" >&2; else rm -rf "$W"; fi
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_port() {
    for _ in $(seq 600); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done
    echo "port $1 never opened (logs in $W)" >&2
    exit 1
}

now() { date +%s.%N; }

# bench_user PREFIX: sets BUSER. Both servers log in this account with
# /bin/sh, so neither pays for a heavy ~/.bashrc.
bench_user() {
    if [[ -n "${BENCH_USER:-}" ]]; then
        BUSER=$BENCH_USER
        return
    fi
    BUSER="$1$$"
    mkdir -m 755 "$W/home"
    # Password "*" (no password login) rather than "!" (locked: sshd refuses it).
    useradd --system --shell /bin/sh --home-dir "$W/home" --no-create-home -p '*' "$BUSER"
    CREATED_USER=$BUSER
}

# sp_start NAME POLICY [EXTRA_TOML]: start sallyport with POLICY as its only
# policy file; EXTRA_TOML is appended to its config (e.g. [targets]). Sets
# SP_PORT and SP_CONF. Logs go to $W/NAME/sallyport.log.
sp_start() {
    local name=$1 policy=$2 extra=${3:-}
    SP_PORT=$(free_port)
    mkdir -p "$W/$name/policies"
    printf '%s\n' "$policy" > "$W/$name/policies/bench.toml"
    SP_CONF="$W/$name/sallyport.toml"
    cat > "$SP_CONF" <<TOML
data_dir = "$W/$name/data"
[ssh]
listen = "127.0.0.1:$SP_PORT"
per_source_per_minute = 100000
run_as = "$BUSER"
shell = "/bin/sh"
${SP_SSH:-}
[api]
listen = "off"
[policy]
dir = "$W/$name/policies"
$extra
TOML
    # Redirect, never $(...): the server would hold the substitution's pipe.
    "$SALLYPORT" --config "$SP_CONF" --log warn serve 2> "$W/$name/sallyport.log" &
    SP_PID=$!
    PIDS+=($!)
    cg_join "$SP_PID"
    wait_port "$SP_PORT"
}

# sp_cert: a key $W/id and a 2 h certificate from the sallyport at $SP_CONF
# for $BUSER (permit-port-forwarding), plus $W/known_hosts (host CA) and
# $W/user_ca.pub for sshd. Call once, after the first sp_start.
sp_cert() {
    ssh-keygen -q -t ed25519 -N '' -f "$W/id" -C bench
    "$SALLYPORT" --config "$SP_CONF" ca sign --public-key "$W/id.pub" --principal "$BUSER" \
        --identity bench --permit-port-forwarding --ttl 2h > /dev/null
    "$SALLYPORT" --config "$SP_CONF" ca show --json > "$W/ca.json"
    python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["user_ca"])' "$W/ca.json" > "$W/user_ca.pub"
    python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["known_hosts"])' "$W/ca.json" > "$W/known_hosts"
}

# sshd_start [PORT]: OpenSSH sshd on PORT (default: a free one) trusting
# sallyport's user CA, with its own host key, known as 127.0.0.1 and as
# "target". Sets SSHD_PORT.
sshd_start() {
    SSHD_PORT=${1:-$(free_port)}
    local d="$W/sshd-$SSHD_PORT"
    mkdir -p /run/sshd "$d"
    ssh-keygen -q -t ed25519 -N '' -f "$d/host_key"
    cat > "$d/sshd_config" <<CFG
Port $SSHD_PORT
ListenAddress 127.0.0.1
HostKey $d/host_key
TrustedUserCAKeys $W/user_ca.pub
AuthorizedKeysFile none
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitRootLogin yes
AllowTcpForwarding yes
MaxStartups 100:30:200
PidFile $d/sshd.pid
LogLevel ERROR
CFG
    /usr/sbin/sshd -f "$d/sshd_config" -D -e 2> "$d/sshd.log" &
    SSHD_PID=$!
    PIDS+=($!)
    cg_join "$SSHD_PID"
    wait_port "$SSHD_PORT"
    local k
    k=$(cut -d' ' -f1,2 "$d/host_key.pub")
    echo "[127.0.0.1]:$SSHD_PORT $k" >> "$W/known_hosts"
    echo "[target]:$SSHD_PORT $k" >> "$W/known_hosts"
}

# ssh_conf [TARGET_PORT]: $W/ssh_config with Host sallyport, sshd (at
# $SSHD_PORT), target (named, through sallyport's [targets]) and target-ip
# (the same sshd by address) at TARGET_PORT (default $SSHD_PORT).
ssh_conf() {
    local tport=${1:-$SSHD_PORT}
    cat > "$W/ssh_config" <<CFG
Host sallyport
  HostName 127.0.0.1
  Port $SP_PORT
Host sshd
  HostName 127.0.0.1
  Port $SSHD_PORT
Host target-ip
  HostName 127.0.0.1
  Port $tport
Host target
  HostName target
  Port $tport
Host *
  User $BUSER
  IdentityFile $W/id
  CertificateFile $W/id-cert.pub
  IdentitiesOnly yes
  UserKnownHostsFile $W/known_hosts
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
  BatchMode yes
  LogLevel ERROR
  Compression no
CFG
}

# median V...: the median of the numbers given.
median() { python3 -c 'import statistics,sys; print(f"{statistics.median(map(float, sys.argv[1:])):.1f}")' "$@"; }

# ratio A B: A/B to two decimals.
ratio() { python3 -c "print(f'{$1 / $2:.2f}')"; }

# Each bastion runs in its own cpuacct cgroup (v1, or none: then the
# /proc/PID/stat totals of the process and its reaped children, which miss
# sshd's per-connection grandchildren) so its CPU time per run is exact
# whatever else the machine does.
CG_ROOT=/sys/fs/cgroup/cpuacct
CGROUPS=()

# cg_join PID: move PID (and so its future children) into a new cgroup.
cg_join() {
    local d="$CG_ROOT/sallyport-bench-$$-$1"
    if mkdir "$d" 2>/dev/null && echo "$1" > "$d/cgroup.procs" 2>/dev/null; then
        CGROUPS+=("$d")
    fi
}

# cpu_ms PID: CPU ms used so far by the bastion PID (and its descendants).
cpu_ms() {
    local d="$CG_ROOT/sallyport-bench-$$-$1"
    if [[ -r "$d/cpuacct.usage" ]]; then
        echo $(($(cat "$d/cpuacct.usage") / 1000000))
        return
    fi
    python3 -c '
import os, sys
f = open(f"/proc/{sys.argv[1]}/stat").read().rsplit(")", 1)[1].split()
print(round(sum(int(x) for x in f[11:15]) * 1000 / os.sysconf("SC_CLK_TCK")))' "$1"
}

# settle PID: wait (up to 5 s) until PID has no child processes left (the
# connection's processes have exited and their CPU time is accounted).
settle() {
    for _ in $(seq 100); do
        [[ -z "$(pgrep -P "$1" || true)" ]] && return 0
        sleep 0.05
    done
}

# measure VIA CMD...: run "CMD VIA" (prints one number); prints that number
# and the CPU ms the bastion VIA (sallyport: $SP_PID, sshd: $SSHD_PID) spent.
measure() {
    local via=$1 pid c0 v c1
    shift
    pid=$SP_PID
    [[ "$via" == sshd ]] && pid=$SSHD_PID
    settle "$pid"
    c0=$(cpu_ms "$pid")
    v=$("$@" "$via")
    settle "$pid"
    c1=$(cpu_ms "$pid")
    echo "$v $((c1 - c0))"
}

# compare LABEL REPS UNIT CMD...: run "CMD sallyport" and "CMD sshd"
# alternately REPS times (each prints one number), print a row with both
# medians and sallyport/sshd, then the bastion's CPU time per run (median
# ms; the fairer figure on a loaded machine: it does not depend on how much
# of the CPU the bench got). Rows go to stdout; with JSON=1, one JSON object
# per row instead.
compare() {
    local label=$1 reps=$2 unit=$3
    shift 3
    local sp=() os=() spc=() osc=() i v c
    for ((i = 0; i < reps; i++)); do
        read -r v c < <(measure sallyport "$@")
        sp+=("$v")
        spc+=("$c")
        read -r v c < <(measure sshd "$@")
        os+=("$v")
        osc+=("$c")
    done
    local a b ac bc
    a=$(median "${sp[@]}")
    b=$(median "${os[@]}")
    ac=$(median "${spc[@]}")
    bc=$(median "${osc[@]}")
    if [[ -n "${JSON:-}" ]]; then
        printf '{"measure":"%s","unit":"%s","runs":%d,"sallyport":%s,"sshd":%s,"ratio":%s,"sallyport_cpu_ms":%s,"sshd_cpu_ms":%s,"cpu_ratio":%s,"sallyport_runs":[%s],"sshd_runs":[%s]}\n' \
            "$label" "$unit" "$reps" "$a" "$b" "$(ratio "$a" "$b")" "$ac" "$bc" "$(ratio "$ac" "$bc")" \
            "$(IFS=,; echo "${sp[*]}")" "$(IFS=,; echo "${os[*]}")"
    else
        printf '%-40s %9s %9s %6sx  %-8s %8s %8s %6sx\n' "$label" "$a" "$b" "$(ratio "$a" "$b")" "$unit" \
            "$ac" "$bc" "$(ratio "$ac" "$bc")"
    fi
}

# header: the column names compare() prints under.
header() {
    [[ -n "${JSON:-}" ]] || printf '%-40s %9s %9s %7s  %-8s %8s %8s %7s\n' \
        measure sallyport sshd ratio unit "sp cpu" "sshd cpu" "ratio" \
        "" "" "" "" "" "ms/run" "ms/run" "(<1: sp cheaper)"
}
