#!/usr/bin/env bash
# Load benchmark on loopback: direct to a mock upstream, nginx proxy_pass, nginx limit_req
# keyed on the recipient, smsfence with no rules, smsfence with the default rules and a
# distinct number per request (as shipped: mostly refused; and evaluated in full with every
# request forwarded). Same CPU budget per proxy: 1 nginx worker vs smsfence
# worker_threads = 1, then 2 vs 2. Several short interleaved rounds; the ratios of every
# round, then medians, then p99 at half of each target's throughput (1-vs-1 budget).
#
#   benches/load/run.sh                     # defaults: ROUNDS=3 DURATION=4 CONNS=64
#   ROUNDS=5 DURATION=5 benches/load/run.sh
#   WORKERS="1" benches/load/run.sh         # only the 1-vs-1 budget
#   ONLY="none|all_forwarded" HALF=0 benches/load/run.sh
#                                           # only the targets matching ONLY (direct and both
#                                           # nginx targets always run: the ratios need them),
#                                           # without the half-throughput latency pass
#   STEADY=1000 benches/load/run.sh         # also the added p99 at a steady 1000 req/s
#                                           # (a production-like rate), 1-vs-1 budget
#
# Installs wrk and nginx (Debian) when missing; needs root for that only. Everything
# stays on 127.0.0.1 and stops by itself. Results: target/load/results.json + a table.
set -euo pipefail

cd "$(dirname "$0")/../.."
ROOT=$(pwd)
OUT=${OUT:-$ROOT/target/load}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-4}
CONNS=${CONNS:-64}
THREADS=${THREADS:-2}
WORKERS=${WORKERS:-"1 2"}
mkdir -p "$OUT"

# --- tools -------------------------------------------------------------------------------
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    # nginx-light (bookworm) is enough; later releases only ship "nginx".
    if [[ " ${need[*]} " == *" nginx "* ]] && apt-cache show nginx-light >/dev/null 2>&1; then
        need=("${need[@]/#nginx/nginx-light}")
    fi
    echo "installing ${need[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

cargo build --release --quiet --bin smsfence --example mock_upstream
BIN=$ROOT/target/release/smsfence
MOCK=$ROOT/target/release/examples/mock_upstream

exec python3 "$ROOT/benches/load/load.py" \
    --out "$OUT" --rounds "$ROUNDS" --duration "$DURATION" --conns "$CONNS" \
    --threads "$THREADS" --workers "$WORKERS" --nginx "$NGINX" --smsfence "$BIN" \
    --only "${ONLY:-}" $([ "${HALF:-1}" = 0 ] && echo --no-half) --steady "${STEADY:-0}" \
    --mock "$MOCK" --rules "$ROOT/rules" --lua "$ROOT/benches/load/distinct.lua"
