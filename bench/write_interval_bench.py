"""The ledger writer's cycle (``ledger.write_interval_seconds``): CPU per request and per written row.

One gateway per interval, all started at once on core 1 (the fake provider and wrk on core 0) and loaded in
turns of 3 s at c=16 with the small body (the order reversed every other round), so a VM whose speed drifts
slows them all alike. For each one it reads the main thread's and the other threads' CPU time from ``/proc``
(the other threads are the ledger writer's: the rest are idle), per request served and per row written.

    python bench/write_interval_bench.py [--rounds N]   # ~2 minutes; writes bench/results/write_interval.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from gateway_bench import (
    FAKE_PORT,
    GW_PORT,
    ROOT,
    bench_folder,
    create_key,
    ledger_backlog,
    start,
    start_fake,
    wait_up,
    wrk,
)

INTERVALS = (0.02, 0.05, 0.1, 0.25)


def thread_cpu(pid: int) -> tuple[float, float]:
    """CPU seconds (user + system) of the process's main thread and of all its other threads."""
    tick = os.sysconf("SC_CLK_TCK")
    main = others = 0.0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # a thread that just ended
            continue
        seconds = (int(fields[11]) + int(fields[12])) / tick
        if tid == str(pid):
            main += seconds
        else:
            others += seconds
    return main, others


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    work, env = bench_folder("interval")
    body = work / "small.json"
    fake = start_fake(env)
    gateways: dict[float, tuple[subprocess.Popen[bytes], str, dict[str, str]]] = {}
    try:
        for n, interval in enumerate(INTERVALS):
            port = GW_PORT + n
            config = work / f"interval-{interval}.yaml"
            config.write_text(
                f"server: {{port: {port}}}\n"
                f"ledger: {{path: {work / f'ledger-{interval}.db'}, write_interval_seconds: {interval}}}\n"
                "providers:\n"
                f"  - {{name: a, kind: anthropic, base_url: 'http://127.0.0.1:{FAKE_PORT}', models: ['claude-*']}}\n"
            )
            headers = {"Content-Type": "application/json", "anthropic-version": "2023-06-01"}
            headers["x-api-key"] = create_key(config)
            cmd = [sys.executable, "-m", "tokenctl", "--config", str(config), "serve", "--log-level", "WARNING"]
            gateways[interval] = (start(cmd, 1, env), f"http://127.0.0.1:{port}", headers)
        for _, url, headers in gateways.values():
            wait_up(url + "/")
            wrk(url + "/v1/messages", body, headers, 16, 2)  # warm-up
        spent = {interval: [0.0, 0.0, 0] for interval in INTERVALS}
        for round_number in range(args.rounds):
            order = list(gateways.items())
            for interval, (proc, url, headers) in order if round_number % 2 == 0 else reversed(order):
                main_before, others_before = thread_cpu(proc.pid)
                served = wrk(url + "/v1/messages", body, headers, 16, 3)["requests"]
                ledger_backlog(url)  # the writer's share for these rows is counted before the next turn
                main_after, others_after = thread_cpu(proc.pid)
                spent[interval][0] += main_after - main_before
                spent[interval][1] += others_after - others_before
                spent[interval][2] += served
        results: dict[str, object] = {"python": sys.version.split()[0], "rounds": args.rounds}
        for interval, (main_s, writer_s, served) in spent.items():
            results[str(interval)] = {
                "requests": served,
                "main_thread_us_per_request": round(main_s / served * 1e6, 1),
                "writer_us_per_row": round(writer_s / served * 1e6, 1),
                "total_us_per_request": round((main_s + writer_s) / served * 1e6, 1),
            }
            print(interval, results[str(interval)], flush=True)
    finally:
        for proc, _, _ in gateways.values():
            proc.terminate()
        fake.kill()
        time.sleep(1)
    out = ROOT / "results" / "write_interval.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
