# Shared by the bench scripts: a free loopback port, and switchyard's bench config (one
# listener, one service split 90/10 over the two backends).

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
