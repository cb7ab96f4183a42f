#!/usr/bin/env python3
"""The event loop's waits for its core, from a `perf sched record` of the server's cpu.

While the server under test is loaded (bench/load/isolated.sh pins it to cpu0 with every thread
it has), record the cpu's scheduler switches for a few seconds:

    perf sched record -C 0 -o sched.data -- sleep 3
    bench/load/sched_waits.py sched.data [LOOP_REGEX]

It prints how often the event loop (a thread named bw-worker-0, or nginx's worker) was taken off
the core while runnable, how long it waited each time (p50/p90/p99/max), which threads ran
meanwhile, the longest waits, and each busy thread's stretches on the core and how they ended
(R: it yielded or was preempted; S/D: it slept). A request in flight waits out every such wait,
so their long tail shows in the p99 latency.
"""
import collections
import re
import subprocess
import sys

SWITCH = re.compile(r'([\d.]+):\s+sched:sched_switch:\s+prev_comm=(.*?) prev_pid=(\d+) '
                    r'prev_prio=\d+ prev_state=(\S+) ==> next_comm=(.*?) next_pid=(\d+)')


def switches(path):
    out = subprocess.run(['perf', 'script', '-i', path, '-C', '0', '-F', 'time,event,trace'],
                         capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        m = SWITCH.search(line)
        if m:
            yield float(m[1]), m[2], m[4][0], m[5]


def quantiles(values):
    v = sorted(values)
    q = lambda p: v[min(len(v) - 1, int(p * len(v)))]
    return f"p50 {q(.5):.0f} p90 {q(.9):.0f} p99 {q(.99):.0f} max {v[-1]:.0f}"


def main():
    path = sys.argv[1]
    loop = re.compile(sys.argv[2] if len(sys.argv) > 2 else r'^(bw-worker-0|nginx)$')
    family = lambda name: re.sub(r'\d+$', '', name)
    waits, who = [], collections.Counter()
    out_at, ran, last, last_t = None, collections.Counter(), None, None
    on_at, stretches = {}, collections.defaultdict(list)
    first = end = None
    for t, prev, state, nxt in switches(path):
        first = first if first is not None else t
        end = t
        if out_at is not None and last is not None:
            ran[last] += t - last_t
        last, last_t = nxt, t
        if prev in on_at:
            stretches[prev].append(((t - on_at.pop(prev)) * 1e6, state))
        on_at[nxt] = t
        if loop.match(prev) and state == 'R':
            out_at, ran = t, collections.Counter()
        elif loop.match(nxt) and out_at is not None:
            waits.append((t - out_at, dict(ran)))
            for k, v in ran.items():
                who[family(k)] += v
            out_at = None
        elif loop.match(prev):
            out_at = None
    span = (end - first) if first is not None else 0
    total = sum(d for d, _ in waits)
    print(f"{span:.2f} s recorded: the loop was taken off the core {len(waits)} times while "
          f"runnable and waited {total * 1e3:.1f} ms ({100 * total / span if span else 0:.2f} %)")
    if waits:
        us = [d * 1e6 for d, _ in waits]
        print(f"its waits, us: {quantiles(us)}; over 200 us: {sum(1 for d in us if d > 200)}, "
              f"over 500 us: {sum(1 for d in us if d > 500)}")
    print("ran meanwhile, ms: " + ", ".join(f"{k} {v * 1e3:.1f}" for k, v in who.most_common(8)))
    for d, r in sorted(waits, key=lambda x: -x[0])[:8]:
        print(f"  {d * 1e6:7.0f} us: " +
              ", ".join(f"{k} {v * 1e6:.0f}" for k, v in sorted(r.items(), key=lambda x: -x[1])[:4]))
    print("stretches on the core, us:")
    for name in sorted(stretches, key=lambda k: -sum(d for d, _ in stretches[k]))[:6]:
        for st in 'RSD':
            ds = [d for d, s in stretches[name] if s == st]
            if ds:
                print(f"  {name:16} ended {st}: {len(ds):5}, {sum(ds) / 1e3:7.1f} ms, {quantiles(ds)}")


if __name__ == '__main__':
    main()
