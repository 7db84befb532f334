"""Where a request's CPU goes inside the running gateway: µs per request of each stage (``stage_timer.py``).

A function's cost measured in a loop of its own is about a third of what it costs in the gateway, where every
request in flight shares the processor's caches; these numbers are taken in place, while wrk loads the gateway
at c=16 with the small body, ungoverned and governed (a team budget, a model policy and routing, as
``gateway_bench.py --governed``). The main thread's and the writer thread's CPU per request over the same
run, read from ``/proc``, put the stages in proportion. Each timed call adds ~0.5 µs of its own (two clock
reads), so the stages add up to a little more than they cost untimed.

    python bench/stages_bench.py [--seconds N]   # ~1 minute; writes bench/results/stages.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from gateway_bench import FAKE_PORT, GOVERNED, GW_PORT, ROOT, bench_folder, create_key, start, start_fake, wait_up, wrk
from write_interval_bench import thread_cpu


def _gateway(work: Path, env: dict[str, str], name: str, port: int, extra: str) -> tuple[subprocess.Popen[bytes], str]:
    config = work / f"{name}.yaml"
    config.write_text(
        f"server: {{port: {port}}}\nledger: {{path: {work / f'{name}.db'}}}\n"
        f"providers:\n  - {{name: a, kind: anthropic, base_url: 'http://127.0.0.1:{FAKE_PORT}', models: ['claude-*']}}\n"
        + extra
    )
    key = create_key(config)
    timer = [sys.executable, str(ROOT / "stage_timer.py"), "--config", str(config), "serve", "--log-level", "WARNING"]
    proc = start(timer, 1, {**env, "STAGES_OUT": str(work / f"{name}.stages.json")})
    return proc, key


def _measure(
    proc: subprocess.Popen[bytes], url: str, body: Path, key: str, seconds: int, out: Path
) -> dict[str, object]:
    headers = {"Content-Type": "application/json", "anthropic-version": "2023-06-01", "x-api-key": key}
    wrk(url, body, headers, 16, 2)  # warm-up
    proc.send_signal(signal.SIGUSR2)  # the counts start now
    time.sleep(0.5)
    main_before, writer_before = thread_cpu(proc.pid)
    served = wrk(url, body, headers, 16, seconds)["requests"]
    main_after, writer_after = thread_cpu(proc.pid)
    out.unlink(missing_ok=True)
    proc.send_signal(signal.SIGUSR2)
    deadline = time.monotonic() + 10
    while not out.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)  # written in one go; let it finish
    stages = json.loads(out.read_text())
    return {
        "requests": served,
        "main_thread_us_per_request": round((main_after - main_before) / served * 1e6, 1),
        "other_threads_us_per_request": round((writer_after - writer_before) / served * 1e6, 1),
        "stages": stages["stages"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=15)
    args = parser.parse_args()
    work, env = bench_folder("stages")
    body = work / "small.json"
    fake = start_fake(env)
    procs: list[subprocess.Popen[bytes]] = []
    results: dict[str, object] = {"python": sys.version.split()[0], "seconds": args.seconds}
    try:
        for n, (name, extra) in enumerate((("ungoverned", ""), ("governed", GOVERNED))):
            port = GW_PORT + n
            proc, key = _gateway(work, env, name, port, extra)
            procs.append(proc)
            wait_up(f"http://127.0.0.1:{port}/")
            url = f"http://127.0.0.1:{port}/v1/messages"
            results[name] = measured = _measure(proc, url, body, key, args.seconds, work / f"{name}.stages.json")
            print(
                f"\n{name}: main thread {measured['main_thread_us_per_request']} µs/request, "
                f"writer {measured['other_threads_us_per_request']} µs/request",
                flush=True,
            )
            for label, stage in measured["stages"].items():  # type: ignore[union-attr]
                print(f"  {stage['us_per_request']:7.2f} µs  {label}", flush=True)
    finally:
        for proc in procs:
            proc.terminate()
        fake.kill()
        time.sleep(1)
    out = ROOT / "results" / "stages.json"
    out.write_text(json.dumps(results, indent=2, ensure_ascii=False))
    print(f"wrote {out}")


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
