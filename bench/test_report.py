#!/usr/bin/env python3
"""ctest bench_report_tiny: runs bench/report.py in its tiny mode on the built `suite` executable
and checks that the report folder holds a parseable summary, results and plots."""
import json
import os
import subprocess
import sys
import tempfile

here = os.path.dirname(os.path.abspath(__file__))
suite_bin = sys.argv[1]
with tempfile.TemporaryDirectory() as out:
    subprocess.run([sys.executable, os.path.join(here, "report.py"), "--suite-bin", suite_bin,
                    "--tiny", "--out", out], check=True)
    summary = open(os.path.join(out, "summary.md")).read()
    for section in ("## Machine", "## Efficiency length", "## Prefill time",
                    "## Decode time per token", "## State / KV-cache bytes",
                    "## Rates against the same-run roofline"):
        assert section in summary, "summary.md lacks " + section
    # One efficiency-length row per linear-time mixer, each with a value.
    rows = summary.split("## Efficiency length")[1].split("## Prefill time")[0]
    rows = [r for r in rows.splitlines() if r.startswith("| ") and "mixer" not in r]
    assert len(rows) == 7, rows
    for r in rows:
        assert r.split("|")[2].strip() not in ("", "n/a"), r
    doc = json.load(open(os.path.join(out, "results.json")))
    names = [b["name"] for b in doc["benchmarks"]]
    assert any(n.startswith("roofline/sgemm") for n in names)
    assert sum(n.startswith("prefill/") for n in names) == 9 * 2, names
    assert sum(n.startswith("decode/") for n in names) == 9 * 2, names
    for b in doc["benchmarks"]:
        assert b["real_time"] > 0, b["name"]
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.image as mpimg
    for png in ("prefill.png", "decode.png", "state.png"):
        img = mpimg.imread(os.path.join(out, png))  # parses the PNG
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100, png
        assert "](%s)" % png in summary, png
print("bench_report_tiny: report and plots OK")
