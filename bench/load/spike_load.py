#!/usr/bin/env python3
"""Open-loop spike load generator for Bellwether (standard library only).

Replays a linear ramp of the offered rate from --start-rpm to --end-rpm over --duration seconds of
scenario time, compressed --compress times (90 s at 10x = 9 s of wall time; the per-minute
rates stay as stated, so the peak pressure is the same and only the ramp is shorter). Each
request is sent at its scheduled time on a fresh loopback connection, whatever happened to the
earlier ones (open loop), and its latency is measured from that INTENDED send time, so a slow
generator or a slow server cannot hide latency (no coordinated omission).

Priorities follow a fixed 10/60/30 pattern (request i: i % 10 == 0 -> P0, 1..6 -> P1, 7..9 ->
P2) sent as X-Priority. The report gives, per priority: success rate, p50/p95/p99 latency of
the successful requests, shed counts by refusal code, and anything unclean.
"""
import argparse
import asyncio
import json
import math
import sys
import time
from collections import Counter, defaultdict

QUEUE_CODES = ("queue_full", "shed_by_higher_priority", "overloaded", "queue_timeout")


def schedule(start_rpm, end_rpm, wall_s):
    """Send times (seconds from t0) of a linear ramp r(t) = r0 + (r1 - r0) t / T, r in req/s."""
    r0, r1 = start_rpm / 60.0, end_rpm / 60.0
    a = (r1 - r0) / (2 * wall_s)  # N(t) = r0 t + a t^2
    total = int(r0 * wall_s + a * wall_s * wall_s)
    times = []
    for k in range(total):
        if a > 0:
            t = (-r0 + math.sqrt(r0 * r0 + 4 * a * k)) / (2 * a)
        else:
            t = k / r0
        times.append(t)
    return times


def priority_of(i):
    m = i % 10
    return 0 if m == 0 else (1 if m <= 6 else 2)


def percentile(values, q):
    if not values:
        return float("nan")
    v = sorted(values)
    rank = max(1, min(len(v), math.ceil(q * len(v))))
    return v[rank - 1]


