#!/usr/bin/env python3
"""An SVG chart of peer-harness reports: each proxy's figures as ratios to nginx.

    benches/chart.py target/bench/peers-plain-*.json target/bench/peers-policy-*.json > docs/peers.svg
    benches/chart.py --table target/bench/peers-plain-*.json   # the same figures as Markdown

One panel per report (the template is read from the file name `peers-<template>-<stamp>.json`),
one row per figure, one bar per proxy other than nginx; the dashed line is nginx (1.0). Rows
marked "lower is better" are latency and memory. Only the standard library is used.
"""

import json
import re
import sys
from html import escape

# (key in the report's ratio_vs_nginx, label, higher is better)
FIGURES = [
    ("ka_rps_per_cpu_s", "keep-alive req per CPU-second", True),
    ("ka_p99_ms", "keep-alive p99 latency", False),
    ("h2_rps", "HTTP/2 req/s", True),
    ("hs_per_cpu_s", "full handshakes per CPU-second", True),
    ("rss_mib_per_1k_idle", "RSS per 1k idle connections", False),
]
COLORS = {"portcullis": "#2f6fb3", "haproxy": "#d98c2b", "caddy": "#6a9e3f", "direct": "#999999"}
ROW_H, BAR_H, LEFT, RIGHT, WIDTH = 34, 11, 250, 70, 820


def template_of(path, report):
    m = re.search(r"(?:peers|before|after)-(.+?)-(?:\d{8}T\d{6}Z|[0-9a-f]{7,40})\.json$", path)
    return m.group(1) if m else report.get("meta", {}).get("timestamp_utc", path)


def main(paths):
    if not paths:
        sys.exit("usage: chart.py REPORT.json [REPORT.json ...] > chart.svg")
    panels = []
    for path in paths:
        with open(path) as f:
            report = json.load(f)
        proxies = [p for p in report["results"] if p != report.get("reference", "nginx")]
        panels.append((template_of(path, report), report, proxies))

    top = max(
        [1.5]
        + [
            v
            for _, report, proxies in panels
            for p in proxies
            for v in report["results"][p]["ratio_vs_nginx"].values()
            if isinstance(v, (int, float))
        ]
    )
    scale_max = int(top * 2 + 0.999) / 2  # next half
    plot_w = WIDTH - LEFT - RIGHT

    def x(ratio):
        return LEFT + plot_w * min(ratio, scale_max) / scale_max

    out = []
    y = 40
    for template, report, proxies in panels:
        out.append(f'<text x="10" y="{y}" class="h">template: {escape(template)}</text>')
        y += 14
        panel_top = y
        for key, label, higher in FIGURES:
            ratios = [(p, report["results"][p]["ratio_vs_nginx"].get(key)) for p in proxies]
            if all(r is None for _, r in ratios):
                continue
            note = "" if higher else " (lower is better)"
            out.append(
                f'<text x="{LEFT - 8}" y="{y + ROW_H / 2 + 4}" text-anchor="end">'
                f"{escape(label)}{note}</text>"
            )
            by = y + (ROW_H - BAR_H * len(proxies)) / 2
            for p, r in ratios:
                if r is not None:
                    color = COLORS.get(p, "#7a5cb0")
                    out.append(
                        f'<rect x="{LEFT}" y="{by:.1f}" width="{x(r) - LEFT:.1f}" '
                        f'height="{BAR_H - 1}" fill="{color}"/>'
                    )
                    out.append(
                        f'<text x="{x(r) + 4:.1f}" y="{by + BAR_H - 2:.1f}" class="v">{r:.2f}x</text>'
                    )
                by += BAR_H
            y += ROW_H
        out.append(
            f'<line x1="{x(1.0):.1f}" y1="{panel_top - 4}" x2="{x(1.0):.1f}" y2="{y}" '
            'stroke="#333" stroke-dasharray="4 3"/>'
        )
        y += 26

    meta = panels[0][1].get("meta", {})
    host = meta.get("host", {})
    params = meta.get("params", {})
    legend_x = LEFT
    legend = []
    for p in sorted({p for _, _, ps in panels for p in ps}):
        legend.append(
            f'<rect x="{legend_x}" y="{y - 10}" width="12" height="10" fill="{COLORS.get(p, "#7a5cb0")}"/>'
            f'<text x="{legend_x + 16}" y="{y - 1}">{escape(p)}</text>'
        )
        legend_x += 110
    legend.append(
        f'<text x="{legend_x}" y="{y - 1}">dashed line: nginx = 1.0 (same run)</text>'
    )
    y += 18
    caption = (
        f"{host.get('cpus', '?')}-core {host.get('cpu_model', '')}, proxy pinned to one core; "
        f"medians of {params.get('runs', '?')} rounds x {params.get('duration_s', '?')} s; "
        f"{meta.get('timestamp_utc', '')}"
    )
    legend.append(f'<text x="10" y="{y}" class="c">{escape(caption)}</text>')
    y += 15
    legend.append(
        f'<text x="10" y="{y}" class="c">nginx and HAProxy run the same plain proxy '
        "configuration in every panel; only portcullis's template changes.</text>"
    )
    height = y + 12
    print(
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">\n'
        "<style>.h{font-weight:bold;font-size:13px}.v{font-size:11px}.c{fill:#555;font-size:11px}</style>\n"
        f'<rect width="{WIDTH}" height="{height}" fill="white"/>\n'
        f'<text x="10" y="18" class="h">portcullis and HAProxy beside nginx (ratio to nginx, '
        f"higher is better unless marked)</text>\n" + "\n".join(out + legend) + "\n</svg>"
    )


def table(paths):
    """Medians and ratios to nginx of each report, as a Markdown table."""
    cols = [
        ("ka_rps_per_cpu_s", "ka req/CPU-s", "{:.0f}"),
        ("ka_p99_ms", "ka p99 ms", "{:.2f}"),
        ("h2_rps", "h2 req/s", "{:.0f}"),
        ("hs_per_cpu_s", "handshakes/CPU-s", "{:.0f}"),
        ("rss_mib_per_1k_idle", "RSS MiB/1k idle", "{:.1f}"),
    ]
    print("| template | proxy | " + " | ".join(c[1] for c in cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for path in paths:
        with open(path) as f:
            report = json.load(f)
        for proxy, r in report["results"].items():
            cells = []
            for key, _, fmt in cols:
                v, ratio = r["median"].get(key), r["ratio_vs_nginx"].get(key)
                if v is None:
                    cells.append("-")
                elif proxy == report.get("reference", "nginx"):
                    cells.append(fmt.format(v))
                else:
                    cells.append(f"{fmt.format(v)} ({ratio:.2f}x)")
            print(f"| {template_of(path, report)} | {proxy} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--table"]:
        table(sys.argv[2:])
    else:
        main(sys.argv[1:])
