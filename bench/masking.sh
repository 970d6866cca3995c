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
source "$(dirname "$0")/lib.sh"

MB=${MB:-200}
RUNS=${RUNS:-1}
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
ON_CONF=$SP_CONF
sp_cert
cp "$W/id-cert.pub" "$W/id-on-cert.pub"
# Masking "off" as far as policy allows: one detector whose keywords
# (sk_live_, rk_live_, ...) never occur in this output.
sp_start off "$(policy 'live = true
detectors = ["stripe"]')"
OFF_PORT=$SP_PORT
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
DENSE="for i in \$(seq 20); do cat $W/dense.txt; done"
DENSE_MB=$(python3 -c "import os; print(round(20 * os.path.getsize('$W/dense.txt') / 1048576, 1))")

printf '%-40s %10s %10s %10s %8s %8s\n' "output, MB/s" "all det." "1 det." "sshd" "all/1" "all/sshd"
for what in b64 dense; do
    if [[ $what == b64 ]]; then cmd=$B64; mb=$B64_MB; label="base64 of $MB MB zeros ($mb MB)"; else cmd=$DENSE; mb=$DENSE_MB; label="secret-dense text ($mb MB)"; fi
    rate "$ON_PORT" "$W/id-on-cert.pub" "$cmd" "$mb" > /dev/null # warm up
    on=$(best_rate "$ON_PORT" "$W/id-on-cert.pub" "$cmd" "$mb")
    off=$(best_rate "$OFF_PORT" "$W/id-off-cert.pub" "$cmd" "$mb")
    sshd=$(best_rate "$SSHD_PORT" "$W/id-on-cert.pub" "$cmd" "$mb")
    printf '%-40s %10s %10s %10s %8s %8s\n' "$label" "$on" "$off" "$sshd" \
        "$(python3 -c "print(f'{$on / $off:.2f}')")" "$(python3 -c "print(f'{$on / $sshd:.2f}')")"
done
echo "(best of $RUNS; load average now: $(cut -d' ' -f1-3 /proc/loadavg))"
