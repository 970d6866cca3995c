#!/usr/bin/env bash
# Shell output throughput through sallyport with masking on (recorded, all
# detectors, live) vs a nearly-off policy (recorded, one detector: policy
# cannot switch masking off, an empty list means all) vs OpenSSH sshd
# (unrecorded, unmasked: the baseline of the issue's >= 0.9 goal). Output of `head -c N /dev/zero | base64` (terminal-like
# text) and of a secret-dense text, sent to /dev/null on the client. Not a
# test; prints a table. Needs root (sshd, a bench user).
#
#   bench/masking.sh                # 200 MB
#   MB=50 bench/masking.sh
#   SALLYPORT=target/release/sallyport bench/masking.sh   # skip the build
#   RUNS=3 bench/masking.sh         # best of 3 per cell (a shared machine is noisy)
#
# The build honours CARGO_TARGET_DIR. Figures are wall-clock: the load
# average is printed with them, since a busy machine lowers every column.
set -euo pipefail
shopt -s inherit_errexit

MB=${MB:-200}
RUNS=${RUNS:-1}
CIPHER=${CIPHER:-aes128-gcm@openssh.com}
ROOT=$(cd "$(dirname "$0")/.." && pwd)

if [[ -z "${SALLYPORT:-}" ]]; then
    (cd "$ROOT" && cargo build --release --bin sallyport >&2)
    SALLYPORT="${CARGO_TARGET_DIR:-$ROOT/target}/release/sallyport"
fi

T=$(mktemp -d)
chmod 755 "$T"
PIDS=()
CREATED_USER=
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    if [[ -n "$CREATED_USER" ]]; then userdel "$CREATED_USER" 2>/dev/null || true; fi
    rm -rf "$T"
}
trap cleanup EXIT
[[ -n "${KEEP:-}" ]] && trap - EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 not up" >&2; exit 1; }

if [[ -n "${BENCH_USER:-}" ]]; then
    USER_NAME=$BENCH_USER
else
    USER_NAME="spmask$$"
    mkdir -m 755 "$T/home"
    useradd --system --shell /bin/sh --home-dir "$T/home" --no-create-home -p '*' "$USER_NAME"
    CREATED_USER=$USER_NAME
fi

# Secret-dense input: every line has a secret (the worst case for masking).
python3 - "$T/dense.txt" <<'PY'
import sys
lines = [
    "export AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE\n",
    "GITHUB_TOKEN=ghp_a1B2a1B2a1B2a1B2a1B2a1B2a1B2a1B2a1B2\n",
    "DATABASE_URL=postgres://app:s3cr3tpw@db.prod:5432/app\n",
    "drwxr-xr-x  2 alice alice  4096 Nov 28 17:46 src\n",
]
with open(sys.argv[1], "w") as f:
    for i in range(20000):
        f.write(lines[i % len(lines)])
PY
chmod 644 "$T/dense.txt"

start_sallyport() { # name policy-mask-section; sets PORT (no $(...): the
    # server would keep the substitution's pipe open)
    local name=$1 mask=$2 port
    port=$(free_port)
    mkdir -p "$T/$name/policies"
    cat > "$T/$name/policies/bench.toml" <<TOML
[[role]]
name = "bench"
[role.match]
issuer = ["local"]
[role.grant]
principals = ["{subject}"]
shell = true
exec = true
[role.mask]
$mask
[role.exec]
allow = ["*"]
TOML
    cat > "$T/$name/sallyport.toml" <<TOML
data_dir = "$T/$name/data"
[ssh]
listen = "127.0.0.1:$port"
per_source_per_minute = 100000
run_as = "$USER_NAME"
shell = "/bin/sh"
[api]
listen = "off"
[policy]
dir = "$T/$name/policies"
TOML
    "$SALLYPORT" --config "$T/$name/sallyport.toml" --log warn serve > /dev/null 2> "$T/$name.log" &
    PIDS+=($!)
    wait_port "$port"
    PORT=$port
}

start_sallyport on 'live = true
detectors = ["all"]'
ON_PORT=$PORT
# Masking "off" as far as policy allows: one detector whose keywords
# (sk_live_, rk_live_, ...) never occur in this output.
start_sallyport off 'live = true
detectors = ["stripe"]'
OFF_PORT=$PORT

