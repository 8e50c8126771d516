#!/usr/bin/env python3
"""Turns bench/run's results.jsonl into markdown tables, ratios and PNG plots
(gnuplot, when installed)."""
import json
import os
import shutil
import subprocess
import sys

jsonl, outdir = sys.argv[1], sys.argv[2]
rows = [json.loads(l) for l in open(jsonl) if l.strip()]
machine = next((r for r in rows if r["bench"] == "machine"), {})
decode = [r for r in rows if r["bench"] == "decode"]
encode = [r for r in rows if r["bench"] == "encode"]
load = [r for r in rows if r["bench"] == "load"]
memory = [r for r in rows if r["bench"] == "memory"]

syscall = next((r for r in rows if r["bench"] == "syscall_cost"), None)
print(f"Machine: {machine.get('cpu')}, {machine.get('cores')} cores, Linux {machine.get('kernel')}; {machine.get('date')}\n")
if syscall:
    # The epoll backend pays two system calls per request at depth 1.
    print(f"A system call costs {syscall['recv_eagain_ns']:.0f} ns here (recv on an empty socket; "
          f"getppid {syscall['getppid_ns']:.0f} ns): read the epoll rows with it.", end="")
    if "page_after_call_ns" in syscall:
        # Where each call flushes the TLB, so does every page a message's path touches.
        print(f" A page first touched after a call costs {syscall['page_after_call_ns']:.1f} ns "
              f"({syscall['page_ns']:.1f} ns without one).", end="")
    print("\n")

# Google Benchmark builds (bench/codec_jsonl.py) add the repetitions and each
# median's coefficient of variation; the hand-timed build gives medians only.
gb = next((r for r in decode if r.get("source") == "google-benchmark"), None)
cvs = lambda r, k: f" ({100 * r[k]:.0f}%)" if r.get(k) is not None else ""
if gb:
    print(f"### Decode (ringframe-bench-codec on Google Benchmark; median of {gb['repetitions']} repetitions, "
          "per CPU second; (n%) = coefficient of variation)\n")
else:
    print("### Decode (ringframe-bench-codec, hand-timed; median of repetitions)\n")
print("| content | feed | msg/s | GB/s | of memcpy | nlohmann msg/s | ours / nlohmann |")
print("|---:|---|---:|---:|---:|---:|---:|")
for r in decode:
    nl = r["nlohmann_msgs_per_s"]
    ratio = f"{r['msgs_per_s'] / nl:.1f}x" if nl else "-"
    print(f"| {r['size']} B | {r['feed']} | {r['msgs_per_s']:,.0f}{cvs(r, 'msgs_per_s_cv')} | {r['gb_per_s']:.2f} | "
          f"{100 * r['gb_per_s'] / r['memcpy_gb_per_s']:.0f}% | {nl:,.0f}{cvs(r, 'nlohmann_msgs_per_s_cv') if nl else ''} | {ratio} |")
print("\n| content | 1-byte chunks vs whole buffer, time per message |")
print("|---:|---:|")
for size in sorted({r["size"] for r in decode}):
    w = next(r for r in decode if r["size"] == size and r["feed"] == "whole")
    b = next(r for r in decode if r["size"] == size and r["feed"] == "1B")
    print(f"| {size} B | {w['msgs_per_s'] / b['msgs_per_s']:.1f}x |")
print("\n### Encode\n")
print("| content | msg/s | GB/s |")
print("|---:|---:|---:|")
for r in encode:
    print(f"| {r['size']} B | {r['msgs_per_s']:,.0f}{cvs(r, 'msgs_per_s_cv')} | {r['gb_per_s']:.2f} |")

print("\n### End to end (ringframe-load; framed = frame-echo server, raw = echo server, ceiling = peer-uring-echo)\n")
print("| connections | depth | content | framed msg/s | raw msg/s | ceiling msg/s | framed / raw | framed / ceiling | raw / ceiling | server CPU ns/msg framed / raw / ceiling | framed p50 / p99 / p99.9 us | raw p50 / p99 / p99.9 us | ceiling p50 / p99 / p99.9 us |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|---|")
keys = []
for r in load:
    if r["mode"].startswith("asio-"):
        continue
    k = (r["connections"], r["depth"], r["size"])
    if k not in keys:
        keys.append(k)
by = {(r["mode"],) + (r["connections"], r["depth"], r["size"]): r for r in load}
for k in keys:
    f, w, c = by.get(("framed",) + k), by.get(("raw",) + k), by.get(("ceiling",) + k)
    if not f or not w or not c:
        continue
    lat = lambda r: f"{r['p50_us']:.0f} / {r['p99_us']:.0f} / {r['p999_us']:.0f}"
    cpu = " / ".join(f"{r.get('server_cpu_ns_per_msg', -1):.0f}" for r in (f, w, c))
    print(f"| {k[0]} | {k[1]} | {k[2]} B | {f['msgs_per_s']:,.0f} | {w['msgs_per_s']:,.0f} | {c['msgs_per_s']:,.0f} | "
          f"{f['msgs_per_s'] / w['msgs_per_s']:.2f} | {f['msgs_per_s'] / c['msgs_per_s']:.2f} | {w['msgs_per_s'] / c['msgs_per_s']:.2f} | "
          f"{cpu} | {lat(f)} | {lat(w)} | {lat(c)} |")
