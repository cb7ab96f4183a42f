#!/usr/bin/env python3
"""Budget lease soak: rounds of concurrent load, each ended by kill -9 (or a graceful stop).

Run by bench/load/lease_soak.sh, which starts `bellwether sim` and writes the gateway's config
(standard library only; loopback only; bounded by --duration). Each round starts
`bellwether serve` on the same SQLite ledger, checks what the restart recovered, drives every key
with client threads (each request carries its own X-Request-Id) for a random time, then kills the
gateway with SIGKILL (every --graceful-every'th round: SIGTERM, a graceful drain, alternately
under load and once the load has stopped) and checks the ledger at rest:

  - PRAGMA integrity_check is ok;
  - every budget: settled spend <= cap, and settled + open reservations (open lease rows at their
    reserved amount) <= cap, from the ledger's rows (a row counts for the budget ids it names);
  - every complete 2xx answer the clients got (the whole body, or a stream up to [DONE]) has its
    own ledger row (lease = 0) under its request id;
  - after a graceful stop: no lease row that this gateway opened is still open, and none of the
    round's requests has an open row;
and, after each (re)start, before the load:
  - /admin/budgets: spent_usd and reserved_usd of every budget are the ledger's settled and open
    sums for it (what the restart rebuilt);
  - /admin/spend?group=key: requests (rows without lease rows), spend_usd and open_reserved_usd
    of every key are the ledger's;
and while the load runs, /admin/budgets is polled: spent + reserved never above a cap.
In a graceful round, once the load has stopped and the leases' idle time has passed, the live
gateway must have no lease row of its own open and /admin/budgets must hold exactly what the
ledger's open rows hold (the rows left by the kills before).

Exit status 0 when every check of every round held, 1 otherwise (the first failures are printed).
"""
import argparse
import http.client
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time

ADMIN_KEY = "admin-key-lease-soak-0123456789"


def micros(usd):
    return int(round(float(usd) * 1e6))


class Failures:
    def __init__(self):
        self.items = []
        self.mu = threading.Lock()

    def add(self, msg):
        with self.mu:
            self.items.append(msg)
            if len(self.items) <= 40:
                print("FAIL: " + msg, flush=True)

    def __len__(self):
        return len(self.items)


def http_json(port, path, timeout=5.0):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path, headers={"Authorization": "Bearer " + ADMIN_KEY})
        r = c.getresponse()
        body = r.read()
        if r.status != 200:
            raise RuntimeError("GET %s: %d %s" % (path, r.status, body[:200]))
        return json.loads(body)
    finally:
        c.close()


# --- load ----------------------------------------------------------------------------------------


class Stats:
    def __init__(self):
        self.mu = threading.Lock()
        self.ok = []  # (request id, key) of complete 2xx answers
        self.cut = 0  # 2xx whose body was cut short (the kill)
        self.refused = 0
        self.conn_errors = 0
        self.draining = 0
        self.unexpected = []


def client(port, key, model, stream, pace_ms, tag, deadline, stopping, stats):
    body = json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": "Hello there"}],
            "max_tokens": 10,
            **({"stream": True} if stream else {}),
        }
    )
    conn = None
    n = 0
    while time.monotonic() < deadline:
        n += 1
        rid = "%s-%d" % (tag, n)
        status = 0
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request(
                "POST",
                "/v1/chat/completions",
                body=body,
                headers={
                    "Content-Type": "application/json",
                    "Authorization": "Bearer " + key["key"],
                    "X-Request-Id": rid,
                },
            )
            r = conn.getresponse()
            status = r.status
            data = r.read()
            if r.getheader("connection", "").lower() == "close":
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException):
            if conn is not None:
                conn.close()
            conn = None
            with stats.mu:
                if 200 <= status < 300:
                    stats.cut += 1
                else:
                    stats.conn_errors += 1
            time.sleep(0.01)
            continue
        if 200 <= status < 300:
            if stream and b"[DONE]" not in data:
                with stats.mu:
                    stats.cut += 1
                continue
            with stats.mu:
                stats.ok.append((rid, key["name"]))
        elif status == 429 and b"insufficient_quota" in data:
            with stats.mu:
                stats.refused += 1
            time.sleep(0.005)
        elif status == 503 and stopping.is_set():
            with stats.mu:
                stats.draining += 1
            time.sleep(0.01)
        else:
            with stats.mu:
                stats.unexpected.append("%s: %d %s" % (rid, status, data[:200]))
            time.sleep(0.01)
        if pace_ms:
            time.sleep(pace_ms / 1000.0 * random.uniform(0.5, 1.5))
    if conn is not None:
        conn.close()