async def http_request(host, port, raw, timeout):
    """Sends raw bytes, returns (status, headers dict, body) or raises."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        writer.write(raw)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        if "content-length" in headers:
            body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), timeout)
        else:
            body = await asyncio.wait_for(reader.read(), timeout)
        return status, headers, body
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except Exception:
            pass


async def one(i, t_intended, args, loop, t0, results, lag):
    now = loop.time()
    if now < t0 + t_intended:
        await asyncio.sleep(t0 + t_intended - now)
    lag.append(loop.time() - (t0 + t_intended))
    p = priority_of(i)
    body = json.dumps({"model": args.model, "messages": [{"role": "user", "content": "spike %d" % i}]})
    raw = ("POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
           "Authorization: Bearer %s\r\nContent-Type: application/json\r\nX-Priority: %d\r\n"
           "Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (args.key, p, len(body), body)).encode()
    rec = {"i": i, "p": p, "t": t_intended}
    try:
        status, headers, resp = await http_request(args.host, args.port, raw, args.timeout)
        rec["status"] = status
        rec["retry_after"] = headers.get("retry-after", "")
        if status != 200:
            try:
                err = json.loads(resp)["error"]
                rec["code"] = err.get("code") or err.get("type") or ""
            except Exception:
                rec["code"] = "<not an OpenAI error body>"
    except Exception as e:  # connection refused/reset, timeout
        rec["status"] = 0
        rec["code"] = type(e).__name__
    rec["latency"] = loop.time() - (t0 + t_intended)
    results.append(rec)


async def get_json(host, port, path, key=None):
    hdr = "Authorization: Bearer %s\r\n" % key if key else ""
    raw = ("GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%sConnection: close\r\n\r\n" % (path, hdr)).encode()
    status, _, body = await http_request(host, port, raw, 5)
    return json.loads(body) if status == 200 else {"status": status}


async def watch_queue(args, stop, samples, loop, t0):
    while not stop.is_set():
        try:
            m = await get_json(args.host, args.port, "/v1/metrics/queue", args.key)
            samples.append((loop.time() - t0, m.get("queue_depth", -1), m.get("in_flight", -1)))
        except Exception:
            pass
        try:
            await asyncio.wait_for(stop.wait(), 0.25)
        except asyncio.TimeoutError:
            pass


async def main_async(args):
    wall = args.duration / args.compress
    times = schedule(args.start_rpm, args.end_rpm, wall)
    loop = asyncio.get_running_loop()
    t0 = loop.time() + 0.2
    results, lag, samples = [], [], []
    stop = asyncio.Event()
    watcher = asyncio.create_task(watch_queue(args, stop, samples, loop, t0))
    tasks = [asyncio.create_task(one(i, t, args, loop, t0, results, lag)) for i, t in enumerate(times)]
    await asyncio.gather(*tasks)
    stop.set()
    await watcher
    final_metrics = await get_json(args.host, args.port, "/v1/metrics/queue", args.key)
    sim_stats = {}
    if args.sim_port:
        sim_stats = await get_json(args.host, args.sim_port, "/sim/stats")
    return wall, times, results, lag, samples, final_metrics, sim_stats


def report(args, wall, times, results, lag, samples, final_metrics, sim_stats):
    out = []
    w = out.append
    w("offered: %d requests, %.0f -> %.0f req/min over %.0f s scenario time, compressed %gx -> %.1f s wall"
      % (len(times), args.start_rpm, args.end_rpm, args.duration, args.compress, wall))
    w("generator send lag (actual - intended): p50 %.1f ms, p99 %.1f ms, max %.1f ms"
      % (percentile(lag, .5) * 1e3, percentile(lag, .99) * 1e3, max(lag) * 1e3))
    w("")
    w("%-4s %6s %6s %8s %9s %9s %9s  %s" % ("prio", "sent", "ok", "success", "p50 ms", "p95 ms", "p99 ms",
                                            "refusals (code=count)"))
    by_p = defaultdict(list)
    for r in results:
        by_p[r["p"]].append(r)
    unclean = []
    other_clean = Counter()
    for p in (0, 1, 2):
        rs = by_p[p]
        ok = [r for r in rs if r["status"] == 200]
        lat = [r["latency"] * 1e3 for r in ok]
        codes = Counter()
        for r in rs:
            if r["status"] == 200:
                continue
            codes["%d:%s" % (r["status"], r.get("code", ""))] += 1
            clean = r["status"] in (429, 503) and r.get("retry_after") and not r.get("code", "").startswith("<")
            if not clean:
                unclean.append(r)
            elif r.get("code") not in QUEUE_CODES:
                other_clean[p] += 1
        w("P%-3d %6d %6d %7.1f%% %9.1f %9.1f %9.1f  %s" % (
            p, len(rs), len(ok), 100.0 * len(ok) / max(1, len(rs)), percentile(lat, .5),
            percentile(lat, .95), percentile(lat, .99),
            " ".join("%s=%d" % kv for kv in sorted(codes.items())) or "-"))
    shed = {p: sum(1 for r in by_p[p] if r.get("code") in QUEUE_CODES) for p in (0, 1, 2)}
    w("shed by the admission queue (503 queue_full/shed_by_higher_priority/overloaded/queue_timeout): "
      "P0 %d, P1 %d, P2 %d" % (shed[0], shed[1], shed[2]))
    w("other clean refusals (429/503 with Retry-After, not from the queue, e.g. provider limits): "
      "P0 %d, P1 %d, P2 %d" % (other_clean[0], other_clean[1], other_clean[2]))
    w("unclean answers (not 200, not 429/503 with Retry-After and an OpenAI error body; 0 = timeout/reset): %d" % len(unclean))
    for r in unclean[:5]:
        w("  e.g. P%d status %d code %s" % (r["p"], r["status"], r.get("code", "")))
    w("")
    # Timeline in tenths of the ramp: offered rate (scenario req/min), goodput, refusals.
    w("timeline (tenths of the ramp; rates in req/min as offered):")
    w("%-9s %9s %9s %9s %9s" % ("slice", "offered", "ok", "refused", "ok p99"))
    slices = defaultdict(list)
    for r in results:
        slices[min(9, int(10 * r["t"] / wall))].append(r)
    for s in range(10):
        rs = slices[s]
        ok = [r for r in rs if r["status"] == 200]
        per_min = 60.0 / (wall / 10)
        w("%3d-%3d%%  %9.0f %9.0f %9.0f %9.1f" % (
            s * 10, s * 10 + 10, len(rs) * per_min, len(ok) * per_min, (len(rs) - len(ok)) * per_min,
            percentile([r["latency"] * 1e3 for r in ok], .99)))
    if samples:
        w("")
        w("queue (polled every 250 ms): max depth %d, max in_flight %d; after the run: depth %s, in_flight %s"
          % (max(s[1] for s in samples), max(s[2] for s in samples),
             final_metrics.get("queue_depth"), final_metrics.get("in_flight")))
    w("gateway /v1/metrics/queue after the run: " + json.dumps(final_metrics, separators=(",", ":")))
    if sim_stats:
        w("simulator /sim/stats after the run: " + json.dumps(sim_stats, separators=(",", ":")))
    return "\n".join(out), len(unclean)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True, help="gateway port")
    ap.add_argument("--sim-port", type=int, default=0, help="simulator port (for /sim/stats)")
    ap.add_argument("--key", required=True)
    ap.add_argument("--model", default="spike-model")
    ap.add_argument("--start-rpm", type=float, default=500)
    ap.add_argument("--end-rpm", type=float, default=15000)
    ap.add_argument("--duration", type=float, default=90, help="scenario seconds")
    ap.add_argument("--compress", type=float, default=10, help="time compression factor")
    ap.add_argument("--timeout", type=float, default=30, help="per request, seconds")
    args = ap.parse_args()
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        sys.exit("refusing to load a non-loopback host")
    if not (1 <= args.compress <= 100) or args.duration / args.compress > 600:
        sys.exit("bounded runs only: 1 <= compress <= 100 and at most 600 s of wall time")
    started = time.time()
    res = asyncio.run(main_async(args))
    text, unclean = report(args, *res)
    print(text)
    print("wall time of the run: %.1f s" % (time.time() - started))
    return 0


if __name__ == "__main__":
    sys.exit(main())
