#!/usr/bin/env bash
# The media issue's yardstick, measured on this machine: rtpengine (Debian package
# `rtpengine-daemon`) forwarding in userspace with one worker thread, loaded by the same
# simulated phones as `carillon bench media`. Prints `bench: rtpengine_*` lines.
#
#   scripts/bench-rtpengine.sh [CARILLON_BIN] [extra `bench media` arguments...]
#
# Installs rtpengine-daemon if missing (apt-get update once), starts it on 127.0.0.1 with its
# ng control on a free port, runs the benchmark against it, and stops it on any exit.
set -euo pipefail

BIN="${1:-target/release/carillon}"
shift || true
[ -x "$BIN" ] || { echo "bench-rtpengine: $BIN is not built (cargo build --release)" >&2; exit 1; }

if ! command -v rtpengine >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends rtpengine-daemon
fi

NG_PORT="$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
LOG="$(mktemp -t rtpengine-bench-XXXXXX.log)"
# Userspace only (-t -1: no kernel forwarding table), one worker thread, no Redis, calls freed
# at once when deleted (the default keeps their ports 30 s, into the next step); its ports
# (4 per call, up to 4,000 calls) sit below the ephemeral range the simulated phones bind in.
rtpengine --foreground --table=-1 --interface=127.0.0.1 --listen-ng="127.0.0.1:$NG_PORT" \
  --port-min=16000 --port-max=32000 --num-threads=1 --media-num-threads=1 --delete-delay=0 \
  --log-level=4 --log-stderr --no-redis-required >"$LOG" 2>&1 &
PID=$!
trap 'kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; rm -f "$LOG"' EXIT

# Wait (bounded) for its control port to answer.
for _ in $(seq 1 50); do
  if python3 - "$NG_PORT" <<'EOF' 2>/dev/null; then break; fi
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.2)
s.sendto(b"probe d7:command4:pinge", ("127.0.0.1", int(sys.argv[1])))
sys.exit(0 if b"pong" in s.recv(100) else 1)
EOF
  kill -0 "$PID" 2>/dev/null || { echo "bench-rtpengine: rtpengine exited:" >&2; cat "$LOG" >&2; exit 1; }
  sleep 0.1
done

"$BIN" bench media --no-recording \
  --rtpengine-ng "127.0.0.1:$NG_PORT" --rtpengine-pid "$PID" "$@"
