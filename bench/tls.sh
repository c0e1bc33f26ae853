#!/usr/bin/env bash
# TLS at the edge: switchyard against nginx and HAProxy on the same TLS settings — TLS 1.3
# only, TLS_AES_128_GCM_SHA256, X25519, ALPN h2 and http/1.1 — one worker each, the same
# per-request work as bench/run.sh (Host passed, X-Forwarded-*, a request id up and back),
# a 90/10 split over two backends. Certificates are made here with openssl: ECDSA P-256,
# RSA-2048 and RSA-3072, one listener per key type on every proxy.
#
# Per round, each proxy in turn (alternating, so drift hits all alike):
#   keepalive   wrk, CONNS connections: req/s, p99, proxy CPU µs per request   (KA_KEY)
#   full-KEY    PAR × `openssl s_time -new` (a new session every connection, nothing resumed;
#               bare handshakes, no request): handshakes/s, proxy CPU µs per handshake
#   resumed     PAR × `openssl s_time -reuse -www /` (TLS 1.3 resumption needs the ticket,
#               which comes after the handshake, so each connection also GETs /): conn/s,
#               proxy CPU µs per connection, and the share actually resumed    (KA_KEY)
#   h2-m10/m1   h2load, H2_CONNS connections with 10 / 1 streams each: req/s, CPU µs/req
# then ratios to the best of nginx/HAProxy: the median of the per-round paired ratios.
# CPU per operation (user + system of the proxy's processes, from /proc) is the figure to
# quote: s_time spends ~1 ms of CPU per connection itself, so on a 2-core host handshakes/s
# are bounded by the load generator's core (the "busy" column: the proxy's CPU share).
# Then KB per idle TLS connection (HTTP/1.1 and h2 by ALPN) in the same run, by bench/idle.sh
# (IDLE_CONNS connections, 2000 by default; IDLE_CONNS=0 skips it).
#
#   bench/tls.sh                                   # ROUNDS=3 DURATION=5
#   KEYS="ecdsa rsa2048" TESTS="full" ROUNDS=5 bench/tls.sh
#   SWITCHYARD="ring=/tmp/sy-ring aws=target/release/switchyard" bench/tls.sh   # two builds
#
# It reports and does not judge. PIN=0 lets the scheduler place everything (see lib.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
CONNS=${CONNS:-64}
H2_CONNS=${H2_CONNS:-16}
PAR=${PAR:-4}
KEYS=${KEYS:-ecdsa rsa2048 rsa3072}
KA_KEY=${KA_KEY:-ecdsa}
TESTS=${TESTS:-keepalive full resumed h2-m10 h2-m1}
SWITCHYARD=${SWITCHYARD:-target/release/switchyard}

. bench/lib.sh
need_tools nginx haproxy wrk h2load openssl

# SWITCHYARD: a binary, or "NAME=PATH ..." to compare builds (each named switchyard-NAME).
declare -A SY_BIN
SY_NAMES=()
if [[ "$SWITCHYARD" == *=* ]]; then
  for e in $SWITCHYARD; do SY_BIN[switchyard-${e%%=*}]=$(realpath "${e#*=}"); SY_NAMES+=("switchyard-${e%%=*}"); done
else
  [ -x "$SWITCHYARD" ] || cargo build --release -q
  SY_BIN[switchyard]=$(realpath "$SWITCHYARD"); SY_NAMES=(switchyard)
fi
BACKEND_BIN=${SY_BIN[${SY_NAMES[0]}]}
PROXIES=("${SY_NAMES[@]}" nginx haproxy)

WORK=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
trap "exit 130" INT
trap "exit 143" TERM

pin_setup

# Certificates: self-signed, for bench.test and 127.0.0.1 (wrk and h2load connect by IP).
for key in $KEYS $KA_KEY; do
  [ -f "$WORK/$key.pem" ] && continue
  case $key in
    ecdsa) new=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1) ;;
    rsa2048) new=(-newkey rsa:2048) ;;
    rsa3072) new=(-newkey rsa:3072) ;;
    *) echo "unknown key type $key (ecdsa, rsa2048, rsa3072)"; exit 1 ;;
  esac
  openssl req -x509 "${new[@]}" -nodes -days 30 -keyout "$WORK/$key.key" -out "$WORK/$key.pem" \
    -subj /CN=bench.test -addext subjectAltName=DNS:bench.test,IP:127.0.0.1 2>/dev/null
  cat "$WORK/$key.pem" "$WORK/$key.key" >"$WORK/$key.haproxy.pem"
