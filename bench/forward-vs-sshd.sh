#!/usr/bin/env bash
# Bulk throughput through `ssh -L` and `ssh -J`: sallyport vs OpenSSH sshd on
# the same machine in one run, for aes128-gcm and chacha20-poly1305, printed
# as MiB/s and as the ratio sallyport/sshd (goal: >= 1.0).
#
#   bench/forward-vs-sshd.sh [MiB]          (default 512 MiB per transfer)
#
# Needs: a built sallyport (SALLYPORT_BIN, default target/release/sallyport,
# else target/debug), OpenSSH ssh/sshd/ssh-keygen, python3. Runs as root (sshd)
# in a temp dir; everything listens on 127.0.0.1 free ports; all children are
# killed on exit.
#
# Measure an optimised binary (cargo build --release, or the dev profile with
# CARGO_PROFILE_DEV_OPT_LEVEL=2): the dev profile builds sallyport itself at
# opt-level 0, and russh's generic channel I/O monomorphised into it then
# runs ~4x slower (-L: ~40 MiB/s vs ~160-250 MiB/s measured).
#
# -J uses ProxyCommand="ssh -W %h:%p bastion" (what -J expands to) so the
# cipher can be set on the jump hop too.
#
# -L: ssh -L lport:sink:port bastion, then a client pushes N MiB into lport;
#     the sink counts and acknowledges (so the time covers delivery).
# -J: ssh -J bastion target 'cat > /dev/null' with N MiB on stdin; the target
#     is a real sshd; the jump hop is sallyport or sshd.
set -euo pipefail

MIB=${1:-512}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TDIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=${SALLYPORT_BIN:-}
if [[ -z "$BIN" ]]; then
  if [[ -x "$TDIR/release/sallyport" ]]; then BIN=$TDIR/release/sallyport; else BIN=$TDIR/debug/sallyport; fi
fi
[[ -x "$BIN" ]] || { echo "no sallyport binary at $BIN (cargo build --release)" >&2; exit 2; }

W=$(mktemp -d /tmp/sallyport-bench.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; [[ -n "${KEEP:-}" ]] || rm -rf "$W"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 600); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; return 1; }

# --- sink: counts bytes until EOF, answers the count --------------------------
SINK_PORT=$(free_port)
cat > "$W/sink.py" <<'PY'
import socket, sys, threading
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("127.0.0.1", int(sys.argv[1]))); l.listen(64)
def serve(c):
    n = 0
    while True:
        b = c.recv(1 << 20)
        if not b: break
        n += len(b)
    c.sendall(str(n).encode()); c.close()
while True:
    c, _ = l.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
PY
python3 "$W/sink.py" "$SINK_PORT" & PIDS+=($!)

# push N MiB into a port, wait for the sink's acknowledgement; prints MiB/s.
cat > "$W/push.py" <<'PY'
import socket, sys, time
port, mib = int(sys.argv[1]), int(sys.argv[2])
buf = b"\0" * (1 << 20)
for _ in range(100):
    try:
        s = socket.create_connection(("127.0.0.1", port)); break
    except OSError: time.sleep(0.05)
t = time.monotonic()
for _ in range(mib): s.sendall(buf)
s.shutdown(socket.SHUT_WR)
ack = s.recv(64)
dt = time.monotonic() - t
assert int(ack) == mib << 20, f"sink got {ack!r}"
print(f"{mib / dt:.0f}")
PY

# --- keys, CA, sallyport ------------------------------------------------------
ssh-keygen -q -t ed25519 -N '' -f "$W/id" -C bench
SP_PORT=$(free_port); API_PORT=$(free_port); SSHD_PORT=$(free_port)
mkdir -p "$W/policies"
cat > "$W/policies/bench.toml" <<TOML
[[role]]
name = "bench"
[role.match]
issuer = ["local"]
[role.grant]
shell = true
exec = true
port_forwarding = true
[role.forward]
allow = ["sink:$SINK_PORT", "target:$SSHD_PORT"]
TOML
cat > "$W/sallyport.toml" <<TOML
data_dir = "$W/data"
[ssh]
listen = "127.0.0.1:$SP_PORT"
[api]
listen = "127.0.0.1:$API_PORT"
[policy]
dir = "$W/policies"
[targets]
sink = "127.0.0.1:$SINK_PORT"
target = "127.0.0.1:$SSHD_PORT"
TOML
"$BIN" --config "$W/sallyport.toml" --log warn serve >"$W/sallyport.log" 2>&1 & PIDS+=($!)
wait_port "$SP_PORT"
"$BIN" --config "$W/sallyport.toml" ca sign --public-key "$W/id.pub" --principal bench --principal root \
  --identity bench --permit-port-forwarding --ttl 1h >/dev/null
