#!/usr/bin/env bash
# What an idle keep-alive client connection costs switchyard, nginx and HAProxy in memory, in
# one run: per mode (HTTP/1.1, h2c, HTTP/1.1 over TLS, h2 over TLS) each proxy is started
# fresh, then bench/idle.py opens CONNS connections to it (each sends one request through to
# a backend, reads the answer and stays open, idle), reads its RSS before and with them held
# (KB per connection), closes them and reads RSS right after and AFTER seconds later.
# WORKERS (1) workers each (nginx worker_processes, HAProxy nbthread, switchyard --workers),
# the same per-request work as bench/run.sh, one ECDSA P-256 certificate (openssl) for all
# three, 127.0.0.1 only. It reports and does not judge.
#
#   bench/idle.sh                              # CONNS=10000, MODES="h1 h2 tls tls-h2"
#   CONNS=2000 MODES="h1 tls" PROXIES=switchyard bench/idle.sh
#   SWITCHYARD=/tmp/sy-before SWITCHYARD_B=target/release/switchyard PROXIES="switchyard switchyard-b" bench/idle.sh
set -euo pipefail
cd "$(dirname "$0")/.."
CONNS=${CONNS:-10000}
MODES=${MODES:-h1 h2 tls tls-h2}
PROXIES=${PROXIES:-switchyard nginx haproxy}
AFTER=${AFTER:-5}
CONCURRENCY=${CONCURRENCY:-32}
WORKERS=${WORKERS:-1}

. bench/lib.sh
need_tools nginx haproxy

BIN=${SWITCHYARD:-target/release/switchyard}
if [ ! -x "$BIN" ]; then
  [ -n "${SWITCHYARD:-}" ] && { echo "SWITCHYARD=$BIN is not an executable"; exit 1; }
  cargo build --release -q
fi
BIN=$(realpath "$BIN")
BIN_B=${SWITCHYARD_B:+$(realpath "$SWITCHYARD_B")}

# Descriptors: the client holds CONNS, the proxy CONNS plus its upstream connections; HAProxy
# asks for about twice its maxconn.
NOFILE=$((2 * CONNS + 4096))
raise_nofile "$NOFILE"

WORK=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
trap "exit 130" INT
trap "exit 143" TERM

pin_setup

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
  -keyout "$WORK/key.pem" -out "$WORK/cert.pem" -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost,IP:127.0.0.1 2>/dev/null
cat "$WORK/cert.pem" "$WORK/key.pem" >"$WORK/haproxy.pem"

B1=$(port); B2=$(port)
${LOAD_CPU[@]} "$BIN" backend --workers 1 --bind 127.0.0.1:$B1 --name blue >/dev/null 2>&1 & pids+=($!)
${LOAD_CPU[@]} "$BIN" backend --workers 1 --bind 127.0.0.1:$B2 --name green >/dev/null 2>&1 & pids+=($!)

# Each proxy listens on three ports: HTTP/1.1 (and h2c for switchyard, by preface), h2c, TLS
# (ALPN h2 and http/1.1). Idle timeouts are 300 s everywhere, well past a run's hold.
# start_proxy NAME -> sets PORT_H1, PORT_H2, PORT_TLS, PID
start_proxy() {
  local name=$1 dir="$WORK/$1"; mkdir -p "$dir"
  PORT_H1=$(port); PORT_H2=$(port); PORT_TLS=$(port)
  case $name in
    switchyard|switchyard-b)
      local bin=$BIN; [ "$name" = switchyard-b ] && bin=$BIN_B
      PORT_H2=$PORT_H1
      switchyard_config "$dir/sy.toml" "$PORT_H1" "$(port)" "$B1" "$B2"
      cat >>"$dir/sy.toml" <<CONF
[[listener]]
name = "tls"
bind = "127.0.0.1:$PORT_TLS"
[[listener.certificate]]
cert = "$WORK/cert.pem"
key = "$WORK/key.pem"
[timeouts]
idle = "300s"
CONF
      SWITCHYARD_LOG=error ${PROXY_CPU[@]} "$bin" run --workers "$WORKERS" -c "$dir/sy.toml" >"$dir/log" 2>&1 & PID=$!
      ;;
    nginx)
      nginx_config "$dir" "$PORT_H1" "$B1" "$B2"
      nginx_room "$dir/nginx.conf" "$NOFILE"
      sed -i -e "s|^    listen 127.0.0.1:$PORT_H1;|&\n    listen 127.0.0.1:$PORT_H2 http2;\n    listen 127.0.0.1:$PORT_TLS ssl http2;\n    ssl_certificate $WORK/cert.pem;\n    ssl_certificate_key $WORK/key.pem;\n    keepalive_timeout 300s;|" \
        "$dir/nginx.conf"
      grep -q "listen 127.0.0.1:$PORT_TLS" "$dir/nginx.conf" || { echo "nginx config: listen line not found"; exit 1; }
      ${PROXY_CPU[@]} nginx -c "$dir/nginx.conf" -e "$dir/nginx/error.log" >"$dir/log" 2>&1 & PID=$!
      ;;
    haproxy)
      haproxy_config "$dir/haproxy.cfg" "$PORT_H1" "$B1" "$B2"
      # It asks for about twice maxconn descriptors and refuses to start without them: with
      # a hard limit of 20000, CONNS=9000 is about the most it can be measured with.
      haproxy_room "$dir/haproxy.cfg" $((CONNS + 64))
      sed -i -e "s/^  timeout client .*/  timeout client 300s\n  timeout http-keep-alive 300s/" \
        -e "s|^  bind 127.0.0.1:$PORT_H1\$|&\n  bind 127.0.0.1:$PORT_H2 proto h2\n  bind 127.0.0.1:$PORT_TLS ssl crt $WORK/haproxy.pem alpn h2,http/1.1|" \
        "$dir/haproxy.cfg"
      grep -q "bind 127.0.0.1:$PORT_TLS" "$dir/haproxy.cfg" || { echo "haproxy config: bind line not found"; exit 1; }
      ${PROXY_CPU[@]} haproxy -f "$dir/haproxy.cfg" -db >"$dir/log" 2>&1 & PID=$!
      ;;
  esac
  pids+=("$PID")
  for _ in $(seq 100); do
    curl -fs -o /dev/null "http://127.0.0.1:$PORT_H1/" && curl -fsk -o /dev/null --resolve "localhost:$PORT_TLS:127.0.0.1" "https://localhost:$PORT_TLS/" && return 0
    sleep 0.1
  done
  echo "$name did not come up"; tail -n 5 "$dir/log" "$dir"/nginx/error.log 2>/dev/null; exit 1
}

RESULTS="$WORK/results.jsonl"
echo "CONNS=$CONNS idle connections per proxy and mode, opened $CONCURRENCY at a time; RSS again ${AFTER}s after closing"
for mode in $MODES; do
  targets=()
  started=()
  for name in $PROXIES; do
    start_proxy "$name"
    case $mode in h1) p=$PORT_H1 ;; h2) p=$PORT_H2 ;; *) p=$PORT_TLS ;; esac
    targets+=("$name:$p:$PID"); started+=("$PID")
  done
  echo "== $mode"
  ${LOAD_CPU[@]} python3 bench/idle.py --mode "$mode" --conns "$CONNS" --concurrency "$CONCURRENCY" \
    --after "$AFTER" --results "$RESULTS" "${targets[@]}"
  for p in "${started[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
done

echo
echo "summary (KB/conn: RSS held minus before, over the connections held):"
python3 bench/idle.py --summary "$RESULTS"
