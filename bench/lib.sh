# Shared by the bench scripts: the tools (installed when missing), a free loopback port, CPU
# placement, descriptors, the backends, CPU time and RSS of a proxy read from /proc, wrk's
# figures, and the three proxies' bench configs (one listener, one service split 90/10 over
# the two backends, the same work per request). WORKERS (default 1) is each proxy's worker
# count: switchyard's --workers (the caller's), nginx's worker_processes, HAProxy's nbthread.

# need_tools TOOL...: installs the missing ones from Debian (h2load comes in nghttp2-client)
# and puts /usr/sbin (nginx, haproxy) on PATH.
need_tools() {
  local missing=() t
  for t in "$@"; do
    command -v "$t" >/dev/null || [ -x "/usr/sbin/$t" ] || case $t in
      h2load) missing+=(nghttp2-client) ;;
      *) missing+=("$t") ;;
    esac
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]} from Debian"
    local sudo=; [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  export PATH="$PATH:/usr/sbin"
}

# raise_nofile N: at least N descriptors for this shell and what it starts (root may raise
# the hard limit too); warns when it cannot.
raise_nofile() {
  ulimit -n "$1" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
  [ "$(ulimit -n)" -ge "$1" ] || echo "warning: ulimit -n is $(ulimit -n), below the $1 needed"
}

# start_backends BIN: the two backends (switchyard's `backend` subcommand, one thread each,
# on the load's CPUs), their ports in B1 and B2, their pids added to `pids`.
start_backends() {
  B1=$(port); B2=$(port)
  ${LOAD_CPU[@]} "$1" backend --workers 1 --bind 127.0.0.1:$B1 --name blue >/dev/null 2>&1 & pids+=($!)
  ${LOAD_CPU[@]} "$1" backend --workers 1 --bind 127.0.0.1:$B2 --name green >/dev/null 2>&1 & pids+=($!)
}

# wait_up PORT...: until each answers a GET / (10 s each); false if one never does.
wait_up() {
  local p
  for p in "$@"; do
    for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$p/" && break; sleep 0.1; done
    curl -fs -o /dev/null "http://127.0.0.1:$p/" || return 1
  done
}

# The process PID and its children (nginx's workers).
family() { echo "$1"; pgrep -P "$1" || true; }

# cpu_ticks PID: CPU time (user + system, clock ticks) used so far by PID and its children.
cpu_ticks() {
  local total=0 p
  for p in $(family "$1"); do
    [ -r "/proc/$p/stat" ] || continue
    total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$total"
}

# cpu_split PID: "user system" CPU time (clock ticks) of PID and its children, apart: where
# a proxy's time per request goes (its own code, or the kernel's sockets and wake-ups).
cpu_split() {
  local user=0 sys=0 p u s
  for p in $(family "$1"); do
    [ -r "/proc/$p/stat" ] || continue
    read -r u s < <(awk '{print $14, $15}' "/proc/$p/stat")
    user=$((user + u)); sys=$((sys + s))
  done
  echo "$user $sys"
}