def monitor(port, caps, until, failures, rnd):
    """Polls /admin/budgets while the load runs: spent + reserved never above a cap."""
    while not until.is_set():
        try:
            data = http_json(port, "/admin/budgets", timeout=2)["data"]
        except Exception:  # the kill: nothing to poll
            until.wait(0.2)
            continue
        for b in data:
            cap = caps.get(b["id"])
            if cap is None:
                continue
            held = micros(b["spent_usd"]) + micros(b["reserved_usd"])
            if held > cap:
                failures.add(
                    "round %d: live %s spent+reserved %d > cap %d" % (rnd, b["id"], held, cap)
                )
        until.wait(0.25)


# --- the ledger ----------------------------------------------------------------------------------


def ledger_rows(db):
    con = sqlite3.connect("file:%s?mode=ro" % db, uri=True, timeout=10)
    try:
        integrity = con.execute("PRAGMA integrity_check").fetchone()[0]
        rows = con.execute(
            "SELECT request_id, key_id, budgets, status, reserved_micro, actual_micro, lease"
            " FROM ledger"
        ).fetchall()
    finally:
        con.close()
    return integrity, rows


def sums(rows):
    """Per budget id: settled actual, open reserved; per key: requests, settled, open."""
    by_budget, by_key = {}, {}
    for rid, key_id, budgets, status, reserved, actual, lease in rows:
        settled = actual if status == "settled" else 0
        held = reserved if status == "open" else 0
        for b in budgets.split("\n") if budgets else []:
            s = by_budget.setdefault(b, [0, 0])
            s[0] += settled
            s[1] += held
        k = by_key.setdefault(key_id, [0, 0, 0])
        k[0] += 0 if lease else 1
        k[1] += settled
        k[2] += held
    return by_budget, by_key


def open_leases(rows):
    return {r[0] for r in rows if r[6] and r[3] == "open"}


def check_at_rest(db, caps, rnd, failures, ok_ids, graceful, leases_before, round_ids):
    integrity, rows = ledger_rows(db)
    if integrity != "ok":
        failures.add("round %d: integrity_check: %s" % (rnd, integrity))
    by_budget, _ = sums(rows)
    for bid, cap in caps.items():
        settled, held = by_budget.get(bid, [0, 0])
        if settled > cap:
            failures.add("round %d: %s settled %d > cap %d" % (rnd, bid, settled, cap))
        if settled + held > cap:
            failures.add(
                "round %d: %s settled %d + open %d = %d > cap %d"
                % (rnd, bid, settled, held, settled + held, cap)
            )
    request_rows = {r[0]: r[3] for r in rows if not r[6]}
    missing = [rid for rid, _ in ok_ids if rid not in request_rows]
    for rid in missing[:5]:
        failures.add("round %d: 2xx %s has no ledger row" % (rnd, rid))
    if len(missing) > 5:
        failures.add("round %d: %d 2xx answers have no ledger row in all" % (rnd, len(missing)))
    still_open = open_leases(rows)
    left = still_open - leases_before
    if graceful:
        if left:
            failures.add(
                "round %d: graceful stop left %d lease rows open: %s"
                % (rnd, len(left), sorted(left)[:3])
            )
        open_requests = [rid for rid in round_ids if request_rows.get(rid) == "open"]
        if open_requests:
            failures.add(
                "round %d: graceful stop left %d request rows open: %s"
                % (rnd, len(open_requests), open_requests[:3])
            )
    return rows, by_budget, still_open


