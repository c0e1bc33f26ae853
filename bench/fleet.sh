#!/usr/bin/env bash
# A fleet of three switchyard instances on one real etcd (Debian's etcd-server, installed when
# missing), two backends: how fast a switch made through one instance serves on all of them
# (propagation), and what happens when the leader is killed mid-rollout under load (failover).
# The measuring is bench/fleet.py's; this script starts and stops everything else.
#
#   bench/fleet.sh                                   # N=300 switches, R=5 failover rounds
#   N=200 R=3 bench/fleet.sh
#   TTL=5s SWITCHYARD=/path/to/switchyard bench/fleet.sh
#
# A bench script reports, it does not assert: it exits non-zero only when the run broke (a
# process did not start, an instance never served a switch, no leader was elected).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-300}
R=${R:-5}
TTL=${TTL:-2s}

if [ ! -x /usr/bin/etcd ]; then
  echo "installing etcd-server from Debian"
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq etcd-server >/dev/null
fi

BIN=${SWITCHYARD:-target/release/switchyard}
if [ ! -x "$BIN" ]; then
  [ -n "${SWITCHYARD:-}" ] && { echo "SWITCHYARD=$BIN is not an executable"; exit 1; }
  cargo build --release -q
fi
BIN=$(realpath "$BIN")

. bench/lib.sh
WORK=$(mktemp -d)
pids=()
# fleet.py kills the instances it started; the trap ends it (and etcd, the backends) first.
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap "exit 130" INT
trap "exit 143" TERM

# etcd on free ports with a temporary data dir, as tests/common/etcd.rs starts it.
ETCD_CLIENT=$(port); ETCD_PEER=$(port)
/usr/bin/etcd --name bench --data-dir "$WORK/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_CLIENT" --advertise-client-urls "http://127.0.0.1:$ETCD_CLIENT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER" \
  --initial-cluster "bench=http://127.0.0.1:$ETCD_PEER" >"$WORK/etcd.log" 2>&1 & pids+=($!)
for _ in $(seq 200); do curl -fs -o /dev/null "http://127.0.0.1:$ETCD_CLIENT/health" && break; sleep 0.1; done
curl -fs -o /dev/null "http://127.0.0.1:$ETCD_CLIENT/health" || { echo "etcd did not start:"; tail -n 20 "$WORK/etcd.log"; exit 1; }

B1=$(port); B2=$(port)
"$BIN" backend --workers 1 --bind "127.0.0.1:$B1" --name blue >/dev/null 2>&1 & pids+=($!)
"$BIN" backend --workers 1 --bind "127.0.0.1:$B2" --name green >/dev/null 2>&1 & pids+=($!)

# One file per instance: the shared part (service shop, groups blue/green, the token) is the
# same in all; the store's endpoint and prefix too; the instance's name, listener and admin
# address are its own.
instances=()
for i in 0 1 2; do
  WEB=$(port); ADMIN=$(port)
  cat > "$WORK/lb-$i.toml" <<CONF
[admin]
bind = "127.0.0.1:$ADMIN"
token = "bench"
[store]
kind = "etcd"
endpoints = ["http://127.0.0.1:$ETCD_CLIENT"]
prefix = "/switchyard/bench"
lease_ttl = "$TTL"
[instance]
name = "lb-$i"
listen = { web = "127.0.0.1:$WEB" }
[[listener]]
name = "web"
bind = "127.0.0.1:$WEB"
[[route]]
name = "all"
priority = 1
forward = "shop"
[[service]]
name = "shop"
active = "blue"
[[service.group]]
name = "blue"
targets = ["127.0.0.1:$B1"]
[[service.group]]
name = "green"
targets = ["127.0.0.1:$B2"]
CONF
  instances+=("lb-$i:$WORK/lb-$i.toml:$WEB:$ADMIN")
done

echo "switchyard $BIN; etcd $(/usr/bin/etcd --version | head -n 1 | sed 's/.*: //') on 127.0.0.1:$ETCD_CLIENT; lease_ttl $TTL"
python3 bench/fleet.py --bin "$BIN" --token bench --switches "$N" --rounds "$R" --ttl "$TTL" \
  --logs "$WORK" "${instances[@]}" & pids+=($!)
# Waited on here (not in the foreground) so that the trap can end it on ^C.
wait "${pids[-1]}"
