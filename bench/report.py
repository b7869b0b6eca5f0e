#!/usr/bin/env python3
"""Runs effattn's benchmark suite (the `suite` executable, bench/bench_suite.cpp) case by case and
writes a report folder: summary.md, results.json and PNG plots.

    python3 bench/report.py --suite-bin build/bench/suite [--tiny | --full] [--out DIR]

scripts/dev.sh report builds the executable and calls this; see the README. Each case runs in its
own process (progress: which case, how many left); the same-run roofline (Eigen sgemm, triad) is
measured first so that every rate can be read as a fraction of it.
"""
import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import time

MIXERS = ["flash", "swa", "linear_attn", "simple_gla", "gla", "gdn", "kda", "ssd", "mamba1"]
LINEAR = [m for m in MIXERS if m not in ("flash", "swa")]
LABELS = {
    "flash": "flash attention (causal)",
    "swa": "sliding window W=1024",
    "linear_attn": "linear attention",
    "simple_gla": "simple GLA (RetNet/Lightning)",
    "gla": "GLA (per-channel decay)",
    "gdn": "Gated DeltaNet",
    "kda": "Kimi Delta Attention",
    "ssd": "Mamba-2 SSD (P=N=128)",
    "mamba1": "Mamba-1 scan (d=2048, N=16)",
}


def run_case(binary, mode, name, min_time, env):
    cmd = [binary, "--suite=" + mode, "--benchmark_filter=^" + name + "$",
           "--benchmark_format=json", "--benchmark_min_time=%g" % min_time]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    doc = json.loads(out)
    runs = [b for b in doc["benchmarks"] if b.get("run_type", "iteration") == "iteration"]
    if len(runs) != 1:
        raise RuntimeError("case %s produced %d runs" % (name, len(runs)))
    return doc["context"], runs[0]


def seconds(run):
    scale = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}[run["time_unit"]]
    return run["real_time"] * scale


def parse_name(name):
    # prefill/<mixer>/T:<n>/real_time, decode/<mixer>/ctx:<n>/real_time, roofline/<what>/...
    parts = name.split("/")
    kind, what = parts[0], parts[1]
    n = None
    if kind in ("prefill", "decode"):
        n = int(parts[2].split(":")[1])
    return kind, what, n


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def efficiency_length(prefill, mixer):
    """Smallest T at which the mixer's prefill is faster than causal flash attention (CAB's
    efficiency length), interpolated log-log between the two grid points that bracket the
    crossing. Returns (value, text)."""
    ts = sorted(t for t in prefill[mixer] if t in prefill["flash"])
    if not ts:
        return None, "n/a"
    ratios = [(t, prefill[mixer][t] / prefill["flash"][t]) for t in ts]
    if ratios[0][1] < 1.0:
        return ts[0], "<= %d" % ts[0]
    for (t1, r1), (t2, r2) in zip(ratios, ratios[1:]):
        if r1 >= 1.0 and r2 < 1.0:
            x = math.log(t1) + (math.log(t2) - math.log(t1)) * math.log(r1) / (
                math.log(r1) - math.log(r2))
            v = math.exp(x)
            return v, "%d (between %d and %d)" % (round(v), t1, t2)
    return None, "> %d" % ts[-1]


def fmt_bytes(b):
    for unit, s in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if b >= s:
            return "%.1f %s" % (b / s, unit)
    return "%d B" % b


def fmt_time(s):
    if s >= 1:
        return "%.2f s" % s
    if s >= 1e-3:
        return "%.2f ms" % (s * 1e3)
    return "%.1f us" % (s * 1e6)