"$BIN" --config "$W/sallyport.toml" ca show --json > "$W/ca.json"
python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["user_ca"])' "$W/ca.json" > "$W/user_ca.pub"
python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["known_hosts"])' "$W/ca.json" > "$W/known_hosts"

# --- OpenSSH sshd: the baseline bastion and the -J target ---------------------
mkdir -p /run/sshd
ssh-keygen -q -t ed25519 -N '' -f "$W/host_key"
cat > "$W/sshd_config" <<CFG
Port $SSHD_PORT
ListenAddress 127.0.0.1
HostKey $W/host_key
TrustedUserCAKeys $W/user_ca.pub
AuthorizedKeysFile none
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
AllowTcpForwarding yes
PidFile $W/sshd.pid
CFG
/usr/sbin/sshd -D -e -f "$W/sshd_config" 2>"$W/sshd.log" & PIDS+=($!)
wait_port "$SSHD_PORT"
echo "[127.0.0.1]:$SSHD_PORT $(cut -d' ' -f1,2 "$W/host_key.pub")" >> "$W/known_hosts"
echo "[target]:$SSHD_PORT $(cut -d' ' -f1,2 "$W/host_key.pub")" >> "$W/known_hosts"

cat > "$W/ssh_config" <<CFG
Host sallyport
  HostName 127.0.0.1
  Port $SP_PORT
  User bench
Host sshd
  HostName 127.0.0.1
  Port $SSHD_PORT
  User root
Host target
  HostName target
  Port $SSHD_PORT
  User root
Host target-ip
  HostName 127.0.0.1
  Port $SSHD_PORT
  User root
Host *
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

bench_L() { # via cipher -> MiB/s
  local via=$1 cipher=$2 lport
  lport=$(free_port)
  local fwd="$lport:sink:$SINK_PORT"
  [[ "$via" == sshd ]] && fwd="$lport:127.0.0.1:$SINK_PORT"
  ssh -F "$W/ssh_config" -c "$cipher" -N -o ExitOnForwardFailure=yes -L "$fwd" "$via" & local pid=$!
  wait_port "$lport"
  python3 "$W/push.py" "$lport" "$MIB"
  kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
}

bench_J() { # via cipher -> MiB/s
  # sallyport resolves the named target "target"; sshd gets the address.
  local via=$1 cipher=$2 dest=target t0 t1
  [[ "$via" == sshd ]] && dest=target-ip
  t0=$(date +%s.%N)
  head -c "$((MIB << 20))" /dev/zero | ssh -F "$W/ssh_config" -c "$cipher" \
    -o "ProxyCommand=ssh -F $W/ssh_config -c $cipher -W %h:%p $via" "$dest" 'cat > /dev/null'
  t1=$(date +%s.%N)
  python3 -c "print(f'{$MIB / ($t1 - $t0):.0f}')"
}

printf '%-6s %-30s %12s %12s %8s\n' mode cipher "sallyport" "sshd" ratio
for cipher in aes128-gcm@openssh.com chacha20-poly1305@openssh.com; do
  for mode in L J; do
    sp=$(bench_$mode sallyport "$cipher")
    os=$(bench_$mode sshd "$cipher")
    ratio=$(python3 -c "print(f'{$sp / $os:.2f}')")
    printf '%-6s %-30s %9s MiB/s %6s MiB/s %7sx\n' "-$mode" "$cipher" "$sp" "$os" "$ratio"
  done
done
