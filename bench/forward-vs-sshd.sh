#!/usr/bin/env bash
# Bulk throughput through `ssh -L` and `ssh -J`: sallyport vs OpenSSH sshd as
# the bastion, on the same machine in one run, for aes128-gcm and
# chacha20-poly1305. Prints MiB/s (median of REPS interleaved runs each) and
# the ratio sallyport/sshd (goal: >= 1.0). Not a test. Needs root (sshd and
# a throwaway bench user); everything listens on 127.0.0.1 free ports.
#
#   bench/forward-vs-sshd.sh                 # 512 MiB per transfer, 5 reps
#   MIB=128 REPS=3 bench/forward-vs-sshd.sh
#   SALLYPORT=/path/to/sallyport JSON=1 bench/forward-vs-sshd.sh
#
# -L: ssh -L lport:sink:port BASTION, then a client pushes MIB into lport;
#     the sink counts and acknowledges, so the time covers delivery.
# -J: ssh -J BASTION target 'cat > /dev/null' with MIB on stdin; the target
#     is a real sshd. ProxyCommand="ssh -W %h:%p BASTION" is what -J expands
#     to, spelled out so the cipher applies to the jump hop too.
source "$(dirname "$0")/lib.sh"

MIB=${MIB:-${1:-512}}
REPS=${REPS:-5}
CIPHERS=${CIPHERS:-"aes128-gcm@openssh.com chacha20-poly1305@openssh.com"}

bench_init
bench_user spfwd

# --- sink: counts bytes until EOF, answers the count -------------------------
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
python3 "$W/sink.py" "$SINK_PORT" &
PIDS+=($!)

# push MIB into a port, wait for the sink's acknowledgement; prints MiB/s.
cat > "$W/push.py" <<'PY'
import socket, sys, time
port, mib = int(sys.argv[1]), int(sys.argv[2])
buf = b"\0" * (1 << 20)
for _ in range(200):
    try:
        s = socket.create_connection(("127.0.0.1", port)); break
    except OSError: time.sleep(0.05)
t = time.monotonic()
for _ in range(mib): s.sendall(buf)
s.shutdown(socket.SHUT_WR)
ack = s.recv(64)
dt = time.monotonic() - t
assert int(ack) == mib << 20, f"sink got {ack!r}"
print(f"{mib / dt:.1f}")
PY

# sallyport must be up before sshd (sshd trusts its user CA), and its
# [targets] name sshd's port: reserve that port first.
SSHD_PORT_WANTED=$(free_port)
sp_start sp "$(cat <<TOML
[[role]]
name = "bench"
[role.match]
issuer = ["local"]
[role.grant]
principals = ["$BUSER"]
shell = true
exec = true
port_forwarding = true
[role.forward]
allow = ["sink:$SINK_PORT", "target:$SSHD_PORT_WANTED"]
TOML
)" "$(printf '[targets]\nsink = "127.0.0.1:%s"\ntarget = "127.0.0.1:%s"' "$SINK_PORT" "$SSHD_PORT_WANTED")"
sp_cert
# Two sshd: the -J target, and the baseline bastion (a separate process, so
# each bastion's CPU time is its own).
sshd_start "$SSHD_PORT_WANTED"
TARGET_PORT=$SSHD_PORT
sshd_start
ssh_conf "$TARGET_PORT"

run_L() { # cipher via -> MiB/s
    local cipher=$1 via=$2 lport pid fwd
    lport=$(free_port)
    fwd="$lport:sink:$SINK_PORT"
    [[ "$via" == sshd ]] && fwd="$lport:127.0.0.1:$SINK_PORT"
    ssh -F "$W/ssh_config" -c "$cipher" -N -o ExitOnForwardFailure=yes -L "$fwd" "$via" &
    pid=$!
    wait_port "$lport"
    python3 "$W/push.py" "$lport" "$MIB"
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

run_J() { # cipher via -> MiB/s
    # sallyport resolves the named target "target"; sshd gets the address.
    local cipher=$1 via=$2 dest=target t0 t1
    [[ "$via" == sshd ]] && dest=target-ip
    t0=$(now)
    head -c "$((MIB << 20))" /dev/zero | ssh -F "$W/ssh_config" -c "$cipher" \
        -o "ProxyCommand=ssh -F $W/ssh_config -c $cipher -W %h:%p $via" "$dest" 'cat > /dev/null'
    t1=$(now)
    python3 -c "print(f'{$MIB / ($t1 - $t0):.1f}')"
}

echo "sallyport: $SALLYPORT ($("$SALLYPORT" --version 2>/dev/null || true)); $MIB MiB per transfer, median of $REPS" >&2
header
for cipher in $CIPHERS; do
    compare "-L $cipher" "$REPS" "MiB/s" run_L "$cipher"
    compare "-J $cipher" "$REPS" "MiB/s" run_J "$cipher"
done
