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

# nginx_head DIR: one worker, files under DIR, no access log; opens the `http` block (the
# caller closes it). Prints to standard output.
nginx_head() {
  mkdir -p "$1/nginx"
  cat <<CONF
worker_processes 1;
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

# The peers, configured to do what switchyard does per request (`nginx_forward`).
# nginx_config DIR LISTEN_PORT BLUE_PORT GREEN_PORT (writes DIR/nginx.conf)
nginx_config() {
  mkdir -p "$1/nginx"
  {
    nginx_head "$1"
    nginx_app "$3" "$4"
    echo "  server {"
    echo "    listen 127.0.0.1:$2;"
    echo "    location / {"
    echo "      proxy_pass http://app;"
    nginx_forward
    echo '      add_header X-Request-Id $request_id always;'
    echo "    }"
    echo "  }"
    echo "}"
  } > "$1/nginx.conf"
}

# haproxy_config FILE LISTEN_PORT BLUE_PORT GREEN_PORT
haproxy_config() {
  cat > "$1" <<CONF
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
