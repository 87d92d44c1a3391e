#!/usr/bin/env python3
"""SVG chart of a soak CSV (t_s,phase,rss_kib,fds,p99_ms): three stacked panels sharing the
time axis, the load phase shaded. Usage: soak_chart.py soak.csv > soak.svg"""

import csv
import sys

rows = list(csv.DictReader(open(sys.argv[1])))
W, PANEL, PAD, LEFT = 760, 150, 30, 70
series = [("RSS (MiB)", lambda r: float(r["rss_kib"]) / 1024),
          ("open fds", lambda r: float(r["fds"])),
          ("probe p99 (ms)", lambda r: float(r["p99_ms"]) if r["p99_ms"] else None)]
t = [float(r["t_s"]) for r in rows]
t_max = max(t) or 1
x = lambda v: LEFT + (W - LEFT - 20) * v / t_max
out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{len(series) * (PANEL + PAD) + 40}" '
       'font-family="sans-serif" font-size="11">',
       f'<text x="{LEFT}" y="16" font-size="13">portcullis soak: {sys.argv[1].split("/")[-1]}</text>']
load = [float(r["t_s"]) for r in rows if r["phase"] == "load"]
for i, (name, get) in enumerate(series):
    top = 30 + i * (PANEL + PAD)
    values = [get(r) for r in rows]
    known = [v for v in values if v is not None] or [0]
    hi = max(known) * 1.15 or 1
    y = lambda v: top + PANEL - PANEL * v / hi
    if load:
        out.append(f'<rect x="{x(min(load)):.1f}" y="{top}" width="{x(max(load)) - x(min(load)):.1f}" '
                   f'height="{PANEL}" fill="#fde9c9"/>')
    out.append(f'<rect x="{LEFT}" y="{top}" width="{W - LEFT - 20}" height="{PANEL}" fill="none" stroke="#999"/>')
    out.append(f'<text x="4" y="{top + 12}">{name}</text>')
    out.append(f'<text x="{LEFT - 4}" y="{top + 10}" text-anchor="end">{hi:.0f}</text>')
    out.append(f'<text x="{LEFT - 4}" y="{top + PANEL}" text-anchor="end">0</text>')
    pts = " ".join(f"{x(tv):.1f},{y(v):.1f}" for tv, v in zip(t, values) if v is not None)
    out.append(f'<polyline points="{pts}" fill="none" stroke="#1f5fa8" stroke-width="1.5"/>')
out.append(f'<text x="{W - 20}" y="{len(series) * (PANEL + PAD) + 30}" text-anchor="end">'
           f'seconds (shaded: under load)</text></svg>')
print("\n".join(out))
