#!/usr/bin/env python3
"""Plot p50 and p99 commit→client latency against delivered rate for the fan-out runs of a
bench/run.sh result file (medians per write rate), with the bare LISTEN baseline for reference.

    python3 bench/plot.py bench/results/<stamp>.jsonl bench/latency_vs_rate.png
"""
import json
import statistics
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: plot.py RESULTS.jsonl OUT.png")
    runs = defaultdict(list)
    with open(sys.argv[1]) as f:
        for line in f:
            if line.startswith("{") and '"label"' in line:
                r = json.loads(line)
                runs[r.get("label")].append(r)

    def series(prefix):
        pts = []
        for label, rs in runs.items():
            if not label or not label.startswith(prefix):
                continue
            med = lambda k: statistics.median(r[k] for r in rs)
            pts.append((float(label.split("@")[1]), med("deliveries_per_s"), med("p50_ms"), med("p99_ms"),
                        med("committed_per_s")))
        return sorted(pts)

    relay = series("fanout-1000/relay@")
    base = series("fanout-1000/baseline@")
    if not relay:
        sys.exit("no fanout-1000 runs in the results")
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    x = [p[1] for p in relay]
    ax.plot(x, [p[3] for p in relay], "o-", color="tab:red", label="relay p99")
    ax.plot(x, [p[2] for p in relay], "o-", color="tab:blue", label="relay p50")
    for rate, d, p50, p99, _ in relay:
        ax.annotate(f"{rate:g}/s", (d, p99), textcoords="offset points", xytext=(4, 6), fontsize=8, color="dimgray")
    if base:
        # The bare LISTEN session at the same write rates, placed at the rate the relay had to
        # deliver (× 1,000 clients): the latency floor PostgreSQL itself sets.
        bx = [p[0] * 1000 for p in base]
        ax.plot(bx, [p[3] for p in base], "s--", color="tab:red", alpha=0.45, label="bare LISTEN p99 (same write rate)")
        ax.plot(bx, [p[2] for p in base], "s--", color="tab:blue", alpha=0.45, label="bare LISTEN p50 (same write rate)")
    ax.axhline(50, color="gray", lw=0.8, ls=":")
    ax.axvline(200_000, color="gray", lw=0.8, ls=":")
    ax.text(200_000, 50, "target: 200k/s at p99 ≤ 50 ms ", fontsize=8, color="gray", va="bottom", ha="right")
    ax.set_yscale("log")
    ax.set_xlabel("deliveries/s (1,000 WebSocket clients, one table; labels: write rate)")
    ax.set_ylabel("commit→client latency (ms, log scale)")
    ax.set_title("pgrelay fan-out: latency against delivered rate (medians)")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v/1000:.0f}k"))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(sys.argv[2])
    print(f"wrote {sys.argv[2]}")


if __name__ == "__main__":
    main()
