#!/usr/bin/env bash
# Throughput and connection-setup time: sallyport vs OpenSSH sshd, on the
# same machine, with the same client, certificate and ciphers. Not a test;
# prints a table. Needs root (sshd), /usr/sbin/sshd, ssh, ssh-keygen.
#
#   bench/ssh-vs-sshd.sh            # 200 MB, 20 setup runs
#   MB=50 RUNS=5 bench/ssh-vs-sshd.sh
#   SALLYPORT=target/release/sallyport bench/ssh-vs-sshd.sh   # skip the build
set -euo pipefail
shopt -s inherit_errexit

MB=${MB:-200}
RUNS=${RUNS:-20}
CIPHERS=${CIPHERS:-"aes128-gcm@openssh.com chacha20-poly1305@openssh.com"}
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

SP_PORT=$(free_port)
SSHD_PORT=$(free_port)
# Both servers log in the same account with /bin/sh, so neither pays for a
# heavy ~/.bashrc (sshd's bash sources it for remote commands; ours does not).
if [[ -n "${BENCH_USER:-}" ]]; then
    USER_NAME=$BENCH_USER
else
    USER_NAME="spbench$$"
    # Password "*" (no password login) rather than "!" (locked: sshd refuses it).
    mkdir -m 755 "$T/home"
    useradd --system --shell /bin/sh --home-dir "$T/home" --no-create-home -p '*' "$USER_NAME"
    CREATED_USER=$USER_NAME
fi

# --- sallyport -------------------------------------------------------------
cat > "$T/sallyport.toml" <<TOML
data_dir = "$T/sp"
[ssh]
listen = "127.0.0.1:$SP_PORT"
per_source_per_minute = 100000
run_as = "$USER_NAME"
shell = "/bin/sh"
[api]
listen = "off"
TOML
"$SALLYPORT" --config "$T/sallyport.toml" --log warn serve 2> "$T/sallyport.log" &
PIDS+=($!)
wait_port "$SP_PORT"

ssh-keygen -q -t ed25519 -N "" -f "$T/id" -C bench
"$SALLYPORT" --config "$T/sallyport.toml" ca sign --public-key "$T/id.pub" \
    --principal "$USER_NAME" --identity bench --ttl 2h > /dev/null
"$SALLYPORT" --config "$T/sallyport.toml" ca show --json \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["known_hosts"])' > "$T/known_hosts"
"$SALLYPORT" --config "$T/sallyport.toml" ca show --json \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["user_ca"])' > "$T/user_ca.pub"

# --- sshd, trusting the same user CA and serving the same host cert --------
mkdir -p /run/sshd
cat > "$T/sshd_config" <<CFG
Port $SSHD_PORT
ListenAddress 127.0.0.1
HostKey $T/sp/keys/ssh_host_ed25519_key
HostCertificate $T/sp/keys/ssh_host_ed25519_key-cert.pub
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

SSH=(ssh -F /dev/null -o UserKnownHostsFile="$T/known_hosts" -o StrictHostKeyChecking=yes
     -o BatchMode=yes -o IdentitiesOnly=yes -i "$T/id" -o CertificateFile="$T/id-cert.pub"
     -o LogLevel=ERROR -l "$USER_NAME")

now() { date +%s.%N; }

throughput() { # port cipher -> MB/s, wall clock of the whole `ssh` (setup included)
    local port=$1 cipher=$2 t0 t1
    t0=$(now)
    head -c "$((MB * 1024 * 1024))" /dev/zero | "${SSH[@]}" -p "$port" -c "$cipher" 127.0.0.1 'cat > /dev/null'
    t1=$(now)
    python3 -c "print(f'{$MB / ($t1 - $t0):.1f}')"
}

setup() { # port -> mean ms of `ssh HOST true`
    local port=$1 t0 t1
    "${SSH[@]}" -p "$port" 127.0.0.1 true # warm up
    t0=$(now)
    for _ in $(seq "$RUNS"); do "${SSH[@]}" -p "$port" 127.0.0.1 true; done
    t1=$(now)
    python3 -c "print(f'{($t1 - $t0) * 1000 / $RUNS:.1f}')"
}

printf '%-44s %12s %12s %8s\n' "measure" "sallyport" "sshd" "ratio"
for c in $CIPHERS; do
    a=$(throughput "$SP_PORT" "$c")
    b=$(throughput "$SSHD_PORT" "$c")
    printf '%-44s %12s %12s %8s\n' "$MB MB stdin->cat, MB/s ($c)" "$a" "$b" \
        "$(python3 -c "print(f'{$a / $b:.2f}')")"
done
a=$(setup "$SP_PORT")
b=$(setup "$SSHD_PORT")
printf '%-44s %12s %12s %8s\n' "ssh HOST true, ms (mean of $RUNS)" "$a" "$b" \
    "$(python3 -c "print(f'{$a / $b:.2f}')")"
