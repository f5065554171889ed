#!/bin/bash
# Wakeups of an idle agent: a coordinator and an agent on loopback (no session), then the
# agent process's context switches (voluntary + involuntary, every thread, from /proc) over
# SECONDS, per second. Each is the agent being woken and run (a timer, a packet).
#
#   cargo build --release -p mesh-cli && scripts/idle-wakeups.sh target/release/mesh 60
set -euo pipefail
mesh=$(realpath "${1:?usage: idle-wakeups.sh MESH_BINARY [SECONDS]}")
secs=${2:-60}
dir=$(mktemp -d /tmp/mesh-idle-XXXXXX)
cleanup() {
    [ -n "${agent:-}" ] && kill "$agent" 2>/dev/null || true
    [ -n "${coordinator:-}" ] && kill "$coordinator" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT
cd "$dir"
port=$((20000 + RANDOM % 10000))
"$mesh" --home c coordinator init --addr "127.0.0.1:$port" > admin.token 2>/dev/null
"$mesh" --home c coordinator serve > c.log 2>&1 &
coordinator=$!
sleep 1
"$mesh" --home u login - < admin.token > /dev/null 2>&1
"$mesh" --home u invite host --name idle-host 2>/dev/null > host.token
"$mesh" --home h node join - < host.token > /dev/null 2>&1
printf 'listen = "127.0.0.1:0"\n' > h/config.toml
"$mesh" --home h node run > h.log 2>&1 &
agent=$!
# Let it connect, check its NAT and settle.
sleep 5
count() {
    local total=0 v n
    for f in /proc/"$agent"/task/*/status; do
        v=$(awk '/^voluntary_ctxt_switches/ {print $2}' "$f")
        n=$(awk '/^nonvoluntary_ctxt_switches/ {print $2}' "$f")
        total=$((total + v + n))
    done
    echo "$total"
}
before=$(count)
sleep "$secs"
after=$(count)
awk -v d=$((after - before)) -v s="$secs" \
    'BEGIN { printf "idle agent: %d wakeups in %d s = %.2f a second\n", d, s, d / s }'
