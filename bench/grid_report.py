#!/usr/bin/env python3
"""bench/grid's results: medians per cell and server, ratios to the zero-parse
ceiling and to the faster Asio backend, the issue-12 goals checked, and an
SVG heat map per content size (no plotting library needed).

  grid_report.py GRID.jsonl OUTDIR      the tables (stdout) and OUTDIR/grid-<size>.svg
  grid_report.py GRID.jsonl --cell C:D:S  one line for that cell (progress)
"""
import json
import statistics
import sys
from collections import defaultdict

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
machine = next((r for r in rows if r["bench"] == "machine"), {})
runs = defaultdict(list)
for r in rows:
    if r["bench"] == "load":
        runs[(r["connections"], r["depth"], r["size"], r["mode"])].append(r)


def med(cell, mode, key):
    vals = [r[key] for r in runs.get(cell + (mode,), []) if not r.get("failed") and key in r]
    return statistics.median(vals) if vals else None


def size_name(s):
    return f"{s // 1048576} MiB" if s >= 1048576 else f"{s // 1024} KiB" if s >= 1024 else f"{s} B"


def summary(cell):
    rf, ce = med(cell, "ringframe", "msgs_per_s"), med(cell, "ceiling", "msgs_per_s")
    rf_cpu, ce_cpu = med(cell, "ringframe", "server_cpu_ns_per_msg"), med(cell, "ceiling", "server_cpu_ns_per_msg")
    asio = [(med(cell, m, "msgs_per_s"), m) for m in ("asio-expert-epoll", "asio-expert-uring")]
    asio = [a for a in asio if a[0]]
    best = max(asio) if asio else (None, None)
    return {
        "rf": rf, "ceiling": ce, "rf_cpu": rf_cpu, "ceiling_cpu": ce_cpu,
        "thr": rf / ce if rf and ce else None,
        "cpu": rf_cpu / ce_cpu if rf_cpu and ce_cpu else None,
        "asio": best[0], "asio_name": best[1],
        "vs_asio": rf / best[0] if rf and best[0] else None,
        "rf_p99": med(cell, "ringframe", "p99_us"),
        "asio_p99": med(cell, best[1], "p99_us") if best[1] else None,
        "ceiling_p99": med(cell, "ceiling", "p99_us"),
    }


fmt = lambda v, f="{:,.0f}": "-" if v is None else f.format(v)

if len(sys.argv) > 3 and sys.argv[2] == "--cell":
    c, d, s = (int(x) for x in sys.argv[3].split(":"))
    m = summary((c, d, s))
    print(f"{c:>4} x {d:>2} x {size_name(s):>7}: ringframe {fmt(m['rf'])} msg/s, ceiling {fmt(m['ceiling'])} "
          f"({fmt(m['thr'], '{:.2f}')}x, CPU {fmt(m['cpu'], '{:.2f}')}x), "
          f"{m['asio_name'] or 'asio'} {fmt(m['asio'])} ({fmt(m['vs_asio'], '{:.2f}')}x)", flush=True)
    sys.exit(0)

outdir = sys.argv[2]
cells = sorted({k[:3] for k in runs})
print(f"Machine: {machine.get('cpu')}, {machine.get('cores')} cores, Linux {machine.get('kernel')}; "
      f"{machine.get('date')}; {machine.get('seconds_per_run')} s per run, medians of {machine.get('rounds')} "
      "alternating rounds; ringframe-server --mode frame-echo --threads 1 against bench/peers.\n")
print("Goals (issue 12): throughput >= 0.9x the ceiling and server CPU per message <= 1.15x its; "
      "throughput >= the faster Asio backend's and p99 no worse. Met: y, not: **n**.\n")
met_total = [0, 0]
for size in sorted({c[2] for c in cells}):
    print(f"### {size_name(size)}\n")
    print("| conns x depth | ringframe msg/s | ceiling msg/s | / ceiling | CPU/msg ringframe | CPU / ceiling's "
          "| best Asio msg/s | / Asio | p99 ringframe | p99 Asio | goals |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for cell in [c for c in cells if c[2] == size]:
        m = summary(cell)
        g1 = m["thr"] is not None and m["thr"] >= 0.9 and m["cpu"] is not None and m["cpu"] <= 1.15
        g2 = m["vs_asio"] is None or (m["vs_asio"] >= 1.0 and (m["asio_p99"] is None or m["rf_p99"] <= m["asio_p99"]))
        met_total[0] += g1 and g2
        met_total[1] += 1
        asio = f"{fmt(m['asio'])} ({(m['asio_name'] or '').replace('asio-expert-', '')})" if m["asio"] else "-"
        print(f"| {cell[0]} x {cell[1]} | {fmt(m['rf'])} | {fmt(m['ceiling'])} | {fmt(m['thr'], '{:.2f}')} "
              f"| {fmt(m['rf_cpu'] and m['rf_cpu'] / 1000, '{:.1f}')} us | {fmt(m['cpu'], '{:.2f}')} | {asio} "
              f"| {fmt(m['vs_asio'], '{:.2f}')} | {fmt(m['rf_p99'])} us | {fmt(m['asio_p99'])} us "
              f"| {'y' if g1 else '**n**'} {'y' if g2 else '**n**'} |")
    print()
    # The heat map: connections down, depth across; colour by throughput
    # against the ceiling; each cell says that ratio and the CPU ratio.
    conns = sorted({c[0] for c in cells if c[2] == size})
    depths = sorted({c[1] for c in cells if c[2] == size})
    w, h, x0, y0 = 150, 60, 90, 50
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{x0 + w * len(depths) + 20}" '
           f'height="{y0 + h * len(conns) + 40}" font-family="sans-serif" font-size="13">',
           f'<text x="10" y="20" font-size="15">{size_name(size)}: ringframe / zero-parse ceiling '
           '(throughput; CPU per message)</text>']
    for j, d in enumerate(depths):
        svg.append(f'<text x="{x0 + j * w + w / 2}" y="{y0 - 8}" text-anchor="middle">depth {d}</text>')
    for i, c in enumerate(conns):
        svg.append(f'<text x="{x0 - 8}" y="{y0 + i * h + h / 2 + 4}" text-anchor="end">{c} conns</text>')
        for j, d in enumerate(depths):
            m = summary((c, d, size))
            r = m["thr"]
            colour = "#dddddd" if r is None else "#e06666" if r < 0.8 else "#f6b26b" if r < 0.9 else \
                "#ffe599" if r < 1.0 else "#93c47d"
            svg.append(f'<rect x="{x0 + j * w}" y="{y0 + i * h}" width="{w - 2}" height="{h - 2}" fill="{colour}"/>')
            label = "-" if r is None else f"{r:.2f}x; CPU {fmt(m['cpu'], '{:.2f}')}x"
            svg.append(f'<text x="{x0 + j * w + w / 2}" y="{y0 + i * h + h / 2 + 4}" text-anchor="middle">{label}</text>')
    svg.append(f'<text x="10" y="{y0 + h * len(conns) + 25}" font-size="11">red &lt; 0.8, orange &lt; 0.9, '
               'yellow &lt; 1.0, green &gt;= 1.0 (throughput)</text></svg>')
    with open(f"{outdir}/grid-{size}.svg", "w") as f:
        f.write("\n".join(svg) + "\n")
print(f"Cells meeting every goal: {met_total[0]} of {met_total[1]}.")
