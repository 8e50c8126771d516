#!/usr/bin/env python3
"""Google Benchmark JSON from ringframe-bench-codec (--benchmark_out=FILE
--benchmark_out_format=json) to the JSON lines bench/run collects in
results.jsonl and bench/report.py reads: one "decode" line per content size
and feed (ringframe, memcpy and nlohmann side by side) and one "encode" line
per size, each figure the median over the repetitions, with its coefficient
of variation. Usage: codec_jsonl.py FILE"""
import json
import sys

doc = json.load(open(sys.argv[1]))
runs = {}  # run_name -> {statistic: run}
for b in doc["benchmarks"]:
    if b.get("error_occurred"):
        continue
    if b.get("run_type") == "aggregate":
        runs.setdefault(b["run_name"], {})[b["aggregate_name"]] = b
    else:  # no repetitions: the single run stands for the median
        runs.setdefault(b["run_name"], {}).setdefault("median", b)
reps = max((b.get("repetitions", 1) for b in doc["benchmarks"]), default=1)


def fig(name, key):
    r = runs.get(name, {})
    return r["median"][key] if "median" in r else 0.0


def cv(name):
    r = runs.get(name, {}).get("cv")
    return round(r["items_per_second"], 4) if r else None


decode, encode = {}, []
for name in runs:
    parts = name.split("/")
    if parts[0] == "decode":
        decode.setdefault((int(parts[3]), parts[2]), None)
    elif parts[0] == "encode":
        encode.append(int(parts[1]))
for size, feed in decode:
    ours, cpy, nl = (f"decode/{d}/{feed}/{size}" for d in ("ringframe", "memcpy", "nlohmann"))
    print(json.dumps({
        "bench": "decode", "size": size, "feed": feed,
        "msgs_per_s": round(fig(ours, "items_per_second")), "gb_per_s": round(fig(ours, "bytes_per_second") / 1e9, 4),
        "memcpy_gb_per_s": round(fig(cpy, "bytes_per_second") / 1e9, 4),
        "nlohmann_msgs_per_s": round(fig(nl, "items_per_second")),
        "msgs_per_s_cv": cv(ours), "nlohmann_msgs_per_s_cv": cv(nl),
        "statistic": "median", "repetitions": reps, "source": "google-benchmark"}, separators=(",", ":")))
for size in encode:
    n = f"encode/{size}"
    print(json.dumps({
        "bench": "encode", "size": size, "msgs_per_s": round(fig(n, "items_per_second")),
        "gb_per_s": round(fig(n, "bytes_per_second") / 1e9, 4), "msgs_per_s_cv": cv(n),
        "statistic": "median", "repetitions": reps, "source": "google-benchmark"}, separators=(",", ":")))
