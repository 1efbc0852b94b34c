#!/usr/bin/env bash
# A Ray cluster of one head and N worker nodes, token authentication on.
#
#   cluster/local.sh start [--workers 1] [--cpus 2] [--gpus 0] [--port 6379] [--dashboard-port 8265]
#                          [--object-store-mb 1024] [--dir /tmp/rayft-cluster]
#   cluster/local.sh stop  [--dir /tmp/rayft-cluster]
#   cluster/local.sh print --head-ip 10.0.0.5 [--port 6379] [--dashboard-port 8265]
#
# start  every node on this machine: a raylet each, with its own temp dir and its own ports, so the nodes
#        collide neither with each other nor with another Ray on the machine (Ray gives every node the
#        machine's own address, even when told 127.0.0.1; the dashboard listens on 127.0.0.1 only).
#        Linux only: each node gets its own session with setsid.
#        Submit jobs to http://127.0.0.1:DASHBOARD_PORT (`rayft submit run.yaml --address ...`).
# stop   ends the nodes that `start` started with this --dir, and nothing else (not `ray stop`: that
#        ends every Ray process on the machine).
# print  the commands for real machines: one head, any number of workers.
#
# Token authentication (Ray >= 2.52): every node runs with RAY_AUTH_MODE=token and the same token, which
# Ray takes from $RAY_AUTH_TOKEN, else the file $RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token (created
# here with `ray get-auth-token --generate` when there is none). A client needs the same token, and
# RAY_AUTH_MODE=token too, except `rayft submit`, which sets it.
set -euo pipefail

command=${1:-}
shift || true
workers=1 cpus=2 gpus=0 port=6379 dashboard_port=8265 object_store_mb=1024 dir=/tmp/rayft-cluster head_ip=
while [[ $# -gt 0 ]]; do
  [[ $# -ge 2 ]] || { echo "error: $1 needs a value" >&2; exit 2; }
  case $1 in
    --workers) workers=$2 ;;
    --cpus) cpus=$2 ;;
    --gpus) gpus=$2 ;;
    --port) port=$2 ;;
    --dashboard-port) dashboard_port=$2 ;;
    --object-store-mb) object_store_mb=$2 ;;
    --dir) dir=$2 ;;
    --head-ip) head_ip=$2 ;;
    *) echo "error: unknown option $1 (see the top of $0)" >&2; exit 2 ;;
  esac
  shift 2
done
RAY=${RAY:-ray}
export RAY_AUTH_MODE=token
# Ray processes that look for "the local cluster" (Ray Train's placement-group cleaner asks the State API)
# find it in /tmp/ray, which another Ray on the machine may own, not in our --temp-dir: point them here.
export RAY_ADDRESS=127.0.0.1:$port

ensure_token() {
  if [[ -z ${RAY_AUTH_TOKEN:-} && -z ${RAY_AUTH_TOKEN_PATH:-} && ! -s $HOME/.ray/auth_token ]]; then
    "$RAY" get-auth-token --generate >/dev/null
    echo "generated a token in ~/.ray/auth_token (clients and other machines need the same file)"
  fi
}

# Node i (0 = head) on one machine: its services on ten ports from port+10*(i+1), its worker
# processes on a hundred from port+100*(i+1); the GCS on port, Ray Client on port+1.
start_node() {
  local i=$1
  shift
  local base=$((port + 10 * (i + 1))) first_worker=$((port + 100 * (i + 1)))
  mkdir -p "$dir/node$i"
  # its own session (setsid): `stop` ends the node by its process group, and only it
  setsid "$RAY" start --block --temp-dir="$dir/node$i" \
    --num-cpus="$cpus" --num-gpus="$gpus" --object-store-memory=$((object_store_mb * 1024 * 1024)) \
    --node-manager-port=$base --object-manager-port=$((base + 1)) --metrics-export-port=$((base + 2)) \
    --dashboard-agent-listen-port=$((base + 3)) --dashboard-agent-grpc-port=$((base + 4)) \
    --runtime-env-agent-port=$((base + 5)) --min-worker-port=$first_worker --max-worker-port=$((first_worker + 99)) \
    --disable-usage-stats "$@" >"$dir/node$i.log" 2>&1 &
  echo $! >"$dir/node$i.pid"
}

