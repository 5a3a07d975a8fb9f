#!/usr/bin/env bash
# `make serve` on a fresh clone: seconds to a ready venv, seconds to the first C-ECHO
# answered, and the venv's size and heavy packages.
#
#   bash benchmarks/fresh_clone_serve.sh [REF] [LABEL]
#
# Clones this repository at REF (default HEAD) into /tmp/md-fresh-LABEL, runs `make serve`
# there with an empty pip cache and a free port, polls dcmtk's echoscu every 0.2 s, stops
# the node at the first answer, prints one JSON line. Needs echoscu (dcmtk) and bc.
set -u
REPO=$(cd "$(dirname "$0")/.." && pwd)
REF=${1:-HEAD}; LABEL=${2:-$(git -C "$REPO" rev-parse --short "$REF")}
DIR=/tmp/md-fresh-$LABEL
rm -rf "$DIR" "$DIR.pipcache" "$DIR.data"
git clone -q "$REPO" "$DIR" && git -C "$DIR" checkout -q "$REF"
PORT=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
cd "$DIR"
export PIP_CACHE_DIR=$DIR.pipcache MAMMO_DENSITY_DATA_DIR=$DIR.data
export MAMMO_DENSITY_LISTEN_PORT=$PORT MAMMO_DENSITY_LISTEN_HOST=127.0.0.1
T0=$(date +%s.%N)
setsid make serve > "$DIR.make.log" 2>&1 &
MPID=$!
SETUP=""; ECHO=failed
while kill -0 $MPID 2>/dev/null; do
  # .installed: the single stamp of older Makefiles
  if [ -z "$SETUP" ] && { [ -e .venv/.runtime-installed ] || [ -e .venv/.installed ]; }; then
    SETUP=$(echo "$(date +%s.%N) - $T0" | bc)
  fi
  if echoscu -to 2 -aec MAMMODENSITY 127.0.0.1 "$PORT" >/dev/null 2>&1; then
    ECHO=$(echo "$(date +%s.%N) - $T0" | bc); break
  fi
  sleep 0.2
done
kill -TERM -- -$MPID 2>/dev/null; sleep 2; kill -KILL -- -$MPID 2>/dev/null
HEAVY=$(.venv/bin/python -c 'import importlib.util as u; print(",".join(m for m in ("torch", "tensorboard", "onnx", "pytest", "ruff") if u.find_spec(m)))')
printf '{"ref": "%s", "setup_s": "%s", "first_echo_s": "%s", "venv": "%s", "venv_bytes": %s, "heavy": "%s", "load": "%s"}\n' \
  "$REF" "$SETUP" "$ECHO" "$(du -sh .venv | cut -f1)" "$(du -sb .venv | cut -f1)" "$HEAVY" "$(cut -d' ' -f1-3 /proc/loadavg)"
