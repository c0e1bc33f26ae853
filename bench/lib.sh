# Shared by the bench scripts: a free loopback port, CPU placement, and switchyard's bench
# config (one listener, one service split 90/10 over the two backends).

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

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

# With two or more cores (and PIN unset or 1) the proxies share the last core and wrk and the
# backends get the others: otherwise the proxy under test competes with wrk and the backends
# for the CPU, and its latency tail measures the scheduler's choices more than the proxy.
# Sets PROXY_CPU and LOAD_CPU, command prefixes (empty when not pinning).
pin_setup() {
  local cpus; cpus=$(nproc)
  PROXY_CPU=(); LOAD_CPU=()
  if [ "${PIN:-1}" = 1 ] && [ "$cpus" -ge 2 ]; then
    PROXY_CPU=(taskset -c $((cpus - 1)))
    LOAD_CPU=(taskset -c 0-$((cpus - 2)))
    echo "proxies on CPU $((cpus - 1)); wrk and backends on CPUs 0-$((cpus - 2)) (PIN=0 to let the scheduler place them)"
  fi
}