done
ALL_KEYS=$(tr ' ' '\n' <<<"$KEYS $KA_KEY" | awk 'NF && !seen[$0]++' | tr '\n' ' ')

B1=$(port); B2=$(port)
${LOAD_CPU[@]} "$BACKEND_BIN" backend --workers 1 --bind 127.0.0.1:$B1 --name blue >/dev/null 2>&1 & pids+=($!)
${LOAD_CPU[@]} "$BACKEND_BIN" backend --workers 1 --bind 127.0.0.1:$B2 --name green >/dev/null 2>&1 & pids+=($!)

declare -A PORT PID
for p in "${PROXIES[@]}"; do for key in $ALL_KEYS; do PORT[$p.$key]=$(port); done; done

# switchyard: bench/run.sh's config plus one TLS listener per key type.
for name in "${SY_NAMES[@]}"; do
  mkdir -p "$WORK/$name" # its own state database beside its file
  conf="$WORK/$name/switchyard.toml"
  switchyard_config "$conf" "$(port)" "$(port)" "$B1" "$B2"
  for key in $ALL_KEYS; do
    cat >>"$conf" <<CONF
[[listener]]
name = "tls-$key"
bind = "127.0.0.1:${PORT[$name.$key]}"
tls = { min_version = "1.3", cipher_suites = ["TLS13_AES_128_GCM_SHA256"], groups = ["X25519"], alpn = ["h2", "http/1.1"] }
[[listener.certificate]]
cert = "$WORK/$key.pem"
key = "$WORK/$key.key"
CONF
  done
  SWITCHYARD_LOG=error ${PROXY_CPU[@]} "${SY_BIN[$name]}" run --workers 1 -c "$conf" >"$WORK/$name/switchyard.log" 2>&1 & pids+=($!)
  PID[$name]=$!
done

# nginx: bench/run.sh's proxying, one TLS server per key type; the default session cache
# and tickets (resumption either way).
{
  nginx_head "$WORK"
  nginx_app "$B1" "$B2"
  cat <<CONF
  ssl_protocols TLSv1.3;
  ssl_conf_command Ciphersuites TLS_AES_128_GCM_SHA256;
  ssl_ecdh_curve X25519;
  ssl_session_cache shared:SSL:10m;
  # Its default (1000) closes a keep-alive or HTTP/2 connection after that many requests;
  # the others do not, and a new connection here is a new handshake.
  keepalive_requests 10000000;
CONF
  for key in $ALL_KEYS; do
    cat <<CONF
  server {
    listen 127.0.0.1:${PORT[nginx.$key]} ssl http2;
    ssl_certificate $WORK/$key.pem;
    ssl_certificate_key $WORK/$key.key;
    location / {
      proxy_pass http://app;
CONF
    nginx_forward
    cat <<'CONF'
      add_header X-Request-Id $request_id always;
    }
  }
CONF
  done
  echo "}"
} >"$WORK/nginx.conf"
${PROXY_CPU[@]} nginx -c "$WORK/nginx.conf" -e "$WORK/nginx/error.log" >"$WORK/nginx.log" 2>&1 & pids+=($!)
PID[nginx]=$!

# HAProxy: bench/run.sh's proxying, one bind per key type.
{
  cat <<CONF
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
frontend fe
CONF
  for key in $ALL_KEYS; do
    echo "  bind 127.0.0.1:${PORT[haproxy.$key]} ssl crt $WORK/$key.haproxy.pem alpn h2,http/1.1 ssl-min-ver TLSv1.3 ciphersuites TLS_AES_128_GCM_SHA256 curves X25519"
  done
  cat <<CONF
  option forwardfor
  http-request set-header X-Forwarded-Proto https
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
  http-request set-header X-Forwarded-Port %[dst_port]
  unique-id-format %[uuid()]
  unique-id-header X-Request-Id
  http-response set-header X-Request-Id %[unique-id]
  default_backend app
backend app
  balance roundrobin
  http-reuse always
  server blue 127.0.0.1:$B1 weight 9
  server green 127.0.0.1:$B2 weight 1
CONF
} >"$WORK/haproxy.cfg"
${PROXY_CPU[@]} haproxy -f "$WORK/haproxy.cfg" -db >"$WORK/haproxy.log" 2>&1 & pids+=($!)
PID[haproxy]=$!