# cpu_ns PID: CPU time (ns) of PID's threads and its children's, from schedstat: finer than
# the ticks (10 ms) of cpu_ticks, for runs that use a few hundred ms of CPU. A thread that
# ended between two reads takes its time with it.
cpu_ns() {
  local p
  for p in $(family "$1"); do cat /proc/"$p"/task/*/schedstat 2>/dev/null || true; done | awk '{s += $1} END {printf "%.0f\n", s}'
}

# ticks_us TICKS: clock ticks in µs.
ticks_us() { echo $(($1 * 1000000 / $(getconf CLK_TCK))); }

# rss_kb PID: VmRSS of PID and its children, KB.
rss_kb() {
  local total=0 p v
  for p in $(family "$1"); do
    v=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null) || continue
    total=$((total + ${v:-0}))
  done
  echo "$total"
}

# wrk_figures: reads wrk --latency's output; prints "REQ/S P99_MS REQUESTS".
wrk_figures() {
  awk '/^Requests\/sec:/ {rps=$2} /requests in/ {n=$1}
    $1=="99%" {v=$2; if (v ~ /us$/) {sub(/us$/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /s$/) {sub(/s$/,"",v); v*=1000}; p=v}
    END {print rps, p, n}'
}

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

# start_proxies BIN: switchyard (BIN), nginx and HAProxy with the configs below in $WORK,
# WORKERS each, on the proxies' CPU (pin_setup), in front of the backends (start_backends):
# their ports in SY, NG and HA, their pids in SY_PID, NG_PID and HA_PID (added to `pids`),
# their output in $WORK/<name>.log. The caller waits for them (wait_up).
start_proxies() {
  SY=$(port); NG=$(port); HA=$(port)
  switchyard_config "$WORK/switchyard.toml" "$SY" "$(port)" "$B1" "$B2"
  SWITCHYARD_LOG=error ${PROXY_CPU[@]} "$1" run --workers "${WORKERS:-1}" -c "$WORK/switchyard.toml" >"$WORK/switchyard.log" 2>&1 & pids+=($!)
  SY_PID=$!
  nginx_config "$WORK" "$NG" "$B1" "$B2"
  ${PROXY_CPU[@]} nginx -c "$WORK/nginx.conf" -e "$WORK/nginx/error.log" >"$WORK/nginx.log" 2>&1 & pids+=($!)
  NG_PID=$!
  haproxy_config "$WORK/haproxy.cfg" "$HA" "$B1" "$B2"
  ${PROXY_CPU[@]} haproxy -f "$WORK/haproxy.cfg" -db >"$WORK/haproxy.log" 2>&1 & pids+=($!)
  HA_PID=$!
}

# switchyard_config FILE LISTEN_PORT ADMIN_PORT BLUE_PORT GREEN_PORT
switchyard_config() {
  cat > "$1" <<CONF
[admin]
bind = "127.0.0.1:$3"
[[listener]]
name = "bench"
bind = "127.0.0.1:$2"
[[route]]
name = "all"
priority = 1
forward = "app"
[[service]]
name = "app"
weights = { blue = 90, green = 10 }
[[service.group]]
name = "blue"
targets = ["127.0.0.1:$4"]
[[service.group]]
name = "green"
targets = ["127.0.0.1:$5"]
CONF
}

# nginx_head DIR: WORKERS workers (1), files under DIR, no access log; opens the `http` block (the
# caller closes it). Prints to standard output.
nginx_head() {
  mkdir -p "$1/nginx"
  cat <<CONF
worker_processes ${WORKERS:-1};
daemon off;
pid $1/nginx.pid;
error_log $1/nginx/error.log error;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $1/nginx/body;
  proxy_temp_path $1/nginx/proxy;
  fastcgi_temp_path $1/nginx/fastcgi;
  uwsgi_temp_path $1/nginx/uwsgi;
  scgi_temp_path $1/nginx/scgi;
CONF
}

# nginx_app BLUE_PORT GREEN_PORT: the upstream `app`, split 90/10 with keep-alive.
nginx_app() {
  cat <<CONF
  upstream app {
    server 127.0.0.1:$1 weight=9;
    server 127.0.0.1:$2 weight=1;
    keepalive 128;
  }
CONF
}

# nginx_forward: the directives that do what switchyard does per request — pass the client's
# Host, add X-Forwarded-For/-Proto/-Host/-Port and a request id that goes upstream and comes
# back — for a `location` (or the `http` block).
nginx_forward() {
  cat <<'CONF'
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $http_host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Host $http_host;
      proxy_set_header X-Forwarded-Port $server_port;
      proxy_set_header X-Request-Id $request_id;
CONF
}

# The peers, configured to do what switchyard does per request (`nginx_forward`); with a
# fifth argument `bare`, in their default configuration instead: no forwarded headers and no
# request id, only what upstream keep-alive needs (issue 17 asks for both).
# nginx_config DIR LISTEN_PORT BLUE_PORT GREEN_PORT [bare] (writes DIR/nginx.conf)
nginx_config() {
  mkdir -p "$1/nginx"
  {
    nginx_head "$1"
    nginx_app "$3" "$4"
    echo "  server {"
    echo "    listen 127.0.0.1:$2;"
    echo "    location / {"
    echo "      proxy_pass http://app;"
    if [ "${5:-}" = bare ]; then
      echo "      proxy_http_version 1.1;"
      echo '      proxy_set_header Connection "";'
    else
      nginx_forward
      echo '      add_header X-Request-Id $request_id always;'
    fi
    echo "    }"
    echo "  }"
    echo "}"
  } > "$1/nginx.conf"
}

# haproxy_config FILE LISTEN_PORT BLUE_PORT GREEN_PORT [bare]
haproxy_config() {
  haproxy_full_config "$@"
  if [ "${5:-}" = bare ]; then
    sed -i -e '/^  option forwardfor$/d' -e '/^  http-request set-header /d' \
      -e '/^  unique-id-/d' -e '/^  http-response set-header X-Request-Id/d' "$1"
  fi
}
haproxy_full_config() {
  cat > "$1" <<CONF
global
  nbthread ${WORKERS:-1}
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
frontend fe
  bind 127.0.0.1:$2
  option forwardfor
  http-request set-header X-Forwarded-Proto http
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
  http-request set-header X-Forwarded-Port %[dst_port]
  unique-id-format %[uuid()]
  unique-id-header X-Request-Id
  http-response set-header X-Request-Id %[unique-id]
  default_backend app
backend app
  balance roundrobin
  http-reuse always
  server blue 127.0.0.1:$3 weight 9
  server green 127.0.0.1:$4 weight 1
CONF
}

# nginx_room CONF N / haproxy_room CFG N: room for N connections in a config written above —
# nginx's worker_connections and descriptors, HAProxy's maxconn (global and per frontend; it
# wants about twice maxconn descriptors and will not start without them, see raise_nofile).
nginx_room() {
  sed -i -e "s/worker_connections [0-9]*;/worker_connections $2;/" \
    -e "s/^worker_processes [0-9]*;/&\nworker_rlimit_nofile $2;/" "$1"
}
haproxy_room() {
  sed -i -e "s/^  maxconn [0-9]*/  maxconn $2/" -e "s/^defaults\$/&\n  maxconn $2/" "$1"
}

