#!/usr/bin/env python3
"""Orchestrates the load benchmark (called by run.sh): starts the mock upstream, nginx and
smsfence instances on loopback, runs wrk rounds interleaved, reads CPU time and peak RSS
from /proc, prints a table of medians and ratios, and writes results.json."""

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


def raised_rules(src, dst):
    """The default rules with every limit raised out of reach: the same evaluation and
    state writes per request, but every request is forwarded."""
    os.makedirs(dst, exist_ok=True)
    for name in os.listdir(src):
        if not name.endswith(".toml"):
            continue
        with open(os.path.join(src, name)) as f:
            text = f.read()
        text = re.sub(r'(?m)^rate = "\d+/', 'rate = "1000000000/', text)
        text = re.sub(r"(?m)^burst = \d+", "burst = 1000000000", text)
        with open(os.path.join(dst, name), "w") as f:
            f.write(text)


def wrk(args, port, conns, delay_ms=0):
    env = dict(os.environ, WRK_DELAY_MS=str(delay_ms))
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


def main():
    ap = argparse.ArgumentParser()
    for a in ["out", "nginx", "smsfence", "mock", "rules", "lua", "workers"]:
        ap.add_argument("--" + a, required=True)
    for a in ["rounds", "duration", "conns", "threads"]:
        ap.add_argument("--" + a, type=int, required=True)
    args = ap.parse_args()
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

        med = {}
        for name, rs in results.items():
            med[name] = {k: statistics.median(r[k] for r in rs)
                         for k in ["rps", "p50", "p99", "p999", "cpu_us_per_req", "errors_status", "requests"]}
            med[name]["hwm_kib"] = hwm_kib(targets[name][1]())

        # Added latency at half of each proxy's max throughput (1-worker budget only):
        # wrk paces each connection (delay 2 ms), the same pacing direct for comparison.
        half = {}
        w0 = min(workers)
        for name, (port, _, w) in targets.items():
            if w != w0:
                continue
            conns = max(1, round(med[name]["rps"] / 2 * 0.002))
            r = wrk(args, port, conns, delay_ms=2)
            base = wrk(args, UP, conns, delay_ms=2)
            half[name] = {"conns": conns, "rps": r["rps"], "p99": r["p99"], "p999": r["p999"],
                          "direct_p99": base["p99"], "added_p99_us": r["p99"] - base["p99"]}
            print(f"half-rate {name:38} {r['rps']:8.0f} req/s p99 {r['p99']}µs "
                  f"(direct {base['p99']}µs)", file=sys.stderr)

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
            json.dump({"rounds": results, "median": med, "half_rate": half,
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
