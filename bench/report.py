#!/usr/bin/env python3
"""Aggregate a bench/run.sh result file (JSON lines) into the tables of BENCHMARKS.md.

    python3 bench/report.py bench/results/<stamp>.jsonl BENCHMARKS.md

Every figure is the median of the repetitions of one matrix point (same label). The text
between the markers <!-- bench:results:begin --> and <!-- bench:results:end --> is replaced;
the rest of BENCHMARKS.md (method, analysis) is left alone.
"""
import json
import statistics
import sys
from collections import defaultdict

BEGIN = "<!-- bench:results:begin -->"
END = "<!-- bench:results:end -->"


def load(path):
    machine, runs = {}, defaultdict(list)
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            rec = json.loads(line)
            if "machine" in rec:
                machine = rec["machine"]
                continue
            for k, v in (rec.pop("cpu", None) or {}).items():
                rec["cpu_" + k] = v
            for k, v in (rec.pop("app", None) or {}).items():
                rec["app_" + k] = v
            runs[rec.get("label") or rec["scenario"]].append(rec)
    return machine, runs


def med(runs, label, key):
    vals = [r[key] for r in runs.get(label, []) if isinstance(r.get(key), (int, float))]
    return statistics.median(vals) if vals else None


def n_runs(runs, label):
    return len(runs.get(label, []))


def f(v, digits=1, unit=""):
    if v is None:
        return "–"
    if isinstance(v, float) and abs(v) >= 1000:
        s = f"{v:,.0f}"
    else:
        s = f"{v:,.{digits}f}"
    return s + unit


def ratio(a, b):
    if a is None or not b:
        return None
    return a / b


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def fanout_rates(runs):
    rates = set()
    for label in runs:
        if label.startswith("fanout-1000/relay@"):
            rates.add(float(label.split("@")[1]))
    return sorted(rates)


