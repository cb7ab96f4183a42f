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

# The production policy of a gateway config (the part after listen/providers/model_groups/
# pricing), shared by isolated.sh and callgrind.sh: rps/rpm/tpm/daily limits on the key's plan,
# high enough never to refuse, a per-key and a global budget high enough never to run out, the
# SQLite ledger and the access log to a file. Every request still pays for the checks, the
# reservation, the ledger rows and the log line.
# Usage: prod_policy_yaml KEY ACCESS_LOG LEDGER_DB [DURABILITY]
prod_policy_yaml() {
  cat <<YAML
access_log: {path: "$2"}
budgets:
  global: {cap_usd: 100000000, period: monthly}
ledger: {path: "$3"${4:+, durability: $4}}
plans:
  prod:
    daily_requests: 1000000000
    limits:
      - {name: rps, unit: requests, rate: 1000000, period: second}
      - {name: rpm, unit: requests, rate: 60000000, period: minute}
      - {name: tpm, unit: tokens, rate: 1000000000000, period: minute}
keys:
  - {name: bench, key: $1, plan: prod, tenant: acme, budget: {cap_usd: 100000000, period: total}}
YAML
}

# The auth-only policy: one key on a plan without limits, no budgets, no ledger, access log off.
# Usage: auth_policy_yaml KEY
auth_policy_yaml() {
  cat <<YAML
access_log: {path: "off"}
plans:
  none: {limits: []}
keys:
  - {name: bench, key: $1, plan: none}
YAML
}
