#!/usr/bin/env python3
"""Helpers of bench/fetch.sh (facteur fetch against fetchmail and mpop, from Dovecot and from
facteur serve).

    fetch_report.py cpu PID
        CPU seconds (user + system) used so far by the process PID and every descendant, those
        that ended included (a reaped child's time is in its parent's cutime and cstime): for
        Dovecot's master, the whole server.
    fetch_report.py report RUNS.TSV OUT.JSON KEY=VALUE...
        Read the runs (one line each: round client wall_s user_s sys_s max_rss_kib server_cpu_s
        exit_status method check load1 server), print per server (dovecot, facteur) the
        Markdown table of medians with the spread of the wall times, the client's CPU time
        (and per message), and the machine's load (1-minute average) as each run started, then
        facteur fetch's speed over each other client's (ratio of the medians, and per round);
        write OUT.JSON with the runs, the medians and the KEY=VALUE facts (versions, command,
        machine).
"""

import json
import os
import platform
import statistics
import sys

TICK = os.sysconf("SC_CLK_TCK")


def tree_cpu(root):
    parent = {}
    times = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        # After the name: state ppid ... utime(14) stime(15) cutime(16) cstime(17), 1-based.
        pid = int(name)
        parent[pid] = int(fields[1])
        times[pid] = sum(int(x) for x in fields[11:15])
    total = 0
    for pid in times:
        p = pid
        while p not in (root, 0, 1) and p in parent:
            p = parent[p]
        if p == root:
            total += times[pid]
    return total / TICK


def machine():
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(),
    }


def loads(values):
    """The loads of a client's runs, as `min-max`, or `?` if not recorded."""
    known = [v for v in values if v is not None]
    if not known:
        return "?"
    return f"{min(known):.2f}-{max(known):.2f}"


SERVER_NAMES = {"dovecot": "Dovecot", "facteur": "facteur serve"}


def summarize(runs, clients, messages, facts):
    """Medians and spreads of each client's runs (all against one server)."""
    summary = {}
    for c in clients:
        rs = [r for r in runs if r["client"] == c]
        if not rs:
            continue
        ok = all(r["exit_status"] == 0 and r["check"].startswith("ok") for r in rs)
        wall = statistics.median(r["wall_s"] for r in rs)
        cpus = [r["user_s"] + r["sys_s"] for r in rs]
        cpu = statistics.median(cpus)
        summary[c] = {
            "runs": len(rs),
            "all_runs_ok": ok,
            "median_wall_s": round(wall, 3),
            "messages_per_s": round(messages / wall, 1),
            "median_client_cpu_s": round(cpu, 3),
            "client_cpu_us_per_message": round(cpu / messages * 1e6, 1),
            "client_cpus_s": [round(x, 3) for x in cpus],
            "median_server_cpu_s": round(statistics.median(r["server_cpu_s"] for r in rs), 3),
            "median_max_rss_kib": int(statistics.median(r["max_rss_kib"] for r in rs)),
            "walls_s": [r["wall_s"] for r in rs],
            "min_wall_s": min(r["wall_s"] for r in rs),
            "max_wall_s": max(r["wall_s"] for r in rs),
            "loads1": [r["load1"] for r in rs],
            "login": sorted({r["login"] for r in rs}),
            "version": facts.get(f"{c}_version", "?"),
        }
    return summary


def against(runs, summary, other):
    """facteur fetch's speed over OTHER's: the ratio of the medians, and per round (the same
    round's runs are neighbours in time: their ratio suffers least from a change of the
    machine's load between rounds); and the ratio of their CPU times."""
    base = summary.get("facteur")
    if not base or other not in summary:
        return None
    paired = []
    for rnd in sorted({r["round"] for r in runs}):
        f = [r["wall_s"] for r in runs if r["round"] == rnd and r["client"] == "facteur"]
        m = [r["wall_s"] for r in runs if r["round"] == rnd and r["client"] == other]
        if f and m and f[0] > 0:
            paired.append(m[0] / f[0])
    ratio = summary[other]["median_wall_s"] / base["median_wall_s"]
    cpu = (
        summary[other]["median_client_cpu_s"] / base["median_client_cpu_s"]
        if base["median_client_cpu_s"] > 0
        else None
    )
    return {
        "ratio_of_medians": round(ratio, 2),
        "ratios_per_round": [round(x, 2) for x in paired],
        "median_ratio_per_round": round(statistics.median(paired), 2) if paired else None,
        "client_cpu_ratio": round(cpu, 2) if cpu else None,
    }


