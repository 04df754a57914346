#!/usr/bin/env python3
"""The report of bench/compare.sh: reads the raw figures it left in --results, prints the table
(Markdown, ready for the README) with the machine, the versions and the command, and writes
everything as one JSON file (--out)."""

import argparse
import collections
import json
import os
import platform
import re
import statistics


def load(results, name):
    path = os.path.join(results, name)
    try:
        with open(path) as f:
            text = f.read().strip()
        return json.loads(text) if text else None
    except (OSError, ValueError):
        return None


def machine():
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "ram_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
    }


def median_mb_per_sec(results, name, count):
    """MB/s (10^6 octets) of rounds 1 to count (round 0 warmed up), and their median."""
    rates = []
    for r in range(1, count + 1):
        got = load(results, f"w3-{name}-r{r}.json")
        for run in (got or {}).get("runs", []):
            rates.append(run["octets"] / run["secs"] / 1e6)
    return (statistics.median(rates) if rates else None), rates


def pair_ratios(results, count, names=("facteur-crlf", "raw")):
    """Workload 3's alternating pairs: per pair, the median MB/s of the two transfers `names`
    (facteur's RETR by sendfile and the raw copy; or POP3S RETR and plain RETR), and their
    ratio; and the medians of all three."""
    pairs = []
    for p in range(1, count + 1):
        got = [load(results, f"w3-pair-{n}-p{p}.json") for n in names]
        if all(g and g.get("median_mb_per_sec") for g in got):
            f, r = (g["median_mb_per_sec"] for g in got)
            pairs.append((f, r, f / r))
    if not pairs:
        return None, []
    med = [statistics.median(x[i] for x in pairs) for i in range(3)]
    return med, pairs


def client_busy(results, name, count):
    """The client thread's CPU time over the time of its RETRs, rounds 1 to count."""
    cpu = secs = 0.0
    for r in range(1, count + 1):
        got = load(results, f"w3-{name}-r{r}.json")
        for run in (got or {}).get("runs", []):
            if "cpu_secs" in run:
                cpu += run["cpu_secs"]
                secs += run["secs"]
    return cpu / secs if secs else None


def w4_stat_median(results, name, kind, reps):
    """The median time of the first STAT after the login + UIDL of `kind`, in seconds."""
    secs = [r["stat_secs"] for rep in range(1, reps + 1)
            if (r := load(results, f"w4-{name}-{kind}-{rep}.json")) and "stat_secs" in r]
    return (statistics.median(secs) if secs else None), secs


def w4_median(results, name, kind, reps, expected):
    secs, bad = [], []
    for rep in range(1, reps + 1):
        r = load(results, f"w4-{name}-{kind}-{rep}.json")
        if r is None:
            bad.append(f"{kind} run {rep}: no result")
            continue
        if r["uidl_lines"] != expected:
            bad.append(f"{kind} run {rep}: {r['uidl_lines']} UIDL lines, expected {expected}")
        secs.append(r["secs"])
    return (statistics.median(secs) if secs else None), secs, bad


def w5_per_session(results, name, sessions):
    before = load(results, f"w5-{name}-before.json")
    after = load(results, f"w5-{name}-after.json")
    if not before or not after or "uss_kib" not in after:
        return None, before, after
    return (after["uss_kib"] - before["uss_kib"]) / sessions, before, after


def cpu_over_rounds(results, n, who, rounds, kind):
    """CPU seconds of one group of processes (kind: "cpu" the server's, "pgcpu" PostgreSQL's,
    "lbcpu" HAProxy's) over the rounds of workload n against who, with the wall time and the
    machine's busy time over the same rounds."""
    wall = secs = busy = 0.0
    for r in range(1, rounds + 1):
        before = load(results, f"w{n}-{who}-r{r}-{kind}-before.json")
        after = load(results, f"w{n}-{who}-r{r}-{kind}-after.json")
        if before and after:
            wall += after["time"] - before["time"]
            secs += after["cpu_secs"] - before["cpu_secs"]
            busy += after["machine_busy_secs"] - before["machine_busy_secs"]
    return wall, secs, busy


