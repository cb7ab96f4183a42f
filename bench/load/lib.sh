# Shared helpers of the load scripts in bench/load (sourced, not run). Loopback only.

# A free TCP port on 127.0.0.1.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# Waits up to 10 s until something accepts connections on 127.0.0.1:$1.
wait_port() {
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listens on port $1" >&2
  return 1
}

# Creates $work (a temp dir named after $1) and $pids; on exit every pid in $pids, or recorded
# with track_pid, is stopped and $work removed.
start_workdir() {
  work="$(mktemp -d "/tmp/bw-$1.XXXXXX")"
  pids=()
  trap 'all=("${pids[@]}" $(cat "$work/.pids" 2>/dev/null || true))
        for p in "${all[@]}"; do kill "$p" 2>/dev/null || true; done
        for p in "${all[@]}"; do wait "$p" 2>/dev/null || true; done
        rm -rf "$work"' EXIT
}

# Records a background pid for the exit cleanup; works from subshells such as $(...), where an
# append to $pids would be lost.
track_pid() {
  pids+=("$1")
  echo "$1" >>"$work/.pids"
}