def plot(out, prefill, decode, state, mode):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    specs = [
        ("prefill.png", prefill, "sequence length T", "prefill time (ms)", 1e3,
         "Prefill, H=16 heads of 128, B=1"),
        ("decode.png", decode, "context length", "decode time per token (us)", 1e6,
         "Decode one token, H=16 heads of 128"),
        ("state.png", state, "context length", "state / KV cache (MiB)", 1.0 / 2**20,
         "Memory held per sequence"),
    ]
    for fname, data, xl, yl, scale, title in specs:
        fig, ax = plt.subplots(figsize=(7.5, 5))
        for m in MIXERS:
            if m not in data or not data[m]:
                continue
            xs = sorted(data[m])
            style = "-o" if m in ("flash", "swa") else "-s"
            ax.plot(xs, [data[m][x] * scale for x in xs], style, ms=3, label=LABELS[m])
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.set_title("%s (%s suite)" % (title, mode))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(out, fname), dpi=110)
        plt.close(fig)
        files.append(fname)
    return files


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--suite-bin", required=True, help="path of the built `suite` executable")
    ap.add_argument("--out", default="bench-report", help="report folder (created)")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--tiny", action="store_true", help="seconds: two sizes per axis (tests)")
    g.add_argument("--full", action="store_true", help="the long sweep (T to 128K, ctx to 256K)")
    ap.add_argument("--threads", type=int, default=0, help="threads (default: all cores)")
    args = ap.parse_args()

    mode = "tiny" if args.tiny else "full" if args.full else "default"
    min_time = {"tiny": 0.01, "default": 0.1, "full": 0.5}[mode]
    env = dict(os.environ)
    if args.threads > 0:
        env["OMP_NUM_THREADS"] = str(args.threads)
    binary = os.path.abspath(args.suite_bin)
    os.makedirs(args.out, exist_ok=True)

    names = subprocess.run([binary, "--suite=" + mode, "--benchmark_list_tests"], check=True,
                           capture_output=True, text=True, env=env).stdout.split()
    # Roofline first, then cheap-to-expensive within each kind so progress is front-loaded.
    names.sort(key=lambda n: (parse_name(n)[0] != "roofline", parse_name(n)[0] != "prefill"))
    print("effattn benchmark suite (%s): %d cases -> %s" % (mode, len(names), args.out),
          flush=True)
    context, results = None, []
    t0 = time.time()
    for i, name in enumerate(names, 1):
        context, run = run_case(binary, mode, name, min_time, env)
        results.append(run)
        print("[%3d/%d] %-36s %10s   (%.0f s elapsed)" % (
            i, len(names), name.replace("/real_time", ""), fmt_time(seconds(run)),
            time.time() - t0), flush=True)

    prefill, decode, state, rates = {}, {}, {}, {}
    roof = {}
    for r in results:
        kind, what, n = parse_name(r["name"])
        if kind == "roofline":
            roof[what] = r["GFLOP"] if what == "sgemm" else r["GB"]
            continue
        t = seconds(r)
        if kind == "prefill":
            prefill.setdefault(what, {})[n] = t
        else:
            decode.setdefault(what, {})[n] = t
            state.setdefault(what, {})[n] = r["state_bytes"]
        rates[(kind, what, n)] = (r.get("GFLOP", 0.0), r.get("GB", 0.0))

    pngs = plot(args.out, prefill, decode, state, mode)
    threads = int(results[-1].get("threads", 0)) if results else 0
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"mode": mode, "context": context, "benchmarks": results}, f, indent=1)

    L = []
    L.append("# effattn benchmark report (%s suite)\n" % mode)
    L.append("Generated %s by `bench/report.py` in %.0f s.\n" % (
        datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), time.time() - t0))
    L.append("## Machine\n")
    L.append("| | |\n|---|---|")
    L.append("| CPU | %s (%s logical CPUs) |" % (cpu_model(), context.get("num_cpus", "?")))
    L.append("| threads used | %d |" % threads)
    L.append("| ISA the build targets | %s |" % context.get("effattn_isa", "?"))
    L.append("| compiler | %s |" % context.get("compiler", "?"))
    L.append("| same-run roofline | Eigen sgemm 1024^3: %.0f GFLOP/s; triad: %.1f GB/s |\n" % (
        roof.get("sgemm", 0), roof.get("triad", 0)))
    L.append("All mixers: B = 1, H = 16 heads of size 128 (attention: Hq = Hkv = 16), float; "
             "Mamba-1 at the same width (d_inner = 2048, N = 16). Decode of the recurrent mixers "
             "starts from the state a prefill of `ctx` tokens left behind.\n")
    for p in pngs:
        L.append("![%s](%s)\n" % (p, p))

    L.append("## Efficiency length\n")
    L.append("The smallest T at which a linear-time mixer's prefill is faster than causal flash "
             "attention at the same heads and head size (CAB's definition), interpolated "
             "log-log between the grid points that bracket the crossing.\n")
    L.append("| mixer | efficiency length (tokens) |\n|---|---|")
    for m in LINEAR:
        if m in prefill:
            L.append("| %s | %s |" % (LABELS[m], efficiency_length(prefill, m)[1]))
    L.append("")

    def table(title, data, keyname, fmt):
        keys = sorted({k for m in data for k in data[m]})
        L.append("## %s\n" % title)
        L.append("| mixer | " + " | ".join("%s=%d" % (keyname, k) for k in keys) + " |")
        L.append("|---|" + "---|" * len(keys))
        for m in MIXERS:
            if m in data:
                L.append("| %s | " % LABELS[m] + " | ".join(
                    fmt(data[m][k]) if k in data[m] else "" for k in keys) + " |")
        L.append("")

    table("Prefill time", prefill, "T", fmt_time)
    table("Decode time per token", decode, "ctx", fmt_time)
    table("State / KV-cache bytes", state, "ctx", fmt_bytes)

    L.append("## Rates against the same-run roofline\n")
    L.append("Prefill: GFLOP/s on implementation-independent FLOP counts (bench_suite.cpp's "
             "header: attention 4*pairs*D per head; the linear-time mixers their recurrent "
             "form's FLOPs, 4KV per token and head for the gated linear family, 7KV for the delta "
             "rule, 9dN for the Mamba-1 scan; a chunked form's rate is thus an effective rate) as "
             "a fraction of sgemm. Decode: GB/s of cache or state traffic as a fraction of triad "
             "(a state that fits in cache can exceed 100%).\n")
    L.append("| mixer | prefill T | GFLOP/s | % sgemm | decode ctx | GB/s | % triad |")
    L.append("|---|---|---|---|---|---|---|")
    for m in MIXERS:
        if m not in prefill or m not in decode:
            continue
        tp, tc = max(prefill[m]), max(decode[m])
        gf = rates[("prefill", m, tp)][0]
        gb = rates[("decode", m, tc)][1]
        L.append("| %s | %d | %.0f | %.0f%% | %d | %.1f | %.0f%% |" % (
            LABELS[m], tp, gf, 100 * gf / roof["sgemm"], tc, gb, 100 * gb / roof["triad"]))
    L.append("")
    L.append("Reproduce: `scripts/dev.sh report%s`.\n" % (
        " --full" if mode == "full" else " --tiny" if mode == "tiny" else ""))
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write("\n".join(L))
    print("report: %s" % os.path.join(args.out, "summary.md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