def w12_setup(results, n, who, rounds):
    """Workload n (1, "1n" or 2) against one setup: the sessions over all its rounds, and the
    CPU time its server (and PostgreSQL, and HAProxy) spent on them; (None, None) if it did not
    run."""
    runs = [load(results, f"w{n}-{who}-r{r}.json") for r in range(1, rounds + 1)]
    runs = [r for r in runs if r]
    if not runs:
        return None, None
    errors = collections.Counter()
    for r in runs:
        for kind, e in r["errors_by_kind"].items():
            errors[kind] += e["count"]
    total = dict(
        sessions=sum(r["sessions"] for r in runs),
        sessions_failed=sum(r["sessions_failed"] for r in runs),
        elapsed_secs=sum(r["elapsed_secs"] for r in runs),
        bench_cpu_secs=sum(r.get("cpu_secs") or 0.0 for r in runs),
        errors_by_kind=dict(errors),
        per_round_sessions_per_sec=[r["sessions_per_sec"] for r in runs],
        latency_p50_ms=[r["latency_p50_ms"] for r in runs],
        latency_p99_ms=[r["latency_p99_ms"] for r in runs],
    )
    total["sessions_per_sec"] = total["sessions"] / total["elapsed_secs"]
    wall, server, busy = cpu_over_rounds(results, n, who, rounds, "cpu")
    cpu = None
    if wall and total["sessions"]:
        client = total["bench_cpu_secs"]
        cpu = dict(
            server_cpu_ms_per_session=server / total["sessions"] * 1000,
            server_cores=server / wall,
            bench_cores=client / wall,
            other_cores=max(0.0, (busy - server - client) / wall),
            machine_busy_cores=busy / wall,
        )
        for kind, key in (("pgcpu", "postgresql"), ("lbcpu", "haproxy")):
            w, secs, _ = cpu_over_rounds(results, n, who, rounds, kind)
            if w:
                cpu[f"{key}_cpu_ms_per_session"] = secs / total["sessions"] * 1000
                cpu[f"{key}_cores"] = secs / w
    return total, cpu


def log_summary(path, kind):
    """facteur: how sessions ended and WARN/ERROR lines; Dovecot: Warning/Error/Fatal lines."""
    out = {"lines": 0}
    ends = collections.Counter()
    levels = collections.Counter()
    first = {}
    try:
        with open(path, errors="replace") as f:
            for line in f:
                out["lines"] += 1
                if kind == "facteur":
                    m = re.search(r"\bend=(\w+)", line)
                    if m:
                        ends[m.group(1)] += 1
                    m = re.search(r"\b(WARN|ERROR)\b", line)
                elif "Killed with signal 15" in line:
                    m = None  # compare.sh stopping the server
                else:
                    m = re.search(r": (Warning|Error|Fatal|Panic): ", line)
                if m:
                    levels[m.group(1)] += 1
                    first.setdefault(m.group(1), line.strip()[:300])
    except OSError:
        return None
    if kind == "facteur":
        out["session_ends"] = dict(ends)
    out["problems"] = dict(levels)
    out["first_problem"] = first
    return out


