"""tokenctl vs direct, on the fake provider over loopback, one gateway worker.

Layout (as in shared performance notes): fake provider + wrk pinned to core 0, the gateway alone
on core 1. Everything is measured in one run as ratios and differences against direct.

    python bench/gateway_bench.py            # full run, ~4 minutes; writes bench/results/latest.json
    python bench/gateway_bench.py --quick    # shorter runs

Needs `wrk` (Debian package `wrk`) and `taskset`. Metering and the ledger are on, as in production.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2 as httpx
import orjson
import psutil

ROOT = Path(__file__).resolve().parent
FAKE_PORT, GW_PORT, FLOOR_PORT = 19190, 19180, 19170


def claude_code_body(size: int) -> bytes:
    """A Claude Code-shaped Messages body of about ``size`` bytes (system blocks, tools, history)."""
    tool = {
        "name": "Tool",
        "description": "d" * 900,
        "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}},
    }
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 32000,
        "stream": False,
        "thinking": {"type": "adaptive", "display": "omitted"},
        "output_config": {"effort": "medium"},
        "metadata": {"user_id": '{"device_id":"' + "a" * 64 + '","account_uuid":"","session_id":"5b0c-bench"}'},
        "system": [
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.330"},
            {"type": "text", "text": "You are a Claude agent.", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "p" * 2000, "cache_control": {"type": "ephemeral"}},
        ],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "say hi"}]}],
        "tools": [],
    }
    while len(orjson.dumps(body)) < size - 1000:
        body["tools"].append(tool)
    body["messages"][0]["content"][0]["text"] += "h" * max(0, size - len(orjson.dumps(body)))
    return orjson.dumps(body)


SMALL_BODY = orjson.dumps(
    {"model": "claude-sonnet-4-5", "max_tokens": 32, "messages": [{"role": "user", "content": "Say hi"}]}
)


def start(cmd: list[str], core: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["taskset", "-c", str(core), *cmd], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def start_fake(env: dict[str, str]) -> subprocess.Popen[bytes]:
    """The fake provider on core 0, with wrk (the gateway under test has core 1 to itself)."""
    return start([sys.executable, "-m", "tokenctl", "fake-provider", "--port", str(FAKE_PORT)], 0, env)


def bench_folder(name: str) -> tuple[Path, dict[str, str]]:
    """A work folder holding the small body (``small.json``), and the environment to start processes with."""
    work = Path(tempfile.mkdtemp(prefix=f"tokenctl-{name}-bench-"))
    (work / "small.json").write_bytes(SMALL_BODY)
    return work, {**os.environ, "PYTHONUNBUFFERED": "1"}


def store_bench_setup(name: str) -> tuple[int, Path, dict[str, str], subprocess.Popen[bytes]]:
    """What the fleet and workers benchmarks start with: the run length (``--quick``), a work folder holding
    the small body, the environment, and the fake provider on core 0."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    work, env = bench_folder(name)
    fake = start_fake(env)
    return (3 if args.quick else 8), work, env, fake


def wait_up(url: str) -> None:
    for _ in range(200):
        try:
            httpx.head(url)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not start")


