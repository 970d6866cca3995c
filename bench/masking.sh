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
#   RUNS=5 bench/masking.sh         # median of 5 per cell (a shared machine is noisy)
#   VERBOSE=1 bench/masking.sh      # every run's figures too
#
# The build honours CARGO_TARGET_DIR. Throughput is wall-clock (the load
# average is printed with it, since a busy machine lowers every column);
# beside it, each bastion's CPU time per run from its cgroup (bench/lib.sh),
# which does not depend on how much of the machine the run got.
source "$(dirname "$0")/lib.sh"

MB=${MB:-200}
RUNS=${RUNS:-3}
CIPHER=${CIPHER:-aes128-gcm@openssh.com}

bench_init
bench_user spmask

# Secret-dense input: every line has a secret (the worst case for masking).
python3 - "$W/dense.txt" <<'PY'
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
chmod 644 "$W/dense.txt"

policy() { # mask-section -> the bench role's policy
    cat <<TOML
[[role]]
name = "bench"
[role.match]
issuer = ["local"]
[role.grant]
principals = ["{subject}", "$BUSER"]
shell = true
exec = true
[role.mask]
$1
[role.exec]
allow = ["*"]
TOML
}

sp_start on "$(policy 'live = true
detectors = ["all"]')"
ON_PORT=$SP_PORT
ON_PID=$SP_PID
ON_CONF=$SP_CONF
sp_cert
cp "$W/id-cert.pub" "$W/id-on-cert.pub"
# Masking "off" as far as policy allows: one detector whose keywords
# (sk_live_, rk_live_, ...) never occur in this output.
sp_start off "$(policy 'live = true
detectors = ["stripe"]')"
OFF_PORT=$SP_PORT
OFF_PID=$SP_PID
# The same key, signed by the second server's own CA.
"$SALLYPORT" --config "$SP_CONF" ca sign --public-key "$W/id.pub" \
    --principal "$BUSER" --identity bench --ttl 2h > /dev/null
cp "$W/id-cert.pub" "$W/id-off-cert.pub"
"$SALLYPORT" --config "$SP_CONF" ca show --json \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["known_hosts"])' >> "$W/known_hosts"
sshd_start

ssh_to() { # port cert command...
    local port=$1 cert=$2
    shift 2
    ssh -F /dev/null -o UserKnownHostsFile="$W/known_hosts" -o StrictHostKeyChecking=yes \
        -o BatchMode=yes -o IdentitiesOnly=yes -i "$W/id" -o CertificateFile="$cert" \
        -o LogLevel=ERROR -l "$BUSER" -c "$CIPHER" -p "$port" 127.0.0.1 "$@"
}


# rate PORT CERT CMD MB PID -> "MB/s cpu-ms": wall clock of the whole ssh,
# and the CPU the bastion PID (its cgroup: server, children, sshd's
# per-connection processes) spent on it.
rate() {
    local port=$1 cert=$2 cmd=$3 mb=$4 pid=$5 t0 t1 c0 c1
    settle "$pid"
    c0=$(cpu_ms "$pid")
    t0=$(now)
    ssh_to "$port" "$cert" "$cmd" > /dev/null
    t1=$(now)
    settle "$pid"
    c1=$(cpu_ms "$pid")
    python3 -c "print(f'{$mb / ($t1 - $t0):.1f} {$c1 - $c0}')"
}

# base64 of N MB is 4/3 N MB of output (plus newlines).
B64="head -c $((MB * 1024 * 1024)) /dev/zero | base64"
B64_MB=$(python3 -c "print(round($MB * 4 / 3 * 77 / 76, 1))")
DENSE="for i in \$(seq 20); do cat $W/dense.txt; done"
DENSE_MB=$(python3 -c "import os; print(round(20 * os.path.getsize('$W/dense.txt') / 1048576, 1))")

# Per text: RUNS rounds of (all, 1 det., sshd) interleaved, so load that
# comes and goes hits all three alike; medians of MB/s and of CPU ms.
printf '%-34s %8s %8s %8s %6s %6s | %7s %7s %7s %6s %6s\n' "output (MB/s | bastion CPU ms)" \
    "all det" "1 det" "sshd" "all/1" "all/sd" "all" "1 det" "sshd" "all/sd" "1/sd"
for what in b64 dense; do
    if [[ $what == b64 ]]; then cmd=$B64; mb=$B64_MB; label="base64 of $MB MB zeros ($mb MB)"; else cmd=$DENSE; mb=$DENSE_MB; label="secret-dense text ($mb MB)"; fi
    rate "$ON_PORT" "$W/id-on-cert.pub" "$cmd" "$mb" "$ON_PID" > /dev/null # warm up
    on=() off=() sd=() onc=() offc=() sdc=()
    for _ in $(seq "$RUNS"); do
        read -r v c < <(rate "$ON_PORT" "$W/id-on-cert.pub" "$cmd" "$mb" "$ON_PID"); on+=("$v"); onc+=("$c")
        read -r v c < <(rate "$OFF_PORT" "$W/id-off-cert.pub" "$cmd" "$mb" "$OFF_PID"); off+=("$v"); offc+=("$c")
        read -r v c < <(rate "$SSHD_PORT" "$W/id-on-cert.pub" "$cmd" "$mb" "$SSHD_PID"); sd+=("$v"); sdc+=("$c")
    done
    a=$(median "${on[@]}") b=$(median "${off[@]}") d=$(median "${sd[@]}")
    ac=$(median "${onc[@]}") bc=$(median "${offc[@]}") dc=$(median "${sdc[@]}")
    printf '%-34s %8s %8s %8s %6s %6s | %7s %7s %7s %6s %6s\n' "$label" "$a" "$b" "$d" \
        "$(ratio "$a" "$b")" "$(ratio "$a" "$d")" "$ac" "$bc" "$dc" "$(ratio "$ac" "$dc")" "$(ratio "$bc" "$dc")"
    if [[ -n "${VERBOSE:-}" ]]; then
        echo "  all: ${on[*]} / ${onc[*]} ms"
        echo "  1 det: ${off[*]} / ${offc[*]} ms"
        echo "  sshd: ${sd[*]} / ${sdc[*]} ms"
    fi
done
echo "(median of $RUNS; CPU: lower is better, all/sd < 1 means sallyport is cheaper; load average now: $(cut -d' ' -f1-3 /proc/loadavg))"