def fmt(v, unit, digits=0):
    if v is None:
        return "n/a"
    return f"{v:,.{digits}f} {unit}"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--results", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--facteur-version", required=True)
    p.add_argument("--dovecot-version", required=True)
    p.add_argument("--command", required=True)
    p.add_argument("--load", required=True)
    p.add_argument("--load-end", required=True)
    p.add_argument("--duration", type=float, required=True)
    p.add_argument("--concurrency", type=int, required=True)
    p.add_argument("--users", type=int, required=True)
    p.add_argument("--idle", type=int, required=True)
    p.add_argument("--huge", type=int, required=True)
    p.add_argument("--reps", type=int, required=True)
    p.add_argument("--scheme", required=True)
    p.add_argument("--rounds", type=int, required=True)
    p.add_argument("--w3-runs", type=int, required=True)
    p.add_argument("--w3-pairs", type=int, default=0)
    p.add_argument("--facteur-log", required=True)
    p.add_argument("--dovecot-log", required=True)
    p.add_argument("--pg", type=int, default=0, help="1: the PostgreSQL setups ran too")
    p.add_argument("--migrate-secs", type=float, default=0.0)
    p.add_argument("--pg-version", default="none")
    p.add_argument("--haproxy-version", default="none")
    p.add_argument("--pg-logs", nargs="*", default=[])
    a = p.parse_args()
    R = a.results

    rows = []  # (workload, facteur, other, ratio text, goal text, pass?)
    extra_rows = []  # (figure, facteur, Dovecot, ratio text): no goal, to explain the above
    data = {"workloads": {}}
    notes = []

    def add(key, label, f, d, unit, digits, goal_text, ratio, passed, ratio_text, extra):
        rows.append((label, fmt(f, unit, digits), d, ratio_text, goal_text, passed))
        data["workloads"][key] = dict(
            facteur=f, other=extra.pop("other", None), unit=unit, ratio=ratio, goal=goal_text,
            passed=passed, **extra
        )

    # 1 and 2: sessions per second, over all the rounds; "1n": workload 1 again with both
    # authentication caches off (no goal: it shows what the password hash costs each server).
    for n, mode, goal in ((1, "plain", 3.0), ("1n", "plain", None), (2, "POP3S", 2.0),
                          ("2r", "POP3S", 2.0)):
        runs, cpu = {}, {}
        for who in ("facteur", "dovecot"):
            total, c = w12_setup(R, n, who, a.rounds)
            if total:
                runs[who] = total
            if c:
                cpu[who] = c
        f, d = runs.get("facteur"), runs.get("dovecot")
        fv = f and f["sessions_per_sec"]
        dv = d and d["sessions_per_sec"]
        ratio = fv / dv if fv and dv else None
        passed = None if goal is None else ratio is not None and ratio >= goal
        for who, r in (("facteur", f), ("Dovecot", d)):
            if r and r["sessions_failed"]:
                notes.append(
                    f"workload {n}: {r['sessions_failed']} of {r['sessions']} {who} sessions "
                    f"failed: {r['errors_by_kind']}"
                )
        fc, dc = cpu.get("facteur"), cpu.get("dovecot")
        what = {"1n": f"{mode}, no authentication cache",
                "2r": f"{mode}, sessions resumed"}.get(str(n), mode)
        extra_rows.append((
            f"{str(n).rstrip('nr')}. server CPU time per session, {what}",
            fmt(fc and fc["server_cpu_ms_per_session"], "ms", 2),
            fmt(dc and dc["server_cpu_ms_per_session"], "ms", 2),
            f"Dovecot uses {dc['server_cpu_ms_per_session'] / fc['server_cpu_ms_per_session']:.2f}x"
            if fc and dc else "n/a",
        ))
        for who, c in cpu.items():
            notes.append(
                f"workload {n} against {who}: the machine was busy {c['machine_busy_cores']:.2f} "
                f"cores of {os.cpu_count()}: server {c['server_cores']:.2f}, load generator "
                f"{c['bench_cores']:.2f}, everything else {c['other_cores']:.2f}"
            )
        if goal is None:
            key = "1_sessions_plain_no_auth_cache"
            label = (f"1. the same, with both authentication caches off (every login hashes its "
                     "password)")
            goal_text = "none: shows the hash's cost"
        elif n == "2r":
            key = "2_sessions_pop3s_resumed"
            label = "2. the same, the clients resuming their TLS sessions"
            goal_text = f">= {goal:g}x"
        else:
            key = f"{n}_sessions_{mode.lower()}"
            label = f"{n}. full session, 10 x 4 KB RETR, {a.concurrency} concurrent, {mode}"
            goal_text = f">= {goal:g}x"
        add(
            key, label,
            fv, fmt(dv, "sessions/s"), "sessions/s", 0, goal_text,
            ratio, passed, f"{ratio:.2f}x" if ratio else "n/a",
            dict(other=dv, facteur_runs=f, dovecot_runs=d, cpu=cpu),
        )

    # 3: RETR of 64 MiB, and the raw copy.
    f3, f3runs = median_mb_per_sec(R, "facteur", a.w3_runs)
    d3, d3runs = median_mb_per_sec(R, "dovecot", a.w3_runs)
    raw, rawruns = median_mb_per_sec(R, "raw", a.w3_runs)
    rawcopy, rawcopyruns = median_mb_per_sec(R, "raw-copy", a.w3_runs)
    extra_rows.append((
        "3. raw loopback copy with read + send of 64 KiB blocks instead of sendfile",
        fmt(f3, "MB/s") + (f" ({f3 / rawcopy:.0%})" if f3 and rawcopy else ""),
        fmt(d3, "MB/s") + (f" ({d3 / rawcopy:.0%})" if d3 and rawcopy else ""),
        "raw copy " + fmt(rawcopy, "MB/s"),
    ))
    ratio = f3 / d3 if f3 and d3 else None
    add(
        "3_retr_64mib", f"3. RETR of one 64 MiB message (median of {a.w3_runs})",
        f3, fmt(d3, "MB/s"), "MB/s", 0, ">= 2x", ratio,
        ratio is not None and ratio >= 2.0, f"{ratio:.2f}x" if ratio else "n/a",
        dict(other=d3, facteur_runs=f3runs, dovecot_runs=d3runs),
    )
    ratio = f3 / raw if f3 and raw else None
    add(
        "3_retr_vs_raw_copy", "3. the same, against a raw loopback copy of its wire bytes",
        f3, "raw copy " + fmt(raw, "MB/s"), "MB/s", 0, ">= 70% of raw", ratio,
        ratio is not None and ratio >= 0.70, f"{ratio:.0%} of raw" if ratio else "n/a",
        dict(other=raw, raw_runs=rawruns, raw_read_send=rawcopy, raw_read_send_runs=rawcopyruns,
             dovecot_share_of_raw=(d3 / raw if d3 and raw else None)),
    )

    # 3, the same message as facteur's delivery stores it (CRLF, its own wire form): RETR by
    # sendfile over plain TCP, against the raw copy; and over POP3S, against plain.
    fc, fcruns = median_mb_per_sec(R, "facteur-crlf", a.w3_runs)
    dc, dcruns = median_mb_per_sec(R, "dovecot-crlf", a.w3_runs)
    ft, ftruns = median_mb_per_sec(R, "facteur-crlf-tls", a.w3_runs)
    dt, dtruns = median_mb_per_sec(R, "dovecot-crlf-tls", a.w3_runs)
    # The goal's row: the median ratio of the alternating pairs when they ran (compare.sh does),
    # else the ratio of the rounds' medians.
    pmed, pairs = pair_ratios(R, a.w3_pairs)
    if pmed:
        pf, praw, ratio = pmed
        spread = f"{min(x[2] for x in pairs):.0%}..{max(x[2] for x in pairs):.0%}"
        add(
            "3_retr_crlf_vs_raw",
            f"3. RETR of the same message as facteur delivers it (CRLF: sendfile), against raw "
            f"(median of {len(pairs)} alternating pairs' ratios, spread {spread})",
            pf, "raw copy " + fmt(praw, "MB/s") + (f"; Dovecot {fmt(dc, 'MB/s')}" if dc else ""),
            "MB/s", 0, ">= 90% of raw", ratio,
            ratio >= 0.90, f"{ratio:.0%} of raw",
            dict(other=praw, pairs=[dict(facteur=f, raw=r, ratio=q) for f, r, q in pairs],
                 rounds_facteur=fc, rounds_raw=raw, facteur_runs=fcruns, dovecot=dc,
                 dovecot_runs=dcruns, raw_runs=rawruns),
        )
    else:
        ratio = fc / raw if fc and raw else None
        add(
            "3_retr_crlf_vs_raw",
            "3. RETR of the same message as facteur delivers it (CRLF: sendfile), against raw",
            fc, "raw copy " + fmt(raw, "MB/s") + (f"; Dovecot {fmt(dc, 'MB/s')}" if dc else ""),
            "MB/s", 0, ">= 90% of raw", ratio,
            ratio is not None and ratio >= 0.90, f"{ratio:.0%} of raw" if ratio else "n/a",
            dict(other=raw, facteur_runs=fcruns, dovecot=dc, dovecot_runs=dcruns,
                 raw_runs=rawruns),
        )
    rawtls, rawtlsruns = median_mb_per_sec(R, "raw-tls", a.w3_runs)
    # The goal's row: the median ratio of the pairs (POP3S RETR right beside plain RETR) when
    # they ran, else the ratio of the rounds' medians.
    tmed, tpairs = pair_ratios(R, a.w3_pairs, ("facteur-crlf-tls", "facteur-crlf"))
    if tmed:
        pt, pp, ratio = tmed
        spread = f"{min(x[2] for x in tpairs):.0%}..{max(x[2] for x in tpairs):.0%}"
        add(
            "3_retr_crlf_pop3s",
            f"3. the same over POP3S, against facteur's plain RETR (median of {len(tpairs)} "
            f"alternating pairs' ratios, spread {spread})",
            pt, "plain " + fmt(pp, "MB/s") + (f"; Dovecot POP3S {fmt(dt, 'MB/s')}" if dt else ""),
            "MB/s", 0, ">= 70% of plain", ratio,
            ratio >= 0.70, f"{ratio:.0%} of plain",
            dict(other=pp, pairs=[dict(pop3s=t, plain=q, ratio=r) for t, q, r in tpairs],
                 rounds_pop3s=ft, rounds_plain=fc, facteur_runs=ftruns, dovecot=dt,
                 dovecot_runs=dtruns, raw_tls=rawtls, raw_tls_runs=rawtlsruns),
        )
    else:
        ratio = ft / fc if ft and fc else None
        add(
            "3_retr_crlf_pop3s", "3. the same over POP3S, against facteur's plain RETR",
            ft, "plain " + fmt(fc, "MB/s") + (f"; Dovecot POP3S {fmt(dt, 'MB/s')}" if dt else ""),
            "MB/s", 0, ">= 70% of plain", ratio,
            ratio is not None and ratio >= 0.70, f"{ratio:.0%} of plain" if ratio else "n/a",
            dict(other=fc, facteur_runs=ftruns, dovecot=dt, dovecot_runs=dtruns,
                 raw_tls=rawtls, raw_tls_runs=rawtlsruns),
        )
    if rawtls:
        extra_rows.append((
            "3. POP3S RETR against the same client's TLS limit (a sender encrypting from memory)",
            fmt(ft, "MB/s") + (f" ({ft / rawtls:.0%})" if ft else ""),
            fmt(dt, "MB/s") + (f" ({dt / rawtls:.0%})" if dt else ""),
            "raw TLS copy " + fmt(rawtls, "MB/s") + " (TLS 1.3, AES-128-GCM)",
        ))
    # The client's own CPU time (its thread) per RETR, as a share of the RETR's time: near 100%
    # the client, not the server, sets the pace.
    busy = {n: client_busy(R, n, a.w3_runs)
            for n in ("facteur-crlf", "dovecot-crlf", "facteur-crlf-tls", "dovecot-crlf-tls",
                      "raw", "raw-tls")}
    if any(v is not None for v in busy.values()):
        pct = lambda v: f"{v:.0%}" if v is not None else "n/a"
        extra_rows.append((
            "3. the client's CPU time / RETR time (its one thread), plain; POP3S",
            f"{pct(busy['facteur-crlf'])}; {pct(busy['facteur-crlf-tls'])}",
            f"{pct(busy['dovecot-crlf'])}; {pct(busy['dovecot-crlf-tls'])}",
            f"raw copy {pct(busy['raw'])}; raw TLS copy {pct(busy['raw-tls'])}",
        ))
    # Can POP3S reach 70% of plain at all here? One core must encrypt (the server) and another
    # decrypt (the client) every octet at that speed.
    aes = load(R, "w3-aes.json")
    aes_verdict = None
    if aes:
        aes_mb = min(aes["seal_mb_per_sec"], aes["open_mb_per_sec"])
        need = 0.7 * fc if fc else None
        if need is None:
            aes_verdict = "n/a (no plain RETR figure)"
        elif aes_mb < need:
            aes_verdict = (f"out of reach on this machine: 70% of plain is {need:,.0f} MB/s, more "
                           f"than one core seals or opens AES-128-GCM ({aes_mb:,.0f} MB/s)")
        else:
            aes_verdict = (f"reachable in principle: 70% of plain is {need:,.0f} MB/s, one core "
                           f"seals and opens AES-128-GCM at {aes_mb:,.0f} MB/s "
                           f"({aes_mb / need:.2f}x that), before any copy or system call")
        extra_rows.append((
            "3. AES-128-GCM on one core of this machine (aws-lc-rs, 16 KiB records: seal; open)",
            f"{aes['seal_mb_per_sec']:,.0f} MB/s; {aes['open_mb_per_sec']:,.0f} MB/s", "",
            "POP3S >= 70% of plain: " + aes_verdict,
        ))
        data["workloads"]["3_retr_crlf_pop3s"].update(aes=aes, aes_verdict=aes_verdict)
        notes.append("workload 3, POP3S >= 70% of plain: " + aes_verdict)

    # 4: login + UIDL on the big maildrop.
    for kind in ("dropped", "cold", "warm"):
        fv, fall, fbad = w4_median(R, "facteur", kind, a.reps, a.huge)
        dv, dall, dbad = w4_median(R, "dovecot", kind, a.reps, a.huge)
        if kind == "dropped" and not fall:
            notes.append("workload 4: the page cache could not be dropped here; no truly cold row")
            continue
        fs, _ = w4_stat_median(R, "facteur", kind, a.reps)
        ds, _ = w4_stat_median(R, "dovecot", kind, a.reps)
        if kind != "warm":
            extra_rows.append((
                f"4. the first STAT after that {kind} login + UIDL",
                fmt(fs and fs * 1000, "ms", 1), fmt(ds and ds * 1000, "ms", 1),
                "facteur sizes the messages a cold login deferred" if kind == "cold" else "",
            ))
        if kind == "warm":
            fo = load(R, "w4-facteur-warm-1.json")
            do = load(R, "w4-dovecot-warm-1.json")
            extra_rows.append((
                "4. size of the UIDL listing",
                fmt(fo and fo["octets"], "octets"), fmt(do and do["octets"], "octets"),
                "facteur's unique-ids are the Maildir base names; Dovecot's are 16 hex digits",
            ))
        notes.extend(f"workload 4 facteur {b}" for b in fbad)
        notes.extend(f"workload 4 Dovecot {b}" for b in dbad)
        fms = fv * 1000 if fv is not None else None
        dms = dv * 1000 if dv is not None else None
        ratio = fv / dv if fv and dv else None
        goal = {"warm": 0.1, "cold": 0.2}.get(kind)
        what = {"dropped": "truly cold (page cache dropped, no index)",
                "cold": "cold (no index)", "warm": "warm"}[kind]
        add(
            f"4_login_uidl_{kind}",
            f"4. login + UIDL, {a.huge:,} messages, {what} (median of {a.reps})",
            fms, fmt(dms, "ms", 1), "ms", 1, f"<= {goal:g}x" if goal else "none: reported",
            ratio, None if goal is None else ratio is not None and ratio <= goal,
            f"{ratio:.3f}x" if ratio else "n/a",
            dict(other=dms, facteur_secs=fall, dovecot_secs=dall),
        )

    # 5: memory per idle session.
    fv, fb, fa = w5_per_session(R, "facteur", a.idle)
    dv, db, da = w5_per_session(R, "dovecot", a.idle)
    for who, after in (("facteur", fa), ("Dovecot", da)):
        if after and "error" in after:
            notes.append(f"workload 5 {who}: {after['error']}")
    ratio = fv / dv if fv and dv else None
    add(
        "5_memory_per_idle_session",
        f"5. private memory (USS) per idle authenticated session, {a.idle:,} sessions",
        fv, fmt(dv, "KiB", 1), "KiB", 1, "<= 1/20 (0.05x)", ratio,
        ratio is not None and ratio <= 0.05, f"{ratio:.3f}x (1/{1/ratio:.0f})" if ratio and ratio > 0 else (f"{ratio:.3f}x" if ratio is not None else "n/a"),
        dict(other=dv, facteur_before=fb, facteur_after=fa, dovecot_before=db, dovecot_after=da),
    )
    # 5 over POP3S: the goal is facteur's own figure (a TLS session's state is most of it).
    fv, fb, fa = w5_per_session(R, "facteur-pop3s", a.idle)
    dv, db, da = w5_per_session(R, "dovecot-pop3s", a.idle)
    for who, after in (("facteur", fa), ("Dovecot", da)):
        if after and "error" in after:
            notes.append(f"workload 5 POP3S {who}: {after['error']}")
    ratio = fv / dv if fv and dv else None
    add(
        "5_memory_per_idle_session_pop3s",
        f"5. private memory (USS) per idle POP3S session, {a.idle:,} sessions",
        fv, fmt(dv, "KiB", 1), "KiB", 1, "<= 8 KiB", ratio,
        fv is not None and fv <= 8,
        f"{ratio:.3f}x" if ratio is not None else "n/a",
        dict(other=dv, facteur_before=fb, facteur_after=fa, dovecot_before=db, dovecot_after=da),
    )

    # Every setup side by side: facteur on Maildir, Dovecot, facteur on PostgreSQL (one node,
    # clients connect to it), and HAProxy in front of 1 and 3 nodes on that PostgreSQL.
    setups = [("facteur", "facteur Maildir"), ("dovecot", "Dovecot")]
    if a.pg:
        setups += [("facteur-pg", "facteur PostgreSQL"), ("pg-haproxy-1", "HAProxy + 1 node (PG)"),
                   ("pg-haproxy-3", "HAProxy + 3 nodes (PG)")]
    per = {who: {} for who, _ in setups}
    for n, key in ((1, "1_sessions_plain"), (2, "2_sessions_pop3s"),
                   ("1n", "1_sessions_plain_no_auth_cache")):
        for who, _ in setups:
            total, c = w12_setup(R, n, who, a.rounds)
            if total:
                per[who][key] = dict(sessions_per_sec=total["sessions_per_sec"], runs=total,
                                     cpu=c)
                if total["sessions_failed"] and who not in ("facteur", "dovecot"):
                    notes.append(f"workload {n}: {total['sessions_failed']} of "
                                 f"{total['sessions']} {who} sessions failed: "
                                 f"{total['errors_by_kind']}")
    for who, _ in setups:
        v, runs = median_mb_per_sec(R, who, a.w3_runs)
        if runs:
            per[who]["3_retr_64mib"] = dict(mb_per_sec=v, runs=runs)
        for kind in ("cold", "warm"):
            v, secs, bad = w4_median(R, who, kind, a.reps, a.huge)
            if who == "facteur-pg":
                notes.extend(f"workload 4 {who} {b}" for b in bad)
            if secs:
                per[who][f"4_login_uidl_{kind}"] = dict(ms=v * 1000, secs=secs)
        v, before, after = w5_per_session(R, who, a.idle)
        if before or after:
            entry = dict(kib=v, before=before, after=after)
            pb = load(R, f"w5-{who}-pg-before.json")
            pa = load(R, f"w5-{who}-pg-after.json")
            if pb and pa:
                entry["postgresql_uss_growth_kib"] = pa["uss_kib"] - pb["uss_kib"]
            per[who]["5_memory_per_idle_session"] = entry
            if after and "error" in after and who not in ("facteur", "dovecot"):
                notes.append(f"workload 5 {who}: {after['error']}")

    def cell(who, key, field, unit, digits):
        e = per[who].get(key)
        v = e and e.get(field)
        if v is None:
            return "-"
        text = fmt(v, unit, digits).strip()
        d = per["dovecot"].get(key)
        dv = d and d.get(field)
        if who != "dovecot" and dv:
            text += f" ({v / dv:.2f}x)"
        return text

    def cpu_cell(who, key):
        c = (per[who].get(key) or {}).get("cpu")
        if not c:
            return "-"
        text = fmt(c["server_cpu_ms_per_session"], "ms", 2)
        if "postgresql_cpu_ms_per_session" in c and who not in ("facteur", "dovecot"):
            text += f" + PG {c['postgresql_cpu_ms_per_session']:.2f} ms"
        if "haproxy_cpu_ms_per_session" in c and who.startswith("pg-haproxy"):
            text += f" + HAProxy {c['haproxy_cpu_ms_per_session']:.2f} ms"
        return text

    setup_rows = [
        ("1. sessions/s, plain", lambda w: cell(w, "1_sessions_plain", "sessions_per_sec", "", 0)),
        ("1. server CPU per session, plain", lambda w: cpu_cell(w, "1_sessions_plain")),
        ("1. sessions/s, plain, no authentication cache",
         lambda w: cell(w, "1_sessions_plain_no_auth_cache", "sessions_per_sec", "", 0)),
        ("2. sessions/s, POP3S", lambda w: cell(w, "2_sessions_pop3s", "sessions_per_sec", "", 0)),
        ("2. server CPU per session, POP3S", lambda w: cpu_cell(w, "2_sessions_pop3s")),
        ("3. RETR of 64 MiB, MB/s", lambda w: cell(w, "3_retr_64mib", "mb_per_sec", "", 0)),
        (f"4. login + UIDL, {a.huge:,} messages, cold, ms",
         lambda w: cell(w, "4_login_uidl_cold", "ms", "", 1)),
        (f"4. login + UIDL, {a.huge:,} messages, warm, ms",
         lambda w: cell(w, "4_login_uidl_warm", "ms", "", 1)),
        ("5. USS per idle session, KiB", lambda w: cell(w, "5_memory_per_idle_session", "kib", "", 1)),
    ]
    pg_goal = None
    if a.pg:
        pv = (per["facteur-pg"].get("1_sessions_plain") or {}).get("sessions_per_sec")
        dv = (per["dovecot"].get("1_sessions_plain") or {}).get("sessions_per_sec")
        pv2 = (per["facteur-pg"].get("2_sessions_pop3s") or {}).get("sessions_per_sec")
        dv2 = (per["dovecot"].get("2_sessions_pop3s") or {}).get("sessions_per_sec")
        ratio = pv / dv if pv and dv else None
        ratio2 = pv2 / dv2 if pv2 and dv2 else None
        pg_goal = dict(
            goal="PostgreSQL >= 2x Dovecot sessions/s (facteur-pg, one node beside its database, "
                 "workload 1 plain; POP3S shown beside it)",
            ratio_plain=ratio, ratio_pop3s=ratio2,
            passed=ratio is not None and ratio >= 2.0,
        )
    data["setups"] = {who: dict(label=label, **per[who]) for who, label in setups}
    if a.pg:
        data["postgresql"] = dict(
            version=a.pg_version, haproxy_version=a.haproxy_version,
            migrate_secs=a.migrate_secs, goal=pg_goal,
            node_logs={os.path.basename(p): log_summary(p, "facteur") for p in a.pg_logs},
        )
        for path, summary in data["postgresql"]["node_logs"].items():
            if summary and summary["problems"]:
                notes.append(f"{path}: {summary['problems']}; first: {summary['first_problem']}")

    flog = log_summary(a.facteur_log, "facteur")
    dlog = log_summary(a.dovecot_log, "dovecot")
    if flog and flog["problems"]:
        notes.append(f"facteur log: {flog['problems']}; first: {flog['first_problem']}")
    if dlog and dlog["problems"]:
        notes.append(f"Dovecot log: {dlog['problems']}; first: {dlog['first_problem']}")

    scheme_text = (
        "{SHA512-CRYPT} with 5000 rounds (the default)" if a.scheme == "SHA512-CRYPT"
        else "{PLAIN} (no hashing: the servers' own cost)"
    )
    m = machine()
    data.update(
        machine=m,
        facteur_version=a.facteur_version,
        dovecot_version=a.dovecot_version,
        command=a.command,
        load_average_at_start=a.load,
        load_average_at_end=a.load_end,
        settings=dict(
            duration_secs=a.duration, rounds=a.rounds, w3_runs=a.w3_runs,
            concurrency=a.concurrency, users=a.users,
            idle_sessions=a.idle, huge_messages=a.huge, reps=a.reps,
            password_scheme=scheme_text, certificate="ECDSA P-256, self-signed",
        ),
        facteur_log=flog,
        dovecot_log=dlog,
        notes=notes,
    )
    print()
    print("| every setup (ratio to Dovecot) | " + " | ".join(label for _, label in setups) + " |")
    print("| --- " * (len(setups) + 1) + "|")
    for label, f in setup_rows:
        print(f"| {label} | " + " | ".join(f(who) for who, _ in setups) + " |")
    if a.pg:
        growth = (per["facteur-pg"].get("5_memory_per_idle_session") or {}).get(
            "postgresql_uss_growth_kib")
        print()
        if pg_goal["ratio_plain"] is not None:
            verdict = "PASS" if pg_goal["passed"] else "MISS"
            print(f"Goal: PostgreSQL >= 2x Dovecot sessions/s: {pg_goal['ratio_plain']:.2f}x plain"
                  + (f", {pg_goal['ratio_pop3s']:.2f}x POP3S" if pg_goal["ratio_pop3s"] else "")
                  + f": {verdict}")
        else:
            print("Goal: PostgreSQL >= 2x Dovecot sessions/s: n/a (no figure): MISS")
        print(f"PostgreSQL: {a.pg_version}, defaults with fsync on, on a Unix socket, beside the "
              f"servers on this machine; {a.haproxy_version}. facteur migrate copied the seed "
              f"into it in {a.migrate_secs:.1f} s (synchronous_commit off for the copy only). "
              "facteur-pg: one node, clients connect to it; HAProxy + N nodes: mode tcp, "
              "roundrobin, send-proxy-v2, TLS passed through to the nodes. Server CPU: every "
              "facteur process of the setup; + PG: every postgres process; + HAProxy: its "
              "process. Workload 4 cold on PostgreSQL: the first session after the node "
              "restarts (pool empty, nothing prepared), the database running and its buffers "
              "warm. Workload 5: the node's own USS"
              + (f"; PostgreSQL's USS grew by {growth:,} KiB with the "
                 f"{a.idle:,} idle sessions" if growth is not None else "") + ".")
    busy = os.path.join(R, "busy-at-start.txt")
    if os.path.exists(busy):
        with open(busy) as f:
            data["busiest_processes_at_start"] = [l.strip() for l in f if l.strip()]

    print()
    print("| workload | facteur | Dovecot | facteur/Dovecot | goal | |")
    print("| --- | --- | --- | --- | --- | --- |")
    for label, fv, dv, ratio, goal, passed in rows:
        verdict = "" if passed is None else ("PASS" if passed else "MISS")
        print(f"| {label} | {fv} | {dv} | {ratio} | {goal} | {verdict} |")
    print()
    print(
        f"Machine: {m['cpus']} CPUs ({m['cpu_model']}), {m['ram_gib']} GiB RAM, "
        f"Linux {m['kernel']}; load average {a.load} at the start, {a.load_end} at the end."
    )
    print()
    print("| to explain the figures above | facteur | Dovecot | |")
    print("| --- | --- | --- | --- |")
    for row in extra_rows:
        print("| " + " | ".join(row) + " |")
    print()
    print(f"facteur: {a.facteur_version}; Dovecot: {a.dovecot_version}.")
    print(f"Command: {a.command}")
    print(
        f"Passwords: {scheme_text} in one passwd-file read by "
        "both, each server with its authentication cache on for an hour (facteur's default; "
        "Dovecot's auth_cache_size = 10M, auth_cache_ttl = 1 hour), except in the row that "
        "turns both off; TLS: one self-signed ECDSA P-256 certificate, a full handshake per session. "
        f"Workloads 1 and 2: {a.duration:g} s per server after a 2 s warm-up, in {a.rounds} "
        f"turns taken in the order ABBAAB, {a.users} users. "
        "Workload 3: MB/s = 10^6 octets/s of wire bytes, one warm-up round, then each server and "
        "the raw copy in turn; the raw copy "
        "sends the same wire bytes with sendfile(2) from the page cache over loopback TCP to "
        "the same client as RETR (`facteur-bench retr` and `raw`: Rust, 256 KiB reads, rustls "
        "for TLS); the raw TLS copy encrypts them from memory with facteur's TLS configuration. "
        "Workload 4: cold = first session after a restart with the index files removed, page "
        "cache warm; warm = the next session. Workload 5: (USS of the whole process tree with "
        "the sessions idle - USS before) / sessions; Dovecot runs one pop3 process per session "
        "by design."
    )
    if data.get("busiest_processes_at_start"):
        print("Busiest processes at the start: " + "; ".join(data["busiest_processes_at_start"]))
    for n in notes:
        print(f"- {n}")
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    print(f"\n(written to {a.out})")


if __name__ == "__main__":
    main()
