#!/usr/bin/env bash
# Single machine, real Prefect server: starts `prefect server start` on 127.0.0.1, creates the
# process work pool, deploys every flow of prefect.yaml (nightly on its 02:00 cron) and runs a
# worker (Ctrl-C or SIGTERM stops the worker and the server within about 10 s).
#   bash infra/start-local.sh              UI at http://127.0.0.1:4200
#   SQFLOW_PREFECT_PORT=4300 bash infra/start-local.sh
# Runs read their settings from ./sqflow.toml and SQFLOW_* variables of this shell.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${SQFLOW_PREFECT_PORT:-4200}
RUNTIME=${SQFLOW_RUNTIME_DIR:-$(pwd)/.prefect-local}
mkdir -p "$RUNTIME"
export PREFECT_API_URL="http://127.0.0.1:${PORT}/api"
export PREFECT_UI_API_URL="$PREFECT_API_URL"     # the UI must call this server, not :4200
export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1
PREFECT=.venv/bin/prefect

"$PREFECT" server start --host 127.0.0.1 --port "$PORT" > "$RUNTIME/server.log" 2>&1 &
SERVER_PID=$!
WORKER_PID=""
# bash runs a trap only after its foreground child exits, so the worker runs in the background
# and we `wait` on it: SIGTERM/SIGINT reach this trap at once and are passed on (SIGINT: the
# worker's graceful shutdown; SIGKILL after 10 s if it hangs), then the server stops.
stop() {
    if [ -n "$WORKER_PID" ] && kill -0 "$WORKER_PID" 2>/dev/null; then
        kill -INT "$WORKER_PID" 2>/dev/null || true
        for _ in $(seq 1 20); do kill -0 "$WORKER_PID" 2>/dev/null || break; sleep 0.5; done
        kill -KILL "$WORKER_PID" 2>/dev/null || true
    fi
    kill "$SERVER_PID" 2>/dev/null || true
}
trap 'stop; exit 143' TERM
trap 'stop; exit 130' INT
trap stop EXIT
echo "prefect server (pid $SERVER_PID) starting on 127.0.0.1:${PORT}; log: $RUNTIME/server.log"
for _ in $(seq 1 120); do
    if .venv/bin/python -c "import httpx,sys; sys.exit(httpx.get('$PREFECT_API_URL/health').status_code != 200)" 2>/dev/null; then
        break
    fi
    kill -0 "$SERVER_PID" 2>/dev/null || { echo "server exited:"; tail -20 "$RUNTIME/server.log"; exit 1; }
    sleep 1
done
"$PREFECT" work-pool inspect sqflow-process > /dev/null 2>&1 \
    || "$PREFECT" work-pool create sqflow-process --type process
"$PREFECT" --no-prompt deploy --all
echo "UI: http://127.0.0.1:${PORT}  (deployments: nightly on cron '0 2 * * *' UTC, retrain on drift, others on demand)"
echo "run one now: $PREFECT deployment run nightly/nightly"
"$PREFECT" worker start --pool sqflow-process --type process &
WORKER_PID=$!
wait "$WORKER_PID"
