#!/usr/bin/env python3
"""Fills a cost database (the gateway's ledger.path) with synthetic ledger rows, for measuring
start-up recovery and the spend report on a large ledger.

The schema is the real one: the file is created (and migrated) by `bellwether keys list --db`,
then rows are inserted the way the ledger writes them (budgets as lines, settled rows with
their actual cost, a few open reservations and closed lease rows).

usage: make_ledger.py BELLWETHER DB ROWS [--days 90] [--keys 200] [--now-ms MS]
"""
import argparse
import random
import sqlite3
import subprocess
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bellwether")
    ap.add_argument("db")
    ap.add_argument("rows", type=int)
    ap.add_argument("--days", type=int, default=90)
    ap.add_argument("--keys", type=int, default=200)
    ap.add_argument("--tenants", type=int, default=20)
    ap.add_argument("--open", type=int, default=50, help="open reservations (newest rows)")
    ap.add_argument("--now-ms", type=int, default=int(time.time() * 1000))
    a = ap.parse_args()

    subprocess.run([a.bellwether, "keys", "list", "--db", a.db], check=True,
                   stdout=subprocess.DEVNULL)
    db = sqlite3.connect(a.db)
    db.execute("PRAGMA synchronous=OFF")
    version = db.execute("PRAGMA user_version").fetchone()[0]
    rng = random.Random(1)
    models = ["gpt-4.1", "gpt-4.1-mini", "claude-sonnet", "gemini-flash", "deepseek-v3.2"]
    span_ms = a.days * 86_400_000
    start_ms = a.now_ms - span_ms

    def rows():
        for i in range(a.rows):
            k = rng.randrange(a.keys)
            tenant = f"tenant-{k % a.tenants}"
            key = f"key-{k}"
            budgets = f"global/monthly\nkey:{key}/monthly\ntenant:{tenant}/monthly"
            created = start_ms + (i * span_ms) // a.rows  # in time order, like the writer
            prompt = rng.randrange(50, 4000)
            completion = rng.randrange(1, 800)
            actual = prompt * 2 + completion * 8
            reserved = actual + rng.randrange(0, 5000)
            is_open = i >= a.rows - a.open
            lease = 1 if i % 1000 == 999 and not is_open else 0
            yield (f"req-{i:012d}", key, tenant, models[k % len(models)], budgets, reserved,
                   0 if is_open else actual, 0 if is_open else prompt,
                   0 if is_open else completion, "open" if is_open else "settled", created,
                   0 if is_open else created + 1500, lease)

    t0 = time.time()
    db.execute("BEGIN")
    db.executemany(
        "INSERT INTO ledger (request_id, key_id, tenant_id, model, budgets, reserved_micro,"
        " actual_micro, prompt_tokens, completion_tokens, status, created_unix_ms,"
        " settled_unix_ms, lease) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", rows())
    db.execute("COMMIT")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    print(f"{a.rows} rows over {a.days} days into {a.db} (schema v{version}) in "
          f"{time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