def check_admin(port, db, caps, rnd, failures, what):
    """/admin/budgets and /admin/spend against the ledger (nothing in flight)."""
    _, rows = ledger_rows(db)
    by_budget, by_key = sums(rows)
    budgets = {b["id"]: b for b in http_json(port, "/admin/budgets")["data"]}
    for bid in caps:
        b = budgets.get(bid)
        if b is None:
            failures.add("round %d (%s): /admin/budgets has no %s" % (rnd, what, bid))
            continue
        settled, held = by_budget.get(bid, [0, 0])
        if micros(b["spent_usd"]) != settled or micros(b["reserved_usd"]) != held:
            failures.add(
                "round %d (%s): %s spent %d reserved %d, the ledger %d settled %d open"
                % (rnd, what, bid, micros(b["spent_usd"]), micros(b["reserved_usd"]), settled,
                   held)
            )
    spend = {r["group"]: r for r in http_json(port, "/admin/spend?group=key")["data"]}
    for key_id, (requests, settled, held) in by_key.items():
        r = spend.get(key_id)
        if r is None:
            failures.add("round %d (%s): /admin/spend has no key %s" % (rnd, what, key_id))
            continue
        got = (int(r["requests"]), micros(r["spend_usd"]), micros(r["open_reserved_usd"]))
        if got != (requests, settled, held):
            failures.add(
                "round %d (%s): /admin/spend %s (requests, spend, open) %s, the ledger %s"
                % (rnd, what, key_id, got, (requests, settled, held))
            )


# --- the rounds ----------------------------------------------------------------------------------