def wrk(url: str, body_file: Path, headers: dict[str, str], conns: int, seconds: int) -> dict[str, float]:
    script = body_file.with_suffix(".lua")
    lines = ['wrk.method = "POST"', f'local f = io.open("{body_file}", "rb")', "wrk.body = f:read('*a')", "f:close()"]
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    script.write_text("\n".join(lines) + "\n")
    out = subprocess.run(
        ["taskset", "-c", "0", "wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}
    for pct in ("50", "99"):
        value, unit = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)\b", out).groups()
        result[f"p{pct}_ms"] = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    result["non_2xx"] = int(errors.group(1)) if errors else 0
    result["requests"] = int(re.search(r"(\d+) requests in", out).group(1))
    return result


def ledger_backlog(gateway: str) -> tuple[int, float]:
    """Rows recorded but not yet written the moment the load stops, and how long the writer takes to catch up."""
    started = time.monotonic()
    behind = httpx.get(gateway + "/ready").json()["ledger_pending"]
    while httpx.get(gateway + "/ready").json()["ledger_pending"] and time.monotonic() - started < 120:
        time.sleep(0.05)
    return behind, round(time.monotonic() - started, 2)


def create_key(config: Path) -> str:
    """A client key on the benchmark's ledger, created as a user would (the CLI)."""
    command = [
        sys.executable,
        "-m",
        "tokenctl",
        "--config",
        str(config),
        "keys",
        "create",
        "--user",
        "bench",
        "--team",
        "perf",
    ]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()


def cpu_seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


# Every stage on the request path busy, nothing blocking: a team budget (reserve and settle on each request),
# a model policy (effort clamp checked) and routing (every request goes through the tier choice).
GOVERNED = """budgets:
  - {name: team-monthly, scope: team, limit_usd: 1000000}
policies:
  - {name: org, scope: org, max_effort: high}
routing:
  routed_models: [claude-sonnet-4-5]
  tiers: {premium: {models: [claude-sonnet-4-5]}}
  rules: [{tier: premium, kind: chat}]
  default_tier: premium
"""


def interleaved_cpu(
    turns: dict[str, tuple[psutil.Process, str]], body: Path, headers: dict[str, str], conns: int, rounds: int
) -> dict[str, float]:
    """CPU µs per request of each target, measured in turns of 3 s for ``rounds`` rounds and summed: a VM whose
    speed drifts from one minute to the next slows all of them alike, so their ratio holds."""
    cpu = dict.fromkeys(turns, 0.0)
    done = dict.fromkeys(turns, 0)
    for _ in range(rounds):
        for name, (proc, url) in turns.items():
            before = cpu_seconds(proc)
            done[name] += wrk(url, body, headers, conns, 3)["requests"]
            cpu[name] += cpu_seconds(proc) - before
    return {name: round(cpu[name] / max(1, done[name]) * 1e6, 1) for name in turns}


def memory_run(
    gw_url: str, work: Path, headers: dict[str, str], gproc: psutil.Process, total: int
) -> dict[str, object]:
    """RSS sampled while ``total`` small requests go through, at least every ~100k."""
    small = work / "small.json"
    small.write_bytes(SMALL_BODY)
    rss = [round(gproc.memory_info().rss / 2**20, 1)]
    done = 0
    step = 5 if total <= 100_000 else 30
    while done < total:
        done += wrk(gw_url, small, headers, 32, step)["requests"]
        rss.append(round(gproc.memory_info().rss / 2**20, 1))
        print("memory", done, rss[-1], flush=True)
    return {"requests": done, "rss_mib_samples": rss, "rss_after_mib": rss[-1]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--governed",
        action="store_true",
        help="with a budget, a model policy and routing configured (none of them blocking)",
    )
    parser.add_argument(
        "--memory-only",
        type=int,
        metavar="N",
        help="only the memory run, over N requests (e.g. 1000000), sampling RSS every ~100k",
    )
    args = parser.parse_args()
    secs = 3 if args.quick else 5
    if not shutil.which("wrk"):
        sys.exit("wrk not found: apt-get install wrk")
    work = Path(tempfile.mkdtemp(prefix="tokenctl-bench-"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    config = work / "tokenctl.yaml"
    config.write_text(
        f"server: {{port: {GW_PORT}}}\nledger: {{path: {work / 'ledger.db'}}}\n"
        f"providers:\n  - {{name: a, kind: anthropic, base_url: 'http://127.0.0.1:{FAKE_PORT}', models: ['claude-*']}}\n"
        + (GOVERNED if args.governed else "")
    )
    key = create_key(config)
    fake = start_fake(env)
    gw = start([sys.executable, "-m", "tokenctl", "--config", str(config), "serve", "--log-level", "WARNING"], 1, env)
    floor_cmd = [sys.executable, str(ROOT / "baseline_proxy.py"), str(FLOOR_PORT), f"http://127.0.0.1:{FAKE_PORT}"]
    floor = start(floor_cmd, 1, env)

    def fresh_floor() -> psutil.Process:
        """The floor proxy wedged after c=64 runs in one session (not investigated): start it anew each time."""
        nonlocal floor
        floor.kill()
        floor.wait(10)
        floor = start(floor_cmd, 1, env)
        wait_up(f"http://127.0.0.1:{FLOOR_PORT}/")
        return psutil.Process(floor.pid)

    results: dict[str, object] = {"python": sys.version.split()[0], "cores": os.cpu_count()}
    try:
        direct_url, gw_url = f"http://127.0.0.1:{FAKE_PORT}/v1/messages", f"http://127.0.0.1:{GW_PORT}/v1/messages"
        floor_url = f"http://127.0.0.1:{FLOOR_PORT}/v1/messages"
        wait_up(direct_url.rsplit("/v1", 1)[0] + "/v1/models")
        wait_up(f"http://127.0.0.1:{GW_PORT}/")
        wait_up(f"http://127.0.0.1:{FLOOR_PORT}/")
        gproc, fproc = psutil.Process(gw.pid), psutil.Process(floor.pid)
        time.sleep(1)
        results["rss_idle_mib"] = round(gproc.memory_info().rss / 2**20, 1)
        bodies = {"small": SMALL_BODY, "claude_code_50kb": claude_code_body(50_000)}
        base_headers = {"Content-Type": "application/json", "x-api-key": key, "anthropic-version": "2023-06-01"}
        # warm-up
        (work / "small.json").write_bytes(SMALL_BODY)
        wrk(gw_url, work / "small.json", base_headers, 16, 2)

        if not args.memory_only:
            # 1. Added latency with a 25 ms upstream (so neither side is saturated), c = 1, 16, 64.
            latency: dict[str, object] = {}
            for name, body in bodies.items():
                path = work / f"{name}.json"
                path.write_bytes(body)
                for conns in (1, 16, 64):
                    headers = {**base_headers, "x-fake-fault": "slow:25"}
                    d = wrk(direct_url, path, headers, conns, secs)
                    fresh_floor()
                    f = wrk(floor_url, path, headers, conns, secs)
                    g = wrk(gw_url, path, headers, conns, secs)
                    latency[f"{name}/c{conns}"] = {
                        "direct": d,
                        "aiohttp_floor": f,
                        "tokenctl": g,
                        "added_p50_ms": round(g["p50_ms"] - d["p50_ms"], 3),
                        "added_p99_ms": round(g["p99_ms"] - d["p99_ms"], 3),
                        "floor_added_p50_ms": round(f["p50_ms"] - d["p50_ms"], 3),
                        "floor_added_p99_ms": round(f["p99_ms"] - d["p99_ms"], 3),
                    }
                    print(name, conns, latency[f"{name}/c{conns}"], flush=True)
            results["latency_25ms_upstream"] = latency

            # 2. Throughput and CPU per request: zero-latency upstream, gateway saturated on its core.
            throughput: dict[str, object] = {}
            for name in bodies:
                path = work / f"{name}.json"
                for conns in (16, 64):
                    d = wrk(direct_url, path, base_headers, conns, secs)
                    fproc = fresh_floor()
                    before = cpu_seconds(fproc)
                    f = wrk(floor_url, path, base_headers, conns, secs)
                    floor_cpu = cpu_seconds(fproc) - before
                    before = cpu_seconds(gproc)
                    g = wrk(gw_url, path, base_headers, conns, secs)
                    cpu = cpu_seconds(gproc) - before
                    behind, drain = ledger_backlog(f"http://127.0.0.1:{GW_PORT}")
                    ratio: dict[str, object] = {}
                    if conns == 16:  # the floor wedges after repeated c=64 runs (see fresh_floor)
                        turns = {"floor": (fproc, floor_url), "tokenctl": (gproc, gw_url)}
                        cpus = interleaved_cpu(turns, path, base_headers, conns, 2 if args.quick else 4)
                        ratio = {
                            "interleaved_cpu_us_per_request": cpus,
                            "interleaved_ratio": round(cpus["tokenctl"] / cpus["floor"], 2),
                        }
                    throughput[f"{name}/c{conns}"] = {
                        **ratio,
                        "ledger_rows_behind_at_end": behind,
                        "ledger_drain_seconds": drain,
                        "ledger_rows_per_second_written": round((g["requests"] - behind) / secs),
                        "direct": d,
                        "aiohttp_floor": f,
                        "tokenctl": g,
                        "cpu_us_per_request": round(cpu / g["requests"] * 1e6, 1),
                        "floor_cpu_us_per_request": round(floor_cpu / f["requests"] * 1e6, 1)
                        if f["requests"]
                        else None,
                        "rps_per_core": g["rps"],
                        "floor_rps_per_core": f["rps"],
                    }
                    print(name, "throughput", conns, throughput[f"{name}/c{conns}"], flush=True)
            results["throughput_zero_latency_upstream"] = throughput

            # 3. CPU per SSE event: marginal cost between 10-delta and 400-delta streams.
            stream_body = work / "stream.json"
            stream_body.write_bytes(orjson.dumps({**orjson.loads(SMALL_BODY), "stream": True}))
            per_stream = {}
            for chunks in (10, 400):
                headers = {**base_headers, "x-fake-chunks": str(chunks)}
                before = cpu_seconds(gproc)
                g = wrk(gw_url, stream_body, headers, 16, secs)
                per_stream[chunks] = (cpu_seconds(gproc) - before) / g["requests"]
            events_10, events_400 = (
                10 + 6,
                400 + 6,
            )  # deltas + message_start, block start/stop, ping, message_delta/stop
            results["sse"] = {
                "cpu_us_per_stream_10_deltas": round(per_stream[10] * 1e6, 1),
                "cpu_us_per_stream_400_deltas": round(per_stream[400] * 1e6, 1),
                "cpu_us_per_event_marginal": round(
                    (per_stream[400] - per_stream[10]) / (events_400 - events_10) * 1e6, 2
                ),
            }
            print("sse", results["sse"], flush=True)

        # 4. Memory: over 100k requests, or the --memory-only count.
        count = args.memory_only or 100_000
        results["memory"] = memory_run(gw_url, work, base_headers, gproc, count)
    finally:
        gw.send_signal(signal.SIGTERM)
        gw.wait(30)
        fake.terminate()
        floor.kill()
        fake.wait(10)
        floor.wait(10)
    import sqlite3

    rows = sqlite3.connect(work / "ledger.db").execute("SELECT COUNT(*) FROM requests").fetchone()[0]
    results["ledger_rows_after_shutdown"] = rows
    name = ("quick" if args.quick else "memory" if args.memory_only else "latest") + (
        "-governed" if args.governed else ""
    )
    results["governed"] = args.governed
    out = ROOT / "results" / f"{name}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}; ledger rows: {rows}")


if __name__ == "__main__":
    main()