# Up, and on the settings: what each proxy negotiates with each key.
for p in "${PROXIES[@]}"; do
  for key in $ALL_KEYS; do
    url="https://127.0.0.1:${PORT[$p.$key]}/"
    for _ in $(seq 100); do curl -fsk -o /dev/null "$url" && break; sleep 0.1; done
    curl -fsk -o /dev/null "$url" || {
      echo "$p did not come up on $url"; tail -n 5 "$WORK"/*.log "$WORK"/*/switchyard.log "$WORK"/nginx/error.log 2>/dev/null; exit 1
    }
    said=$(openssl s_client -connect "127.0.0.1:${PORT[$p.$key]}" -brief </dev/null 2>&1 || true)
    printf '%-20s %-8s %s\n' "$p" "$key" "$(awk -F': ' '/^Protocol version|^Ciphersuite|ignature type|^Server Temp Key/ {printf "%s  ", $2}' <<<"$said")"
  done
done

CLK_TCK=$(getconf CLK_TCK)
# CPU time (clock ticks) used so far by a process and its children (nginx's worker).
cpu_ticks() {
  local total=0 p
  for p in "$1" $(pgrep -P "$1" || true); do
    [ -r "/proc/$p/stat" ] || continue
    total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$total"
}
now() { date +%s.%N; }

# Each prints: rate (per s), p99 ms (or -), proxy CPU µs per operation, proxy CPU share,
# and a note. $1 port, $2 pid.
keepalive() {
  local before after out rps reqs p99
  before=$(cpu_ticks "$2")
  out=$(${LOAD_CPU[@]} wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "https://127.0.0.1:$1/")
  after=$(cpu_ticks "$2")
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  p99=$(awk '$1=="99%" {v=$2; if (v ~ /us$/) {sub(/us$/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /s$/) {sub(/s$/,"",v); v*=1000}; print v}' <<<"$out")
  python3 -c "print($rps, $p99, ($after - $before) * 1e6 / $CLK_TCK / $reqs, ($after - $before) / $CLK_TCK / $DURATION, '-')"
}

# s_time MODE...: PAR clients in parallel for DURATION; counts connections, and resumed
# ones ('r' in s_time's progress line; '*' is a full handshake).
s_time() {
  local port=$1 pid=$2; shift 2
  local before after t0 t1 i
  before=$(cpu_ticks "$pid"); t0=$(now)
  for i in $(seq "$PAR"); do
    ${LOAD_CPU[@]} openssl s_time -connect "127.0.0.1:$port" -ciphersuites TLS_AES_128_GCM_SHA256 \
      -time "$DURATION" "$@" >"$WORK/s_time.$i" 2>&1 &
  done
  wait # measure runs in a subshell (read < <(…)): its only children are these clients
  t1=$(now); after=$(cpu_ticks "$pid")
  python3 - "$WORK" "$PAR" "$t0" "$t1" "$before" "$after" "$CLK_TCK" <<'PY'
import re, sys
work, par, t0, t1, before, after, tck = sys.argv[1], int(sys.argv[2]), *map(float, sys.argv[3:])
conns = resumed = full = 0
for i in range(1, par + 1):
    text = open(f"{work}/s_time.{i}").read()
    m = re.findall(r"(\d+) connections in [\d.]+ real seconds", text)
    conns += int(m[-1]) if m else 0
    # The timed pass's progress line ('-reuse' first prints one full-handshake pass).
    marks = "".join(re.findall(r"^[*r]+$", text.split("starting")[-1], re.M))
    resumed += marks.count("r"); full += marks.count("*")
cpu = (after - before) / tck
wall = t1 - t0
print(conns / wall, "-", cpu * 1e6 / max(conns, 1), cpu / wall,
      f"resumed={resumed / max(resumed + full, 1):.0%}")
PY
}

h2() {
  local before after out rps reqs ok
  before=$(cpu_ticks "$2")
  out=$(${LOAD_CPU[@]} h2load -t1 -c"$H2_CONNS" -m"$3" -D"$DURATION" "https://127.0.0.1:$1/" 2>&1)
  after=$(cpu_ticks "$2")
  rps=$(awk '/^finished in/ {print $4}' <<<"$out")
  reqs=$(awk '/^requests:/ {print $8}' <<<"$out")   # succeeded
  ok=$(awk '/^requests:/ {print $2}' <<<"$out")
  python3 -c "print($rps, '-', ($after - $before) * 1e6 / $CLK_TCK / max($reqs, 1), ($after - $before) / $CLK_TCK / $DURATION, 'ok=$reqs/$ok')"
}

