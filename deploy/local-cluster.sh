#!/usr/bin/env bash
# Starts a local cluster for trying it by hand: Redis (if none answers on 6379), one router and
# two comets, with the configs in deploy/local. Logs go to ./cluster-logs; Ctrl-C stops all.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --quiet
bin=target/release/galopush
logs=cluster-logs
mkdir -p "$logs"

if ! (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; then
    echo "starting redis-server on 127.0.0.1:6379"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
fi

pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait' EXIT INT TERM

"$bin" router --config deploy/local/router.toml >"$logs/router.out" 2>"$logs/router.log" &
pids+=($!)
sleep 1
for n in 1 2; do
    "$bin" comet --config "deploy/local/comet-$n.toml" >"$logs/comet-$n.out" 2>"$logs/comet-$n.log" &
    pids+=($!)
done

echo "router: http://127.0.0.1:5150 (dispatcher), API http://127.0.0.1:5152 (/pub, /v1/comets, /metrics), rpc 127.0.0.1:5151"
echo "comets: comet-1 tcp 127.0.0.1:5171 ws 127.0.0.1:5172, comet-2 tcp 127.0.0.1:5181 ws 127.0.0.1:5182"
echo "try:    curl http://127.0.0.1:5152/v1/comets"
echo "logs in $logs/; Ctrl-C stops the cluster"
wait
