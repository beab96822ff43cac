#!/usr/bin/env python3
"""Orchestrates the load benchmark (called by run.sh): starts the mock upstream, nginx and
smsfence instances on loopback, runs wrk rounds interleaved, reads CPU time and peak RSS
from /proc, prints the ratios of every round, a table of medians, and writes
results.json.

Targets, per CPU budget w (1 nginx worker vs 1 tokio worker thread, then 2 vs 2):
  direct                               wrk -> mock upstream
  nginx_proxy_pass/w                   wrk -> nginx proxy_pass -> mock
  nginx_limit_req/w                    the same with limit_req keyed on the recipient
  smsfence_none_rules/w                smsfence with an empty rule set
  smsfence_default_rules/w             the shipped rules: a flood of new numbers to one
                                       country is soon refused (country velocity,
                                       conversion rate) — mostly native refusals, not
                                       forwarded
  smsfence_default_all_forwarded_rules/w  the shipped rules evaluated in full with every
                                       request forwarded (number limits as shipped, other
                                       limits raised, heuristics in shadow): the
                                       like-for-like comparison with nginx limit_req
Every request carries a recipient never sent before in the run (WRK_SEED)."""

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

UP = 18080
TICK = os.sysconf("SC_CLK_TCK")


def cpu_ticks(pids):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except OSError:
            pass
    return total


def hwm_kib(pids):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                m = re.search(r"VmHWM:\s+(\d+)", f.read())
            total += int(m.group(1)) if m else 0
        except OSError:
            pass
    return total


def children(pid):
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def wait_port(port, timeout=10.0):
    import socket

    end = time.time() + timeout
    while time.time() < end:
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


NGINX_CONF = """
worker_processes {workers};
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream up {{ server 127.0.0.1:{up}; keepalive 128; }}
    limit_req_zone $http_x_to zone=recipient:64m rate=1r/m;
    server {{
        listen 127.0.0.1:{pp};
        location / {{
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
    server {{
        listen 127.0.0.1:{lr};
        location / {{
            limit_req zone=recipient burst=1 nodelay;
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""

SMSFENCE_CONF = """
[server]
listen = "127.0.0.1:{port}"
worker_threads = {workers}

[admin]
listen = "127.0.0.1:{admin}"