def render(machine, runs, source):
    L = []
    m = machine
    reps = max((n_runs(runs, k) for k in runs), default=0)
    L.append(f"Raw results: `{source}` ({sum(len(v) for v in runs.values())} runs). "
             f"Each figure is the median of {m.get('reps', reps)} runs of {m.get('duration_s', '?')} s "
             f"measured after {m.get('warmup_s', '?')} s of warmup.")
    L.append("")
    L.append("### Machine")
    L.append("")
    L.append(table(["", ""], [
        ["cores (`nproc`)", m.get("nproc", "?")],
        ["CPU", m.get("cpu", "?")],
        ["memory", m.get("memory", "?")],
        ["kernel", m.get("kernel", "?")],
        ["PostgreSQL", f"{m.get('postgres', '?')} ({m.get('postgres_settings', '?')})"],
        ["build", f"{m.get('profile', '?')}, {m.get('rustc', '?')}"],
        ["pgrelay commit", f"{m.get('commit', '?')}" + (" + uncommitted changes in src/" if m.get("dirty") else "")],
        ["open files (`ulimit -n`)", m.get("ulimit_n", "?")],
    ]))
    L.append("")
    L.append("Relay, PostgreSQL and the load generator share the machine. CPU is in % of one core "
             "(the machine has 200 %); *other* is CPU used by processes outside the benchmark "
             "during the window (a non-zero figure means the run was disturbed).")
    L.append("")

    # 1. Physical limit.
    L.append("### One subscriber at the highest write rate (target 1)")
    L.append("")
    rows = []
    for prefix, sync in [("limit", "on (as configured)"), ("limit-async", "off")]:
        base = med(runs, f"{prefix}/baseline", "delivered_changes_per_s")
        for label, name in [(f"{prefix}/baseline", "baseline: bare LISTEN"),
                            (f"{prefix}/relay-1-client", "relay, 1 WebSocket client")]:
            if label not in runs:
                continue
            d = med(runs, label, "delivered_changes_per_s")
            rows.append([sync, name, f(med(runs, label, "writers"), 0), f(med(runs, label, "committed_per_s")), f(d),
                         f(ratio(d, base), 3), f(med(runs, label, "p50_ms"), 2), f(med(runs, label, "p99_ms"), 2),
                         f(med(runs, label, "drops"), 0), f(med(runs, label, "cpu_relay")),
                         f(med(runs, label, "cpu_postgres")), f(med(runs, label, "cpu_bench")),
                         f(med(runs, label, "cpu_other"))])
    L.append(table(["synchronous_commit", "receiver", "writers", "committed/s", "delivered changes/s", "× baseline",
                    "p50 ms", "p99 ms", "drops", "relay CPU %", "PG CPU %", "loadgen CPU %", "other CPU %"], rows))
    L.append("")
    L.append("Writers write as fast as they can (`--rate 0`); the relay run and its baseline are "
             "separate runs, so PostgreSQL's own rate varies between them by a few percent.")
    L.append("")

    # 2. Fan-out curve.
    L.append("### Fan-out: 1,000 clients on one table (target 2, plot)")
    L.append("")
    rows = []
    for r in fanout_rates(runs):
        lab = f"fanout-1000/relay@{r:g}"
        blab = f"fanout-1000/baseline@{r:g}"
        d = med(runs, lab, "delivered_changes_per_s")
        rows.append([f"{r:g}", f(med(runs, lab, "committed_per_s")), f(med(runs, lab, "deliveries_per_s")),
                     f(ratio(d, med(runs, blab, "delivered_changes_per_s")), 3),
                     f(med(runs, lab, "p50_ms"), 2), f(med(runs, lab, "p95_ms"), 2),
                     f(med(runs, lab, "p99_ms"), 2), f(med(runs, lab, "max_ms"), 1),
                     f(med(runs, blab, "p50_ms"), 2), f(med(runs, blab, "p99_ms"), 2),
                     f(med(runs, lab, "drops"), 0), f(med(runs, lab, "cutoffs"), 0),
                     f(med(runs, lab, "cpu_relay")), f(cpu_per_delivery(runs, lab), 2),
                     f(med(runs, lab, "cpu_postgres")),
                     f(med(runs, lab, "cpu_bench")), f(med(runs, lab, "cpu_other"))])
    L.append(table(["target changes/s", "committed/s", "deliveries/s", "× baseline", "p50 ms", "p95 ms",
                    "p99 ms", "max ms", "baseline p50 ms", "baseline p99 ms", "drops", "1008 cut-offs",
                    "relay CPU %", "relay µs/delivery", "PG CPU %", "loadgen CPU %", "other CPU %"], rows))
    L.append("")
    L.append("*× baseline*: changes delivered per second per subscriber (committed/s × received/expected) "
             "divided by the bare LISTEN session's notifications/s at the same target rate. "
             "*relay µs/delivery*: relay CPU time per frame delivered, which other load on the machine "
             "hardly changes; 1,000,000 / it is what one whole core of the relay would deliver.")
    L.append("")
    L.append("![p50 and p99 commit→client latency against delivered rate, 1,000 clients](bench/latency_vs_rate.png)")
    L.append("")

    # 3. Latency at 1000/s to 100 clients.
    L.append("### Latency: 1,000 changes/s to 100 clients (target 3)")
    L.append("")
    rows = []
    for prefix, sync in [("latency-100", "on (as configured)"), ("latency-100-async", "off")]:
        for label, name in [(f"{prefix}/baseline@1000", "baseline: bare LISTEN"),
                            (f"{prefix}/relay@1000", "relay, 100 clients")]:
            if label not in runs:
                continue
            rows.append([sync, name, f(med(runs, label, "committed_per_s")), f(med(runs, label, "deliveries_per_s")),
                         f(med(runs, label, "p50_ms"), 2), f(med(runs, label, "p95_ms"), 2),
                         f(med(runs, label, "p99_ms"), 2), f(med(runs, label, "max_ms"), 1),
                         f(med(runs, label, "drops"), 0), f(med(runs, label, "cpu_relay")),
                         f(med(runs, label, "cpu_postgres")), f(med(runs, label, "cpu_other"))])
    L.append(table(["synchronous_commit", "receiver", "committed/s", "deliveries/s", "p50 ms", "p95 ms", "p99 ms",
                    "max ms", "drops", "relay CPU %", "PG CPU %", "other CPU %"], rows))
    L.append("")

    # 4. Filtered.
    L.append("### Filtered: `poll_id=eq.k`, one poll per client (target 4)")
    L.append("")
    rows = []
    labels = sorted([l for l in runs if l.startswith("filtered/")],
                    key=lambda l: med(runs, l, "clients") or 0)
    per_change0 = None
    for label in labels:
        cpu = med(runs, label, "cpu_relay")
        per_change = cpu_per_change(runs, label)
        if per_change0 is None:
            per_change0 = per_change
        rows.append([f(med(runs, label, "clients"), 0), f(med(runs, label, "target_rate"), 0),
                     f(med(runs, label, "committed_per_s")), f(med(runs, label, "deliveries_per_s")),
                     f(med(runs, label, "p50_ms"), 2), f(med(runs, label, "p99_ms"), 2),
                     f(med(runs, label, "drops"), 0), f(cpu), f(per_change, 1), f(ratio(per_change, per_change0), 2),
                     f(med(runs, label, "cpu_other"))])
    L.append(table(["subscriptions", "target changes/s", "committed/s", "deliveries/s", "p50 ms",
                    "p99 ms", "drops", "relay CPU %", "relay CPU µs per change", "× the smallest", "other CPU %"], rows))
    L.append("")
    L.append("Writers use `synchronous_commit=off` here so that PostgreSQL holds the same rate in both "
             "runs; the comparison uses relay CPU time per committed change, which equals the CPU ratio "
             "at equal rates. Every change matches exactly one subscription in both runs.")
    L.append("")

    # 5. Idle.
    L.append("### Idle: joined connections (target 5)")
    L.append("")
    rows = []
    for label in sorted(l for l in runs if l.startswith("idle/")):
        kib = lambda k: (med(runs, label, k) or 0) / 1024
        rows.append([f(med(runs, label, "ready"), 0), f(kib("rss_before_kib"), 1), f(kib("rss_ready_kib"), 1),
                     f(med(runs, label, "rss_per_conn_kib"), 1), f(med(runs, label, "setup_s"), 1),
                     f(med(runs, label, "cpu_relay"), 2), f(med(runs, label, "join_failures"), 0)])
    L.append(table(["connections", "RSS before MiB", "RSS joined MiB", "KiB per connection",
                    "connect + join s", "relay CPU % idle", "join failures"], rows))
    L.append("")
    L.append("Each idle client joined one channel with one `postgres_changes` binding of its own "
             "(`poll_id=eq.k`), as the filtered clients do.")
    L.append("")

    # 6. Mixed.
    L.append("### Mixed: the reference app")
    L.append("")
    rows = []
    app = None
    for label in sorted(l for l in runs if l.startswith("mixed/")):
        r = runs[label][0]
        if r["scenario"] == "baseline":
            who = "baseline: bare LISTEN"
        elif "app_pressers" in r:
            who = f"relay, {r['clients']:,} users × 5 channels"
            app = r
        else:
            who = f"relay, {r['clients']:,} users × 3 channels"
        # Everything the relay fanned out (postgres_changes, presence diffs, statistics updates).
        all_key = "deliveries_all_per_s" if "app_pressers" in r else "deliveries_per_s"
        drops = [x.get("drops", 0) + (x.get("app_presence_drops") or 0) for x in runs[label]]
        rows.append([who, f(med(runs, label, "committed_per_s")), f(med(runs, label, "deliveries_per_s")),
                     f(med(runs, label, "app_presence_diffs_per_s")),
                     f(med(runs, label, "app_statistics_updates_per_s")),
                     f(med(runs, label, "p50_ms"), 2), f(med(runs, label, "p95_ms"), 2),
                     f(med(runs, label, "p99_ms"), 2), f(med(runs, label, "app_presence_p99_ms"), 2),
                     f(statistics.median(drops), 0),
                     f(med(runs, label, "cpu_relay")), f(cpu_per_delivery(runs, label, all_key), 2),
                     f(med(runs, label, "cpu_postgres")),
                     f(med(runs, label, "cpu_bench")), f(med(runs, label, "cpu_other"))])
    L.append(table(["receiver", "committed/s", "change deliveries/s", "presence diffs/s", "statistics updates/s",
                    "p50 ms", "p95 ms", "p99 ms", "press→diff p99 ms", "drops",
                    "relay CPU %", "relay µs/delivery (all kinds)", "PG CPU %", "loadgen CPU %", "other CPU %"], rows))
    L.append("")
    if app is not None:
        L.append(f"Each user joins `polls-changes` (`*` on polls and user_votes), `statistics-updates` "
                 f"(INSERT on user_votes, polls, profiles), `button-sessions` (`*` on button_holds), "
                 f"`button-presence` (presence, keyed by the user's id) and the live topic `statistics` "
                 f"(its current value on join, then an update when the totals change, at most every 250 ms). "
                 f"Holds go through presence as in the app: {app['app_pressers']:,} of the users each press "
                 f"every {app['app_press_period_s']:.1f} s in turn ({app['app_target_press_rate']:.1f} presses/s) — "
                 f"a presence `track` of `{{user_id, poll_id}}` on `button-presence`, from which the relay "
                 f"inserts the `button_holds` row — and release (`untrack`, the relay ends the row) after "
                 f"{app['app_hold_s']:.1f} s; the writers only vote (INSERT user_votes, "
                 f"{app['app_target_vote_rate']:.1f}/s). So the change mix is the baseline's (a third hold "
                 f"starts, a third hold ends, a third votes: 4 change frames per user per 3 changes), and "
                 f"every press and release is also a presence diff to every user. *Change deliveries* "
                 f"counts postgres_changes frames; relay µs per delivery divides by all three kinds. "
                 f"*press→diff* is from the track being sent to the diff showing the holder at each user "
                 f"(the relay's hold row insert included); drops include missing presence diffs.")
    else:
        L.append("Each user joins `polls-changes` (`*` on polls and user_votes), `statistics-updates` "
                 "(INSERT on user_votes, polls, profiles) and `button-sessions` (`*` on button_holds); "
                 "writers cycle hold start (INSERT button_holds), hold end (UPDATE button_holds) and vote "
                 "(INSERT user_votes), so a cycle of 3 changes is 4 frames per user. "
                 "These results predate presence and live topics in the mixed load.")
    L.append("")

    # Targets.
    L.append("### Targets")
    L.append("")
    rows = []
    base = med(runs, "limit/baseline", "delivered_changes_per_s")
    relay1 = med(runs, "limit/relay-1-client", "delivered_changes_per_s")
    r1 = ratio(relay1, base)
    rows.append(["1 subscriber ≥ 0.95 × baseline at the highest rate", f"{f(r1, 3)} × ({f(relay1)} vs {f(base)} changes/s)",
                 verdict(r1 is not None and r1 >= 0.95, r1, 0.95, "×", higher=True)])
    abase = med(runs, "limit-async/baseline", "delivered_changes_per_s")
    arelay = med(runs, "limit-async/relay-1-client", "delivered_changes_per_s")
    if abase and arelay:
        ar = ratio(arelay, abase)
        rows.append(["… the same with synchronous_commit=off (PostgreSQL several times faster)",
                     f"{f(ar, 3)} × ({f(arelay)} vs {f(abase)} changes/s)",
                     verdict(ar >= 0.95, ar, 0.95, "×", higher=True)])
    best = None
    for r in fanout_rates(runs):
        lab = f"fanout-1000/relay@{r:g}"
        d, p99 = med(runs, lab, "deliveries_per_s"), med(runs, lab, "p99_ms")
        if d is not None and p99 is not None and p99 <= 50 and (best is None or d > best[0]):
            best = (d, p99, r)
    at200 = None
    for r in fanout_rates(runs):
        lab = f"fanout-1000/relay@{r:g}"
        d = med(runs, lab, "deliveries_per_s")
        if d is not None and d >= 190_000 and at200 is None:
            at200 = (d, med(runs, lab, "p99_ms"), r)
    if best:
        got = f"highest with p99 ≤ 50 ms: {f(best[0])}/s (p99 {f(best[1], 1)} ms at {best[2]:g} changes/s)"
    else:
        got = "no rate kept p99 ≤ 50 ms"
    if at200 and (not best or best[0] < 200_000):
        got += f"; at {f(at200[0])}/s p99 is {f(at200[1], 1)} ms"
    per = [cpu_per_delivery(runs, f"fanout-1000/relay@{r:g}") for r in fanout_rates(runs)]
    per = [p for p in per if p]
    if per:
        us = statistics.median(per)
        got += (f"; the relay spends {us:.1f} µs of CPU per delivery, so 200,000/s needs "
                f"{us * 0.2:.2f} cores of relay alone")
    rows.append(["≥ 200,000 deliveries/s to 1,000 clients, p99 ≤ 50 ms", got,
                 verdict(best[0] >= 200_000, best[0], 200_000, "deliveries/s", higher=True) if best
                 else "**missed**: p99 > 50 ms at every rate tried"])
    p99 = med(runs, "latency-100/relay@1000", "p99_ms")
    c1000 = med(runs, "latency-100/relay@1000", "committed_per_s")
    short = lambda c: "" if c is None or c >= 950 else " — PostgreSQL did not sustain the 1,000/s asked"
    rows.append(["p99 ≤ 10 ms at 1,000 changes/s to 100 clients",
                 f"p99 {f(p99, 2)} ms at {f(c1000)} committed/s (baseline p99 {f(med(runs, 'latency-100/baseline@1000', 'p99_ms'), 2)} ms){short(c1000)}",
                 verdict(p99 is not None and p99 <= 10, p99, 10, "ms", higher=False)])
    ap99 = med(runs, "latency-100-async/relay@1000", "p99_ms")
    if ap99 is not None:
        rows.append(["… the same with synchronous_commit=off (no WAL flush wait)",
                     f"p99 {f(ap99, 2)} ms at {f(med(runs, 'latency-100-async/relay@1000', 'committed_per_s'))} committed/s "
                     f"(baseline p99 {f(med(runs, 'latency-100-async/baseline@1000', 'p99_ms'), 2)} ms)"
                     f"{short(med(runs, 'latency-100-async/relay@1000', 'committed_per_s'))}",
                     verdict(ap99 <= 10, ap99, 10, "ms", higher=False)])
    fl = [l for l in labels]
    if len(fl) >= 2:
        c_small, c_big = cpu_per_change(runs, fl[0]), cpu_per_change(runs, fl[-1])
        rr = ratio(c_big, c_small)
        rows.append([f"{f(med(runs, fl[-1], 'clients'), 0)} filtered subscriptions ≤ 1.5 × relay CPU of {f(med(runs, fl[0], 'clients'), 0)}",
                     f"{f(rr, 2)} × ({f(c_big, 1)} vs {f(c_small, 1)} µs of relay CPU per change)",
                     verdict(rr is not None and rr <= 1.5, rr, 1.5, "×", higher=False)])
    per = med(runs, "idle/relay-10000", "rss_per_conn_kib")
    rows.append(["10,000 idle joined connections ≤ 20 KiB RSS each", f"{f(per, 1)} KiB per connection",
                 verdict(per is not None and per <= 20, per, 20, "KiB", higher=False)])
    L.append(table(["target", "measured (median)", "verdict"], rows))
    return "\n".join(L)