def print_table(server, runs, summary, messages):
    clients = list(summary)
    base = summary.get("facteur")
    print(f"### From {SERVER_NAMES.get(server, server)}")
    print()
    print(
        f"| client | median wall time ({messages:,} messages) | spread (min-max) | messages/s "
        f"| client CPU (user+sys) | client CPU per message | {SERVER_NAMES.get(server, server)} CPU "
        f"| client max RSS | login | load at the runs' starts | every message once, identical |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for c in clients:
        s = summary[c]
        ratio = ""
        if base and c != "facteur":
            ratio = f" ({s['median_wall_s'] / base['median_wall_s']:.1f}x facteur's)"
        print(
            f"| {c} {s['version']} | {s['median_wall_s']:.2f} s{ratio} "
            f"| {s['min_wall_s']:.2f}-{s['max_wall_s']:.2f} s "
            f"| {s['messages_per_s']:,.0f} | {s['median_client_cpu_s']:.2f} s "
            f"| {s['client_cpu_us_per_message']:.0f} us "
            f"| {s['median_server_cpu_s']:.2f} s | {s['median_max_rss_kib'] / 1024:.1f} MiB "
            f"| {', '.join(s['login'])} | {loads(s['loads1'])} "
            f"| {'yes, ' if s['all_runs_ok'] else 'NO, '}{s['runs']} runs |"
        )
    print()
    print(
        "Wall times of each run: "
        + "; ".join(f"{c} " + ", ".join(f"{w:.2f}" for w in summary[c]["walls_s"]) for c in clients)
        + " s. Client CPU times: "
        + "; ".join(
            f"{c} " + ", ".join(f"{w:.2f}" for w in summary[c]["client_cpus_s"]) for c in clients
        )
        + " s."
    )


def report(runs_path, out_path, facts):
    runs = []
    with open(runs_path) as f:
        for line in f:
            r = line.rstrip("\n").split("\t")
            runs.append(
                {
                    "round": int(r[0]),
                    "client": r[1],
                    "wall_s": float(r[2]),
                    "user_s": float(r[3]),
                    "sys_s": float(r[4]),
                    "max_rss_kib": int(r[5]),
                    "server_cpu_s": float(r[6]),
                    "exit_status": int(r[7]),
                    "login": r[8],
                    "check": r[9],
                    # Older runs.tsv files have no load column, and no server column (Dovecot).
                    "load1": float(r[10]) if len(r) > 10 else None,
                    "server": r[11] if len(r) > 11 else "dovecot",
                }
            )
    messages = int(facts["messages"])
    clients = []
    servers = []
    for r in runs:
        if r["client"] not in clients:
            clients.append(r["client"])
        if r["server"] not in servers:
            servers.append(r["server"])
    per_server = {}
    for server in servers:
        rs = [r for r in runs if r["server"] == server]
        summary = summarize(rs, clients, messages, facts)
        vs = {o: against(rs, summary, o) for o in clients if o != "facteur"}
        vs = {o: v for o, v in vs.items() if v}
        per_server[server] = {"summary": summary, "facteur_against": vs}
        if "mpop" in vs:
            vs["mpop"]["goal"] = 3.0
            vs["mpop"]["pass"] = vs["mpop"]["ratio_of_medians"] >= 3.0
        print_table(server, rs, summary, messages)
        for o, v in vs.items():
            goal = ""
            if o == "mpop":
                goal = f"; goal >= 3x: {'PASS' if v['pass'] else 'MISS'}"
            print()
            print(
                f"facteur fetch against {o}, from {SERVER_NAMES.get(server, server)}: "
                f"{v['ratio_of_medians']:.2f}x {o}'s speed (ratio of the medians{goal}); per round "
                + ", ".join(f"{x:.2f}" for x in v["ratios_per_round"])
                + (f" (median {v['median_ratio_per_round']:.2f})" if v["ratios_per_round"] else "")
                + (
                    f"; {v['client_cpu_ratio']:.2f}x less client CPU."
                    if v["client_cpu_ratio"]
                    else "."
                )
            )
        print()
    out = {
        "benchmark": "facteur fetch vs fetchmail vs mpop: fetch and delete over POP3S, from "
        "Dovecot and from facteur serve",
        "facts": facts,
        "machine": machine(),
        "servers": per_server,
        "runs": runs,
    }
    with open(out_path, "w") as f:
        json.dump(out, f, indent=2)
        f.write("\n")
    return (
        0
        if all(s["all_runs_ok"] for p in per_server.values() for s in p["summary"].values())
        else 1
    )


def main(argv):
    if len(argv) == 3 and argv[1] == "cpu":
        print(f"{tree_cpu(int(argv[2])):.3f}")
        return 0
    if len(argv) >= 4 and argv[1] == "report":
        facts = dict(a.split("=", 1) for a in argv[4:])
        return report(argv[2], argv[3], facts)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
