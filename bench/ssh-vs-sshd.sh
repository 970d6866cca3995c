#!/usr/bin/env bash
# Session throughput and connection-setup time: sallyport vs OpenSSH sshd on
# the same machine in one run, same client, certificate and ciphers. Each
# figure is the median of REPS interleaved runs. Not a test; prints a table
# (JSON=1: one JSON object per row). Needs root (sshd, a throwaway user).
#
#   bench/ssh-vs-sshd.sh                       # 200 MB, 5 reps, 20 setups
#   MB=50 REPS=3 RUNS=5 bench/ssh-vs-sshd.sh
#   SALLYPORT=target/release/sallyport bench/ssh-vs-sshd.sh   # skip the build
#
# Throughput: `head -c MB | ssh HOST 'cat > /dev/null'`, wall clock of the
# whole ssh (setup included). sallyport records the session (asciicast) and
# audits it; sshd does neither. Setup: mean ms of RUNS x `ssh HOST true`
# (lower is better, so a ratio below 1 means sallyport is faster).
source "$(dirname "$0")/lib.sh"

MB=${MB:-200}
REPS=${REPS:-5}
RUNS=${RUNS:-20}
CIPHERS=${CIPHERS:-"aes128-gcm@openssh.com chacha20-poly1305@openssh.com"}

bench_init
bench_user spbench
sp_start sp "$(cat <<TOML
[[role]]
name = "bench"
[role.match]
issuer = ["local"]
[role.grant]
principals = ["$BUSER"]
shell = true
exec = true
[role.exec]
allow = ["*"]
TOML
)"
sp_cert
sshd_start
ssh_conf

throughput() { # cipher via -> MB/s
    local cipher=$1 via=$2 t0 t1
    t0=$(now)
    head -c "$((MB * 1024 * 1024))" /dev/zero | ssh -F "$W/ssh_config" -c "$cipher" "$via" 'cat > /dev/null'
    t1=$(now)
    python3 -c "print(f'{$MB / ($t1 - $t0):.1f}')"
}

setup() { # via -> mean ms of `ssh HOST true`
    local via=$1 t0 t1
    t0=$(now)
    for _ in $(seq "$RUNS"); do ssh -F "$W/ssh_config" "$via" true; done
    t1=$(now)
    python3 -c "print(f'{($t1 - $t0) * 1000 / $RUNS:.1f}')"
}

ssh -F "$W/ssh_config" sallyport true # warm up both
ssh -F "$W/ssh_config" sshd true
echo "sallyport: $SALLYPORT; $MB MB per transfer, median of $REPS" >&2
header
for c in $CIPHERS; do
    compare "$MB MB stdin->cat ($c)" "$REPS" "MB/s" throughput "$c"
done
compare "ssh HOST true (mean of $RUNS)" "$REPS" "ms, lower is better" setup