wait_node() {
  local i=$1
  for _ in $(seq 360); do  # `ray start` prints this once the node has joined the cluster
    grep -qs "Ray runtime started" "$dir/node$i.log" && return 0
    if ! kill -0 "$(cat "$dir/node$i.pid")" 2>/dev/null; then
      echo "error: node $i did not start; the end of $dir/node$i.log:" >&2
      tail -n 20 "$dir/node$i.log" >&2
      exit 1
    fi
    sleep 0.5
  done
  echo "error: node $i did not start within 180 s; see $dir/node$i.log" >&2
  exit 1
}

stop_node() {
  local pidfile=$1 pid
  pid=$(cat "$pidfile")
  # the node's process group: `ray start --block` and the GCS, raylet, dashboard... it started. The raylet
  # ends its workers on SIGTERM within seconds; the head's GCS and `ray start` may take half a minute, so
  # what is left after 10 s is killed.
  kill -TERM -- "-$pid" 2>/dev/null || true
  for _ in $(seq 20); do
    kill -0 -- "-$pid" 2>/dev/null || break
    sleep 0.5
  done
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

stop_all() {
  shopt -s nullglob
  local pidfiles=("$dir"/node*.pid) i
  for ((i = ${#pidfiles[@]} - 1; i >= 0; i--)); do  # worker nodes first, the head (node0) last
    stop_node "${pidfiles[i]}"
  done
  echo "stopped ${#pidfiles[@]} node(s) of $dir"
}

case $command in
  start)
    ((workers <= 8)) || { echo "error: --workers is at most 8 on one machine (the port layout)" >&2; exit 2; }
    if compgen -G "$dir/node*.pid" >/dev/null; then
      echo "error: $dir holds a running cluster; stop it first: $0 stop --dir $dir" >&2
      exit 2
    fi
    ensure_token
    trap 'echo "stopping the nodes started so far" >&2; stop_all >&2' EXIT  # a failed start leaves nothing running
    start_node 0 --head --port="$port" --ray-client-server-port=$((port + 1)) --include-dashboard=true \
      --dashboard-host=127.0.0.1 --dashboard-port="$dashboard_port"
    wait_node 0  # a worker node gives up when the head is not registered yet
    for ((i = 1; i <= workers; i++)); do
      start_node "$i" --address="127.0.0.1:$port"
    done
    for ((i = 1; i <= workers; i++)); do
      wait_node "$i"
    done
    trap - EXIT
    echo "started a head and $workers worker node(s), $cpus CPUs each, in $dir"
    echo "submit jobs with: rayft submit RUN.yaml --address http://127.0.0.1:$dashboard_port"
    ;;
  stop)
    stop_all
    ;;
  print)
    [[ -n $head_ip ]] || { echo "error: print needs --head-ip (the head machine's address the workers reach)" >&2; exit 2; }
    cat <<EOF
# Every machine, and every client that submits jobs, needs the same token: run
#   ray get-auth-token --generate
# on the head, then copy ~/.ray/auth_token to each machine (or point RAY_AUTH_TOKEN_PATH at a copy).

# on the head ($head_ip):
RAY_AUTH_MODE=token ray start --head --node-ip-address=$head_ip --port=$port --dashboard-host=0.0.0.0 --dashboard-port=$dashboard_port

# on each worker machine:
RAY_AUTH_MODE=token ray start --address=$head_ip:$port

# from your machine, in the rayft checkout (with the same token):
rayft submit jobs/sft_lora.yaml --address http://$head_ip:$dashboard_port

# to stop, on each machine: ray stop
EOF
    ;;
  *)
    echo "usage: $0 start|stop|print [options] (see the top of $0)" >&2
    exit 2
    ;;
esac