def wait_ready(port, proc, seconds=15):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if proc.poll() is not None:
            return False
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            c.request("GET", "/readyz")
            ok = c.getresponse().status == 200
            c.close()
            if ok:
                return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--config", required=True)
    ap.add_argument("--ledger", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--plan", required=True, help="JSON: keys, caps")
    ap.add_argument("--duration", type=float, default=240)
    ap.add_argument("--min-load", type=float, default=1.5)
    ap.add_argument("--max-load", type=float, default=4.0)
    ap.add_argument("--graceful-every", type=int, default=4)
    ap.add_argument("--idle-ms", type=int, default=20)
    ap.add_argument("--seed", type=int, default=20261205)
    ap.add_argument("--log", required=True)
    args = ap.parse_args()
    plan = json.load(open(args.plan))
    caps = {bid: micros(usd) for bid, usd in plan["caps"].items()}
    rng = random.Random(args.seed)
    failures = Failures()
    t0 = time.monotonic()
    rnd = 0
    leases_before = set()
    totals = {"ok": 0, "cut": 0, "refused": 0, "conn": 0, "kills": 0, "graceful": 0}
    logf = open(args.log, "ab")
    proc = None

    def start():
        p = subprocess.Popen(
            [args.bin, "serve", "--config", args.config], stdout=logf, stderr=logf
        )
        if not wait_ready(args.port, p):
            failures.add("round %d: the gateway did not start (see %s)" % (rnd, args.log))
            p.kill()
            p.wait()
            return None
        return p

    try:
        while time.monotonic() - t0 < args.duration - args.max_load - 5:
            rnd += 1
            graceful = args.graceful_every > 0 and rnd % args.graceful_every == 0
            # Every other graceful stop comes once the load has stopped, the others under load.
            quiet_stop = graceful and (rnd // args.graceful_every) % 2 == 0
            proc = start()
            if proc is None:
                break
            check_admin(args.port, args.ledger, caps, rnd, failures, "after restart")
            stats = Stats()
            stopping = threading.Event()
            load_s = rng.uniform(args.min_load, args.max_load)
            deadline = time.monotonic() + load_s + (0 if quiet_stop else 0.5)
            threads = []
            for k in plan["keys"]:
                for t in range(k["threads"]):
                    stream = t < k.get("stream_threads", 0)
                    tag = "r%d-%s-%d" % (rnd, k["name"], t)
                    th = threading.Thread(
                        target=client,
                        args=(args.port, k, k["model"], stream, k.get("pace_ms", 0), tag,
                              deadline, stopping, stats),
                        daemon=True,
                    )
                    th.start()
                    threads.append(th)
            until = threading.Event()
            mon = threading.Thread(
                target=monitor, args=(args.port, caps, until, failures, rnd), daemon=True
            )
            mon.start()
            if graceful and not quiet_stop:
                # SIGTERM with the clients still sending: the drain lets the requests in flight
                # finish (new ones get 503 or a refused connection), then closes the leases.
                time.sleep(load_s)
                stopping.set()
                proc.send_signal(signal.SIGTERM)
                rc = proc.wait(timeout=30)
                if rc != 0:
                    failures.add("round %d: graceful stop under load exited %d" % (rnd, rc))
                until.set()
                for th in threads:
                    th.join()
                mon.join()
                totals["graceful"] += 1
            elif graceful:
                for th in threads:
                    th.join()
                until.set()
                mon.join()
                # Quiet now: every lease of this gateway closes after its idle time.
                time.sleep(max(0.3, 10 * args.idle_ms / 1000.0))
                _, rows = ledger_rows(args.ledger)
                mine = open_leases(rows) - leases_before
                if mine:
                    failures.add(
                        "round %d: %d lease rows still open %.1f s after the load stopped"
                        % (rnd, len(mine), max(0.3, 10 * args.idle_ms / 1000.0))
                    )
                check_admin(args.port, args.ledger, caps, rnd, failures, "quiet")
                stopping.set()
                proc.send_signal(signal.SIGTERM)
                rc = proc.wait(timeout=30)
                if rc != 0:
                    failures.add("round %d: graceful stop exited %d" % (rnd, rc))
                totals["graceful"] += 1
            else:
                time.sleep(load_s)
                proc.send_signal(signal.SIGKILL)
                rc = proc.wait(timeout=30)
                if rc != -signal.SIGKILL:
                    failures.add("round %d: the gateway exited %s before the kill" % (rnd, rc))
                until.set()
                for th in threads:
                    th.join()
                mon.join()
                totals["kills"] += 1
            proc = None
            round_ids = [rid for rid, _ in stats.ok]
            rows, by_budget, leases_before = check_at_rest(
                args.ledger, caps, rnd, failures, stats.ok, graceful, leases_before, round_ids
            )
            for u in stats.unexpected[:5]:
                failures.add("round %d: unexpected answer %s" % (rnd, u))
            totals["ok"] += len(stats.ok)
            totals["cut"] += stats.cut
            totals["refused"] += stats.refused
            totals["conn"] += stats.conn_errors
            lease_rows = sum(1 for r in rows if r[6])
            near = ", ".join(
                "%s %.2f%%" % (bid, 100.0 * sum(by_budget.get(bid, [0, 0])) / cap)
                for bid, cap in sorted(caps.items())
                if cap > 0
            )
            print(
                "round %2d %-8s %4.1fs load: %5d 2xx (%d cut), %4d refused, %3d conn errors, %d draining;"
                " ledger %d rows, %d lease rows (%d open); settled+open of cap: %s"
                % (rnd, ("stop" if quiet_stop else "SIGTERM") if graceful else "kill -9", load_s, len(stats.ok), stats.cut,
                   stats.refused, stats.conn_errors, stats.draining, len(rows), lease_rows, len(leases_before),
                   near),
                flush=True,
            )
        # A last restart: what it rebuilt matches the ledger, then a graceful stop without load.
        rnd += 1
        proc = start()
        if proc is not None:
            check_admin(args.port, args.ledger, caps, rnd, failures, "final restart")
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
            proc = None
            check_at_rest(args.ledger, caps, rnd, failures, [], True, leases_before, [])
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
    _, rows = ledger_rows(args.ledger)
    by_budget, _ = sums(rows)
    print(
        "soak: %d rounds (%d kill -9, %d graceful) in %.0f s; %d complete 2xx checked in the"
        " ledger, %d cut by a kill, %d refused at a cap; ledger %d rows, %d lease rows (%d open"
        " after the last stop, left by kills)"
        % (rnd, totals["kills"], totals["graceful"], time.monotonic() - t0, totals["ok"],
           totals["cut"], totals["refused"], len(rows), sum(1 for r in rows if r[6]),
           len(open_leases(rows))),
    )
    for bid, cap in sorted(caps.items()):
        settled, held = by_budget.get(bid, [0, 0])
        print(
            "  %-22s cap $%10.4f  settled $%10.4f  open $%8.4f  (%.2f%% of the cap)"
            % (bid, cap / 1e6, settled / 1e6, held / 1e6, 100.0 * (settled + held) / cap)
        )
    if len(failures):
        print("soak: FAILED (%d failures)" % len(failures))
        return 1
    print("soak: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