def cpu_per_delivery(runs, label, key="deliveries_per_s"):
    """Relay CPU µs per delivered frame, median over the runs."""
    vals = [r["cpu_relay"] / 100 * 1e6 / r[key] for r in runs.get(label, [])
            if r.get("cpu_relay") is not None and r.get(key)]
    return statistics.median(vals) if vals else None


def cpu_per_change(runs, label):
    """Relay CPU µs per committed change, median over the runs."""
    vals = [r["cpu_relay"] / 100 * 1e6 / r["committed_per_s"] for r in runs.get(label, [])
            if r.get("cpu_relay") is not None and r.get("committed_per_s")]
    return statistics.median(vals) if vals else None


def verdict(ok, got, target, unit, higher):
    if got is None:
        return "not measured"
    if ok:
        return "**met**"
    if higher:
        short = (target - got) / target * 100 if target else 0
        return f"**missed** by {short:.0f} % ({got:,.3g} vs ≥ {target:,} {unit})"
    over = got / target if target else 0
    return f"**missed**: {over:.1f} × the limit ({got:,.3g} vs ≤ {target:,} {unit})"


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: report.py RESULTS.jsonl BENCHMARKS.md")
    src, md_path = sys.argv[1], sys.argv[2]
    machine, runs = load(src)
    body = render(machine, runs, src)
    try:
        with open(md_path) as fh:
            text = fh.read()
    except FileNotFoundError:
        text = ""
    block = f"{BEGIN}\n{body}\n{END}"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n## Results\n\n" + block + "\n"
    with open(md_path, "w") as fh:
        fh.write(text)
    print(body)


if __name__ == "__main__":
    main()