ssh-keygen -q -t ed25519 -N "" -f "$T/id" -C bench
# Both servers need the same CA to trust one key: sign with each.
"$SALLYPORT" --config "$T/on/sallyport.toml" ca sign --public-key "$T/id.pub" \
    --principal "$USER_NAME" --identity bench --ttl 2h > /dev/null
cp "$T/id-cert.pub" "$T/id-on-cert.pub"
"$SALLYPORT" --config "$T/off/sallyport.toml" ca sign --public-key "$T/id.pub" \
    --principal "$USER_NAME" --identity bench --ttl 2h > /dev/null
cp "$T/id-cert.pub" "$T/id-off-cert.pub"
for n in on off; do
    "$SALLYPORT" --config "$T/$n/sallyport.toml" ca show --json \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["known_hosts"])' >> "$T/known_hosts"
done
"$SALLYPORT" --config "$T/on/sallyport.toml" ca show --json \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["user_ca"])' > "$T/user_ca.pub"

SSHD_PORT=$(free_port)
mkdir -p /run/sshd
cat > "$T/sshd_config" <<CFG
Port $SSHD_PORT
ListenAddress 127.0.0.1
HostKey $T/on/data/keys/ssh_host_ed25519_key
HostCertificate $T/on/data/keys/ssh_host_ed25519_key-cert.pub
TrustedUserCAKeys $T/user_ca.pub
AuthorizedKeysFile none
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitRootLogin yes
PidFile $T/sshd.pid
LogLevel ERROR
CFG
/usr/sbin/sshd -f "$T/sshd_config" -D -e 2> "$T/sshd.log" &
PIDS+=($!)
wait_port "$SSHD_PORT"

ssh_to() { # port cert command...
    local port=$1 cert=$2
    shift 2
    ssh -F /dev/null -o UserKnownHostsFile="$T/known_hosts" -o StrictHostKeyChecking=yes \
        -o BatchMode=yes -o IdentitiesOnly=yes -i "$T/id" -o CertificateFile="$cert" \
        -o LogLevel=ERROR -l "$USER_NAME" -c "$CIPHER" -p "$port" 127.0.0.1 "$@"
}

now() { date +%s.%N; }

rate() { # port cert remote-command MB-of-output -> MB/s (wall clock of the whole ssh)
    local port=$1 cert=$2 cmd=$3 mb=$4 t0 t1
    t0=$(now)
    ssh_to "$port" "$cert" "$cmd" > /dev/null
    t1=$(now)
    python3 -c "print(f'{$mb / ($t1 - $t0):.1f}')"
}

best_rate() { # like rate, the best of RUNS
    local best=0 r
    for _ in $(seq "$RUNS"); do
        r=$(rate "$@")
        best=$(python3 -c "print(max($best, $r))")
    done
    echo "$best"
}

# base64 of N MB is 4/3 N MB of output (plus newlines).
B64="head -c $((MB * 1024 * 1024)) /dev/zero | base64"
B64_MB=$(python3 -c "print(round($MB * 4 / 3 * 77 / 76, 1))")
DENSE="for i in \$(seq 20); do cat $T/dense.txt; done"
DENSE_MB=$(python3 -c "import os; print(round(20 * os.path.getsize('$T/dense.txt') / 1048576, 1))")

printf '%-40s %10s %10s %10s %8s %8s\n' "output, MB/s" "all det." "1 det." "sshd" "all/1" "all/sshd"
for what in b64 dense; do
    if [[ $what == b64 ]]; then cmd=$B64; mb=$B64_MB; label="base64 of $MB MB zeros ($mb MB)"; else cmd=$DENSE; mb=$DENSE_MB; label="secret-dense text ($mb MB)"; fi
    rate "$ON_PORT" "$T/id-on-cert.pub" "$cmd" "$mb" > /dev/null # warm up
    on=$(best_rate "$ON_PORT" "$T/id-on-cert.pub" "$cmd" "$mb")
    off=$(best_rate "$OFF_PORT" "$T/id-off-cert.pub" "$cmd" "$mb")
    sshd=$(best_rate "$SSHD_PORT" "$T/id-on-cert.pub" "$cmd" "$mb")
    printf '%-40s %10s %10s %10s %8s %8s\n' "$label" "$on" "$off" "$sshd" \
        "$(python3 -c "print(f'{$on / $off:.2f}')")" "$(python3 -c "print(f'{$on / $sshd:.2f}')")"
done
echo "(best of $RUNS; load average now: $(cut -d' ' -f1-3 /proc/loadavg))"