# With two or more cores (and PIN unset or 1) the proxies share the last core and wrk and the
# backends get the others: otherwise the proxy under test competes with wrk and the backends
# for the CPU, and its latency tail measures the scheduler's choices more than the proxy.
# A proxy with WORKERS of 2 or more is not pinned unless PIN=1 is set: on a 2-core host its
# workers could only share one core, and two cores of its own would leave none for the load.
# Sets PROXY_CPU and LOAD_CPU, command prefixes (empty when not pinning).
pin_setup() {
  local cpus; cpus=$(nproc)
  PROXY_CPU=(); LOAD_CPU=()
  local pin=${PIN:-1}
  if [ "${WORKERS:-1}" -ge 2 ] && [ -z "${PIN:-}" ] && [ "$cpus" -le $((WORKERS + 1)) ]; then
    pin=0
    echo "WORKERS=$WORKERS on $cpus cores: nothing pinned, the proxies' workers, the load and the backends share every core (PIN=1 puts the proxies on the last core)"
  fi
  if [ "$pin" = 1 ] && [ "$cpus" -ge 2 ]; then
    PROXY_CPU=(taskset -c $((cpus - 1)))
    LOAD_CPU=(taskset -c 0-$((cpus - 2)))
    echo "proxies on CPU $((cpus - 1)); wrk and backends on CPUs 0-$((cpus - 2)) (PIN=0 to let the scheduler place them)"
  fi
}