measure() { # PROXY TEST
  local p=$1 t=$2
  case $t in
    keepalive) keepalive "${PORT[$p.$KA_KEY]}" "${PID[$p]}" ;;
    full-*) s_time "${PORT[$p.${t#full-}]}" "${PID[$p]}" -new ;;
    resumed) s_time "${PORT[$p.$KA_KEY]}" "${PID[$p]}" -reuse -www / ;;
    h2-m*) h2 "${PORT[$p.$KA_KEY]}" "${PID[$p]}" "${t#h2-m}" ;;
  esac
}

RUN_TESTS=()
for t in $TESTS; do
  if [ "$t" = full ]; then for key in $KEYS; do RUN_TESTS+=("full-$key"); done; else RUN_TESTS+=("$t"); fi
done

echo "warming up"
for p in "${PROXIES[@]}"; do
  ${LOAD_CPU[@]} wrk -t1 -c"$CONNS" -d2s "https://127.0.0.1:${PORT[$p.$KA_KEY]}/" >/dev/null
done
: >"$WORK/results"
for r in $(seq "$ROUNDS"); do
  for t in "${RUN_TESTS[@]}"; do
    for p in "${PROXIES[@]}"; do
      read -r rate p99 cpu busy note < <(measure "$p" "$t")
      printf 'round %d  %-13s %-18s %10.0f /s   p99 %6s ms   cpu %7.1f us/op   busy %4.0f%%  %s\n' \
        "$r" "$t" "$p" "$rate" "$p99" "$cpu" "$(python3 -c "print($busy * 100)")" "$note"
      echo "$r $t $p $rate $p99 $cpu $busy" >>"$WORK/results"
    done
  done
done

echo
echo "$ROUNDS rounds of ${DURATION}s; wrk $CONNS connections, s_time × $PAR, h2load $H2_CONNS connections; 1 worker each; TLS 1.3, AES-128-GCM, X25519"
python3 - "$WORK/results" "${SY_NAMES[@]}" <<'PY'
import sys, statistics
from collections import defaultdict
med = statistics.median
rows = [l.split() for l in open(sys.argv[1])]
sy = sys.argv[2:]
peers = ["nginx", "haproxy"]
data = defaultdict(lambda: defaultdict(list))  # test -> proxy -> [(round, rate, p99, cpu)]
tests = []
for r, t, p, rate, p99, cpu, busy in rows:
    if t not in tests:
        tests.append(t)
    data[t][p].append((int(r), float(rate), None if p99 == "-" else float(p99), float(cpu)))
def col(t, p, i):
    return [x[i] for x in data[t][p]]
def paired(t, a, b, i):
    return med(x / y for x, y in zip(col(t, a, i), col(t, b, i)))
print(f"{'test':14}{'proxy':20}{'rate/s':>10}{'p99 ms':>9}{'cpu us/op':>11}   ratios to the best peer (median of per-round ratios)")
for t in tests:
    for p in sy + peers:
        rate, cpu = med(col(t, p, 1)), med(col(t, p, 3))
        p99 = col(t, p, 2)
        p99s = f"{med(p99):9.2f}" if p99 and p99[0] is not None else f"{'-':>9}"
        line = f"{t:14}{p:20}{rate:10.0f}{p99s}{cpu:11.1f}"
        if p in sy:
            best = max(peers, key=lambda n: med(col(t, n, 1)))
            lean = min(peers, key=lambda n: med(col(t, n, 3)))
            line += f"   rate {paired(t, p, best, 1):.2f}x {best}, cpu {paired(t, p, lean, 3):.2f}x {lean}"
            if p99 and p99[0] is not None:
                low = min(peers, key=lambda n: med(col(t, n, 2)))
                line += f", p99 {paired(t, p, low, 2):.2f}x {low}"
        print(line)
print("rate: higher is better; cpu and p99: below 1 is better")
PY

# KB per idle TLS connection, the same proxies (switchyard: the first build named).
IDLE_CONNS=${IDLE_CONNS:-2000}
if [ "$IDLE_CONNS" != 0 ]; then
  first=${SWITCHYARD%% *}
  echo
  echo "== idle TLS connections (bench/idle.sh, CONNS=$IDLE_CONNS)"
  CONNS=$IDLE_CONNS MODES="tls tls-h2" SWITCHYARD=${first#*=} bench/idle.sh
fi
