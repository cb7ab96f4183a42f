#!/usr/bin/env python3
"""Calls per request of the allocator (or any function), from bench/load/callgrind.sh's files.

Usage: bench/load/callgrind_calls.py DIR/callgrind.CONFIG.out [--top N] [FUNCTION...]

Counts the calls of each FUNCTION (default: malloc, free, realloc, operator new, and memalign,
which Asio's aligned_new comes to) in the loaded run, minus those of the idle run
(callgrind.CONFIG.idle.out next to it: start-up and shut-down), divided by the requests the
gateway handled (calls of handle_request). With --top N, also the N callers that call them most, per request.
"""
import collections
import re
import sys

HANDLER = "bw::gateway::handle_request(bw::gateway::Shared&"
DEFAULT = [
    "malloc",
    "free",
    "realloc",
    "operator new(unsigned long)",
    "memalign",  # aligned_alloc's and Asio's aligned_new's, in glibc's symbols
]


def read(path, targets):
    """Calls of each target, and of each (target, caller); the calls of the request handler."""
    names, fn, cfn = {}, None, None
    per_target, per_caller = collections.Counter(), collections.Counter()
    handled = 0
    name_re = re.compile(r"c?fn=\((\d+)\)(?: (.*))?")

    def name(line):
        m = name_re.match(line.rstrip("\n"))
        if not m:
            return line.rstrip("\n").split("=", 1)[1]
        if m.group(2) is not None:
            names[m.group(1)] = m.group(2)
        return names.get(m.group(1), "?")

    for line in open(path, errors="replace"):
        if line.startswith("fn="):
            fn, cfn = name(line), None
        elif line.startswith("cfn="):
            cfn = name(line)
        elif cfn is not None and line.startswith("calls="):
            n = int(line.split()[0][6:])
            if cfn.startswith(HANDLER):
                handled += n
            # A symbol may carry callgrind's "'2" recursion suffix.
            base = cfn.split("'")[0]
            if base in targets:
                per_target[base] += n
                per_caller[(base, fn.split("'")[0])] += n
            cfn = None
    return per_target, per_caller, handled


def main():
    args = sys.argv[1:]
    top = 0
    if "--top" in args:
        i = args.index("--top")
        top = int(args[i + 1])
        del args[i : i + 2]
    if not args:
        sys.exit(__doc__)
    path, targets = args[0], args[1:] or DEFAULT
    loaded, loaded_callers, handled = read(path, targets)
    idle_path = re.sub(r"\.out$", ".idle.out", path)
    try:
        idle, idle_callers, _ = read(idle_path, targets)
    except FileNotFoundError:
        print(f"(no {idle_path}: start-up calls not subtracted)")
        idle, idle_callers = collections.Counter(), collections.Counter()
    n = handled or 1
    print(f"handled requests: {handled}")
    for t in targets:
        print(f"  {(loaded[t] - idle[t]) / n:8.2f}  {t}")
    if top:
        diff = collections.Counter(
            {k: v - idle_callers.get(k, 0) for k, v in loaded_callers.items()}
        )
        print(f"top callers (per request):")
        for (t, caller), calls in diff.most_common(top):
            if calls <= 0:
                break
            print(f"  {calls / n:8.2f}  {t[:28]:28s} <- {caller[:140]}")


if __name__ == "__main__":
    main()