[[route]]
name = "twilio"
preset = "twilio"
upstream = "http://127.0.0.1:{up}"
"""


def forwarded(text):
    """The same transformation as `forwarded` in benches/decision.rs and memory.rs: limits
    keyed on the number as shipped (a new number never reaches them, and their keys live
    as long as in production), every other limit raised out of reach, every heuristic in
    shadow mode (its windows read and written as when enforced; never refusing)."""
    out, block = [], []

    def flush():
        head = block[0].strip() if block else ""
        number_limit = head == "[[limit]]" and any(
            l.strip().replace(" ", "") == 'key="number"' for l in block)
        for i, l in enumerate(block):
            t = l.lstrip()
            if head == "[[limit]]" and not number_limit and t.startswith("rate ="):
                unit = t.split("/", 1)[1] if "/" in t else '1s"'
                out.append(f'rate = "1000000000/{unit}')
            elif head == "[[limit]]" and not number_limit and t.startswith("burst ="):
                out.append("burst = 1000000000")
            elif not (head == "[[heuristic]]" and t.startswith("mode =")):
                out.append(l)
            if i == 0 and head == "[[heuristic]]":
                out.append('mode = "shadow"')
        block.clear()

    for l in text.splitlines():
        if l.startswith("["):
            flush()
        block.append(l)
    flush()
    return "\n".join(out) + "\n"


def raised_rules(src, dst):
    """The default rules with every request forwarded (see `forwarded`)."""
    os.makedirs(dst, exist_ok=True)
    for name in os.listdir(src):
        if not name.endswith(".toml"):
            continue
        with open(os.path.join(src, name)) as f:
            text = f.read()
        with open(os.path.join(dst, name), "w") as f:
            f.write(forwarded(text))


SEED = [0]


def wrk(args, port, conns, delay_ms=0):
    # A fresh block of recipients for every run (see distinct.lua).
    SEED[0] += 1
    env = dict(os.environ, WRK_DELAY_MS=str(delay_ms), WRK_SEED=str(SEED[0] % 150))
    cmd = [
        "wrk", f"-t{min(args.threads, conns)}", f"-c{conns}", f"-d{args.duration}s",
        "-s", args.lua, f"http://127.0.0.1:{port}/",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.duration + 30)
    line = [l for l in out.stdout.splitlines() if l.startswith("{")]
    if not line:
        raise RuntimeError(f"wrk gave no summary: {out.stdout} {out.stderr}")
    r = json.loads(line[-1])
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    return r


def paced(args, port, target):
    """Added p99 at `target` req/s. wrk paces each connection (2 ms between requests), the
    same pacing direct to the upstream for comparison. On a shared machine the baseline's
    own p99 moves by milliseconds from one run to the next, so the paced runs alternate
    direct / target / direct …, `rounds` times: each target run is compared with the mean of
    the direct runs on either side, and the median of those differences is reported (with
    their range)."""
    # Each connection sends one request per (2 ms + latency): start from the 2 ms, and
    # correct once by the rate achieved.
    conns = max(1, round(target * 0.002))
    r = wrk(args, port, conns, delay_ms=2)
    if r["rps"] < 0.9 * target:
        conns = max(conns + 1, round(conns * target / max(r["rps"], 1)))
    directs = [wrk(args, UP, conns, delay_ms=2)]
    runs = []
    for _ in range(args.rounds):
        runs.append(wrk(args, port, conns, delay_ms=2))
        directs.append(wrk(args, UP, conns, delay_ms=2))
    added = [r["p99"] - (directs[i]["p99"] + directs[i + 1]["p99"]) / 2
             for i, r in enumerate(runs)]
    mid = sorted(range(len(runs)), key=lambda i: added[i])[len(runs) // 2]
    r = runs[mid]
    return {"conns": conns, "target_rps": target, "rps": r["rps"],
            "p50": r["p50"], "p99": r["p99"], "p999": r["p999"],
            "direct_p99": statistics.median(d["p99"] for d in directs),
            "added_p99_us": round(statistics.median(added)),
            "added_p99_us_range": [round(min(added)), round(max(added))],
            "non2xx": sum(x["errors_status"] for x in runs)}


def main():
    ap = argparse.ArgumentParser()
    for a in ["out", "nginx", "smsfence", "mock", "rules", "lua", "workers"]:
        ap.add_argument("--" + a, required=True)
    for a in ["rounds", "duration", "conns", "threads"]:
        ap.add_argument("--" + a, type=int, required=True)
    ap.add_argument("--only", default="")
    ap.add_argument("--no-half", action="store_true")
    ap.add_argument("--steady", type=int, default=0)
    args = ap.parse_args()
    if not 1 <= args.threads <= 4:
        sys.exit("THREADS must be 1 to 4 (distinct.lua gives each thread its own numbers)")
    workers = [int(w) for w in args.workers.split()]
    tmp = tempfile.mkdtemp(prefix="smsfence-load-")
    procs = []

    def spawn(cmd, **kw):
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(f"{tmp}/{len(procs)}.log", "w"), **kw)
        procs.append(p)
        return p

    norules = f"{tmp}/norules"
    os.makedirs(norules)
    with open(f"{norules}/00-settings.toml", "w") as f:
        f.write("[settings]\nshadow = false\n")
    raised = f"{tmp}/raised"
    raised_rules(args.rules, raised)

    targets = {}  # name -> (port, pids-getter)
    try:
        mock = spawn([args.mock, f"127.0.0.1:{UP}", "2"])
        wait_port(UP)
        targets["direct"] = (UP, lambda p=mock.pid: [p], 0)
        for w in workers:
            d = f"{tmp}/nginx{w}"
            os.makedirs(d)
            pp, lr = 18100 + 10 * w + 1, 18100 + 10 * w + 2
            with open(f"{d}/nginx.conf", "w") as f:
                f.write(NGINX_CONF.format(workers=w, dir=d, up=UP, pp=pp, lr=lr))
            ng = spawn([args.nginx, "-p", d, "-c", f"{d}/nginx.conf", "-g", "daemon off;"])
            wait_port(pp)
            pids = lambda p=ng.pid: [p] + children(p)
            targets[f"nginx_proxy_pass/w{w}"] = (pp, pids, w)
            targets[f"nginx_limit_req/w{w}"] = (lr, pids, w)
            for i, (name, rules) in enumerate(
                [("none", norules), ("default", args.rules), ("default_all_forwarded", raised)]
            ):
                port, admin = 18200 + 10 * w + i, 18300 + 10 * w + i
                conf = f"{tmp}/smsfence-{w}-{name}.toml"
                with open(conf, "w") as f:
                    f.write(SMSFENCE_CONF.format(port=port, admin=admin, workers=w, up=UP))
                sf = spawn([args.smsfence, "--config", conf, "--rules", rules, "--no-watch"],
                           env=dict(os.environ, RUST_LOG="warn"))
                wait_port(port)
                targets[f"smsfence_{name}_rules/w{w}"] = (port, lambda p=sf.pid: [p], w)

        # smsfence builds its normalization tables on a blocking thread at start (≈ 0.5 s
        # of CPU each): wait until every process is idle, or round 1 measures that too.
        everyone = [pid for _, (_, pids, _) in targets.items() for pid in pids()]
        end = time.time() + 30
        while time.time() < end:
            c0 = cpu_ticks(everyone)
            time.sleep(0.5)
            if cpu_ticks(everyone) - c0 <= 1:
                break

        if args.only:
            keep = re.compile(args.only)
            targets = {n: t for n, t in targets.items()
                       if n == "direct" or n.startswith(("nginx_limit_req", "nginx_proxy_pass"))
                       or keep.search(n)}
        results = {name: [] for name in targets}
        for rnd in range(args.rounds):
            for name, (port, pids, _) in targets.items():
                ps = pids()
                c0 = cpu_ticks(ps)
                r = wrk(args, port, args.conns)
                c1 = cpu_ticks(ps)
                r["cpu_us_per_req"] = (c1 - c0) / TICK * 1e6 / max(r["requests"], 1)
                results[name].append(r)
                print(f"round {rnd + 1} {name:38} {r['rps']:9.0f} req/s  p50 {r['p50']:6d}µs "
                      f"p99 {r['p99']:6d}µs  cpu {r['cpu_us_per_req']:5.1f}µs/req  "
                      f"non-2xx {r['errors_status']}", file=sys.stderr)

        # Ratios within each round (the run-to-run spread of req/s is 10-25% here, so the
        # comparison that holds is the one made minutes apart, not runs apart).
        per_round = []
        print(f"\nper round: req/s ratios to nginx limit_req (same budget) and to direct; "
              f"CPU µs/request ratio to nginx limit_req")
        print(f"{'round':>5} {'target':40} {'req/s':>9} {'/nginx_lr':>9} {'/nginx_pp':>9} "
              f"{'/direct':>8} {'cpu/ngx_lr':>10} {'non2xx':>7}")
        for rnd in range(args.rounds):
            d = results["direct"][rnd]
            for name, rs in results.items():
                if name == "direct":
                    continue
                w = name.rsplit("/w", 1)[1]
                r = rs[rnd]
                lr = results[f"nginx_limit_req/w{w}"][rnd]
                pp = results[f"nginx_proxy_pass/w{w}"][rnd]
                row = {"round": rnd + 1, "target": name, "rps": r["rps"],
                       "vs_nginx_limit_req": r["rps"] / lr["rps"],
                       "vs_nginx_proxy_pass": r["rps"] / pp["rps"],
                       "vs_direct": r["rps"] / d["rps"],
                       "cpu_vs_nginx_limit_req": r["cpu_us_per_req"] / max(lr["cpu_us_per_req"], 1e-9),
                       "non2xx": r["errors_status"]}
                per_round.append(row)
                print(f"{rnd + 1:>5} {name:40} {r['rps']:9.0f} {row['vs_nginx_limit_req']:9.2f} "
                      f"{row['vs_nginx_proxy_pass']:9.2f} {row['vs_direct']:8.2f} "
                      f"{row['cpu_vs_nginx_limit_req']:10.2f} {r['errors_status']:7d}")

        med = {}
        for name, rs in results.items():
            med[name] = {k: statistics.median(r[k] for r in rs)
                         for k in ["rps", "p50", "p99", "p999", "cpu_us_per_req", "errors_status", "requests"]}
            med[name]["hwm_kib"] = hwm_kib(targets[name][1]())

        # Added latency at half of each proxy's max throughput (1-worker budget only), and
        # optionally at a fixed production-like rate (--steady): see `paced`.
        w0 = min(workers)
        passes = [] if args.no_half else [("half", None)]
        if args.steady > 0:
            passes.append(("steady", args.steady))
        paced_results = {}
        for label, rate in passes:
            rows = {}
            for name, (port, _, w) in targets.items():
                if w == w0:
                    rows[name] = paced(args, port, rate or med[name]["rps"] / 2)
            paced_results[label] = rows
            what = ("half of each target's max throughput" if rate is None
                    else f"a steady {rate} req/s")
            print(f"\n{what} (1-vs-1 budget), paced (2 ms between requests per connection), "
                  f"alternating with the same pacing direct ({args.rounds} target runs; added "
                  f"p99 = median over them, and range)")
            print(f"{'target':40} {'conns':>5} {'req/s':>8} {'p50µs':>7} {'p99µs':>7} "
                  f"{'direct p99µs':>12} {'added p99µs':>11} {'range':>15}")
            for name, h in rows.items():
                lo, hi = h["added_p99_us_range"]
                print(f"{name:40} {h['conns']:5d} {h['rps']:8.0f} {h['p50']:7d} {h['p99']:7d} "
                      f"{h['direct_p99']:12.0f} {h['added_p99_us']:11d} {f'{lo}..{hi}':>15}")
        half = paced_results.get("half", {})

        direct = med["direct"]["rps"]
        print(f"\n{'target':40} {'req/s':>9} {'p50µs':>7} {'p99µs':>7} {'p99.9µs':>8} "
              f"{'cpuµs/req':>9} {'HWM MiB':>8} {'/direct':>8} {'/nginx':>8} {'non2xx':>7}")
        for name, m in med.items():
            w = name.rsplit("/w", 1)[-1] if "/w" in name else None
            ng = med.get(f"nginx_limit_req/w{w}") if w else None
            vs_ng = f"{m['rps'] / ng['rps']:8.2f}" if ng else f"{'':8}"
            print(f"{name:40} {m['rps']:9.0f} {m['p50']:7.0f} {m['p99']:7.0f} {m['p999']:8.0f} "
                  f"{m['cpu_us_per_req']:9.1f} {m['hwm_kib'] / 1024:8.1f} {m['rps'] / direct:8.2f} "
                  f"{vs_ng} {m['errors_status']:7.0f}")
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump({"rounds": results, "per_round": per_round, "median": med, "half_rate": half,
                       "steady_rate": paced_results.get("steady", {}),
                       "params": vars(args)}, f, indent=1)
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