peers = [r for r in load if r["mode"].startswith("asio-")]
if peers:
    print("\n### Against Boost.Asio (same load, 50 connections, 64 B)\n")
    print("| server | depth | msg/s | server CPU ns/msg | p99 us | framed ringframe / this |")
    print("|---|---:|---:|---:|---:|---:|")
    for depth in (16, 1):
        rows = [("framed (ringframe)", by.get(("framed", 50, depth, 64))), ("ceiling", by.get(("ceiling", 50, depth, 64)))]
        rows += [(r["mode"], r) for r in peers if r["depth"] == depth]
        f = by.get(("framed", 50, depth, 64))
        for name, r in rows:
            if r and f:
                print(f"| {name} | {depth} | {r['msgs_per_s']:,.0f} | {r.get('server_cpu_ns_per_msg', -1):,.0f} | "
                      f"{r['p99_us']:.0f} | {f['msgs_per_s'] / r['msgs_per_s']:.2f} |")
ab = [r for r in load if r["mode"].startswith("ab:")]
if ab:
    import statistics
    print("\n### Side by side, alternating runs (50 connections; medians of 3)\n")
    print("| A | B | depth | content | A msg/s | B msg/s | B / A | A CPU ns/msg | B CPU ns/msg | B / A CPU | A p99 us | B p99 us |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    pairs = [("ab:ceiling", "ab:framed"), ("ab:ceiling", "ab:ceiling-fixed-files"), ("ab:framed", "ab:framed-no-read-deadlines"),
             ("ab:framed", "ab:framed-multishot-recv"), ("ab:ceiling", "ab:ceiling-multishot-recv"),
             ("ab:ceiling", "ab:ceiling-epoll")]
    for a, b in pairs:
        # ab() runs A then B in turn: pair each B run with the A run before it.
        runs = [(ab[i - 1], ab[i]) for i in range(1, len(ab)) if ab[i]["mode"] == b and ab[i - 1]["mode"] == a]
        points = sorted({(rb["size"], rb["depth"]) for _, rb in runs}, key=lambda p: (p[0], -p[1]))
        for size, depth in points:
            sel = [(x, y) for x, y in runs if y["size"] == size and y["depth"] == depth]
            ra, rb = [x for x, _ in sel], [y for _, y in sel]
            med = lambda rs, k: statistics.median(r[k] for r in rs)
            ta, tb = med(ra, "msgs_per_s"), med(rb, "msgs_per_s")
            ca, cb = med(ra, "server_cpu_ns_per_msg"), med(rb, "server_cpu_ns_per_msg")
            print(f"| {a[3:]} | {b[3:]} | {depth} | {size} B | {ta:,.0f} | {tb:,.0f} | {tb / ta:.2f} | {ca:,.0f} | {cb:,.0f} | "
                  f"{cb / ca:.2f} | {med(ra, 'p99_us'):,.0f} | {med(rb, 'p99_us'):,.0f} |")
load = [r for r in load if not r["mode"].startswith("ab:")] + ab
errs = sum(r["errors"] + r["failed_connections"] for r in load)
print(f"\nValidation errors and failed connections over all runs: {errs}")

print("\n### Memory per connection (server RSS, /proc)\n")
print("| server | connections | idle, per connection | after one message each |")
print("|---|---:|---:|---:|")
for r in memory:
    name = {"frame-echo": "framed (frame-echo)", "echo": "raw (echo)"}.get(r.get("mode"), r.get("mode", "?"))
    print(f"| {name} | {r['connections']} | {r['idle_bytes_per_conn']:,.0f} B | {r['after_message_bytes_per_conn']:,.0f} B |")

gp = shutil.which("gnuplot")
if not gp:
    print("\n(gnuplot not installed: no plots; apt-get install gnuplot-nox)")
    sys.exit(0)


def plot(name, title, xlabel, ylabel, series, logx=False, style="linespoints"):
    data = os.path.join(outdir, name + ".dat")
    with open(data, "w") as f:
        for label, pts in series:
            f.write(f"# {label}\n")
            for x, y in pts:
                f.write(f"{x} {y}\n")
            f.write("\n\n")
    plots = ", ".join(f"'{data}' index {i} with {style} title '{label}'" for i, (label, _) in enumerate(series))
    script = (f"set terminal pngcairo size 800,500 noenhanced; set output '{os.path.join(outdir, name + '.png')}';"
              f"set title '{title}'; set xlabel '{xlabel}'; set ylabel '{ylabel}'; set grid; set key left top;"
              + ("set logscale x 2;" if logx else "") + f"plot {plots}")
    if subprocess.run([gp, "-e", script], capture_output=True).returncode == 0:
        print(f"plot: {name}.png")


def pts(mode, vary, fixed):
    out = []
    for r in load:
        if r["mode"] == mode and all(r[k] == v for k, v in fixed.items()):
            out.append((r[vary], r["msgs_per_s"]))
    return sorted(out)


print()
plot("throughput_vs_connections", "Echo throughput, depth 16, 64 B", "connections", "messages/s",
     [(m, pts(m, "connections", {"depth": 16, "size": 64})) for m in ("framed", "raw", "ceiling")], logx=True)
plot("throughput_vs_depth", "Echo throughput, 50 connections, 64 B", "requests in flight per connection", "messages/s",
     [(m, pts(m, "depth", {"connections": 50, "size": 64})) for m in ("framed", "raw", "ceiling")], logx=True)
lat = []
for m in ("framed", "raw", "ceiling"):
    r = by.get((m, 50, 16, 64))
    if r:
        lat.append((m, [(50, r["p50_us"]), (99, r["p99_us"]), (99.9, r["p999_us"])]))
plot("latency_percentiles", "Latency percentiles, 50 connections x depth 16, 64 B", "percentile", "microseconds", lat)
