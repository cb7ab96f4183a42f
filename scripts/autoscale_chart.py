#!/usr/bin/env python3
"""Draws docs/img/autoscale-spike.svg from the closed-loop autoscaling test's time series.

    BW_AUTOSCALE_REPORT_DIR=/tmp/as ctest -R AutoscaleLoop.PredictiveBeats
    python3 scripts/autoscale_chart.py /tmp/as docs/img/autoscale-spike.svg

Reads autoscale_{none,reactive,holt}.csv (t_s, offered_rps, queue_depth, replicas_spec,
replicas_running, p0_latency_ms) and draws four stacked panels over time: offered load,
model-server replicas (requested and running), gateway queue depth, and the worst P0 latency
of the requests sent in each half second. Standard library only.
"""
import csv
import os
import sys

METHODS = [("none", "no scaling", "#999999"), ("reactive", "reactive (queue > 20)", "#d95f02"),
           ("holt", "predictive (Holt)", "#1b9e77")]
W, PANEL_H, LEFT, RIGHT, TOP, GAP = 760, 150, 70, 20, 40, 40


def load(path):
    rows = []
    with open(path) as f:
        for r in csv.DictReader(f):
            rows.append({k: float(v) for k, v in r.items()})
    return rows


def nice_max(v):
    for m in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000):
        if v <= m:
            return m
    return v


def main():
    src, out = sys.argv[1], sys.argv[2]
    data = {m: load(os.path.join(src, f"autoscale_{m}.csv")) for m, _, _ in METHODS}
    t_max = max(r["t_s"] for rows in data.values() for r in rows)
    panels = [
        ("offered load (requests/s)", lambda r: r["offered_rps"], ["holt"], False),
        ("model-server replicas (running; dashed: requested)", lambda r: r["replicas_running"],
         None, True),
        ("gateway queue depth (requests)", lambda r: r["queue_depth"], None, False),
        ("worst P0 latency per 0.5 s (ms)", lambda r: r["p0_latency_ms"], None, False),
    ]
    h = TOP + len(panels) * (PANEL_H + GAP) + 30
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" '
           f'font-family="sans-serif" font-size="11">',
           f'<rect width="{W}" height="{h}" fill="white"/>']
    x_of = lambda t: LEFT + (W - LEFT - RIGHT) * t / t_max
    # Legend.
    lx = LEFT
    for m, label, color in METHODS:
        svg.append(f'<line x1="{lx}" y1="18" x2="{lx + 24}" y2="18" stroke="{color}" '
                   f'stroke-width="2.5"/><text x="{lx + 30}" y="22">{label}</text>')
        lx += 200
    for i, (title, get, only, dashed_spec) in enumerate(panels):
        y0 = TOP + i * (PANEL_H + GAP)
        vals = [get(r) for m in data for r in data[m] if get(r) >= 0]
        if dashed_spec:
            vals += [r["replicas_spec"] for m in data for r in data[m]]
        vmax = nice_max(max(vals) if vals else 1)
        y_of = lambda v: y0 + PANEL_H - PANEL_H * v / vmax
        svg.append(f'<text x="{LEFT}" y="{y0 - 6}" font-weight="bold">{title}</text>')
        svg.append(f'<rect x="{LEFT}" y="{y0}" width="{W - LEFT - RIGHT}" height="{PANEL_H}" '
                   f'fill="none" stroke="#ccc"/>')
        for k in range(0, 5):
            v = vmax * k / 4
            y = y_of(v)
            svg.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{W - RIGHT}" y2="{y:.1f}" '
                       f'stroke="#eee"/><text x="{LEFT - 6}" y="{y + 4:.1f}" '
                       f'text-anchor="end">{v:g}</text>')
        for t in range(0, int(t_max) + 1, 10):
            svg.append(f'<text x="{x_of(t):.1f}" y="{y0 + PANEL_H + 14}" '
                       f'text-anchor="middle">{t}s</text>')
        for m, _, color in METHODS:
            if only and m not in only:
                continue
            color = "#555555" if only else color
            pts = [(x_of(r["t_s"]), y_of(get(r))) for r in data[m] if get(r) >= 0]
            if pts:
                svg.append('<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>' % (
                    color, " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)))
            if dashed_spec:
                pts = [(x_of(r["t_s"]), y_of(r["replicas_spec"])) for r in data[m]]
                svg.append('<polyline fill="none" stroke="%s" stroke-width="1.2" '
                           'stroke-dasharray="4,3" points="%s"/>' % (
                               color, " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)))
    svg.append("</svg>")
    with open(out, "w") as f:
        f.write("\n".join(svg) + "\n")


if __name__ == "__main__":
    main()
