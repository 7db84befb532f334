"""The budget store's cost: one governed gateway with budgets in memory vs in Redis, beside direct, in one run.

Every request is under a blocking team budget (reserve before, settle after). Measured: added p50/p99 at
c=16 with a 25 ms upstream, requests/s with a zero-latency upstream, and what Redis does per request
(script calls from INFO commandstats, Redis CPU from INFO cpu) for sizing.

    python bench/fleet_bench.py           # ~1.5 minutes; writes bench/results/fleet.json
    python bench/fleet_bench.py --quick

Needs `wrk`, `taskset` and a Redis at 127.0.0.1:6379 (keys under a fresh prefix, deleted afterwards).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import uuid
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gateway_bench import FAKE_PORT, GOVERNED, create_key, start, store_bench_setup, wait_up, wrk

ROOT = Path(__file__).resolve().parent
GW_PORT = 19181
REDIS_URL = "redis://127.0.0.1:6379/0"


def redis_counters(client: redis.Redis) -> tuple[int, float]:
    """Script calls served so far, and Redis's CPU seconds."""
    stats = client.info("commandstats")
    calls = sum(int(v["calls"]) for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_eval"))
    cpu = client.info("cpu")
    return calls, float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def run_gateway(work: Path, store: str, secs: int, key_prefix: str) -> dict[str, object]:
    config = work / f"{store}.yaml"
    store_section = f"store: {{redis_url: '{REDIS_URL}', key_prefix: '{key_prefix}'}}\n" if store == "redis" else ""
    config.write_text(
        f"server: {{port: {GW_PORT}}}\nledger: {{path: {work / (store + '.db')}}}\n"
        f"providers:\n  - {{name: a, kind: anthropic, base_url: 'http://127.0.0.1:{FAKE_PORT}', models: ['claude-*']}}\n"
        + store_section
        + GOVERNED
    )
    key = create_key(config)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    gw = start([sys.executable, "-m", "tokenctl", "--config", str(config), "serve", "--log-level", "WARNING"], 1, env)
    url = f"http://127.0.0.1:{GW_PORT}/v1/messages"
    headers = {"Content-Type": "application/json", "x-api-key": key, "anthropic-version": "2023-06-01"}
    body = work / "small.json"
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        wait_up(f"http://127.0.0.1:{GW_PORT}/")
        wrk(url, body, headers, 16, 2)  # warm-up
        latency = wrk(url, body, {**headers, "x-fake-fault": "slow:25"}, 16, secs)
        calls0, cpu0 = redis_counters(client)
        throughput = wrk(url, body, headers, 64, secs)
        calls1, cpu1 = redis_counters(client)
    finally:
        gw.send_signal(signal.SIGTERM)
        gw.wait(30)
    out: dict[str, object] = {"latency_c16_25ms_upstream": latency, "throughput_c64": throughput}
    if store == "redis":
        requests = throughput["requests"]
        out["redis_script_calls_per_request"] = round((calls1 - calls0) / requests, 3)
        out["redis_cpu_ms_per_1k_requests"] = round((cpu1 - cpu0) / requests * 1e6, 1)
        for key_name in client.scan_iter(f"{key_prefix}*"):
            client.delete(key_name)
    client.close()
    return out


def main() -> None:
    secs, work, _, fake = store_bench_setup("fleet")
    quick = secs == 3
    results: dict[str, object] = {"python": sys.version.split()[0], "cores": os.cpu_count()}
    try:
        direct = f"http://127.0.0.1:{FAKE_PORT}/v1/messages"
        wait_up(f"http://127.0.0.1:{FAKE_PORT}/v1/models")
        plain = {"Content-Type": "application/json", "x-fake-fault": "slow:25"}
        results["direct_latency_c16_25ms_upstream"] = wrk(direct, work / "small.json", plain, 16, secs)
        prefix = f"bench-{uuid.uuid4().hex[:6]}:"
        for store in ("memory", "redis"):
            results[store] = run_gateway(work, store, secs, prefix)
            print(store, results[store], flush=True)
            time.sleep(1)
    finally:
        fake.terminate()
        fake.wait(10)
    d = results["direct_latency_c16_25ms_upstream"]
    for store in ("memory", "redis"):
        lat = results[store]["latency_c16_25ms_upstream"]  # type: ignore[index]
        results[store]["added_p50_ms"] = round(lat["p50_ms"] - d["p50_ms"], 3)  # type: ignore[index]
        results[store]["added_p99_ms"] = round(lat["p99_ms"] - d["p99_ms"], 3)  # type: ignore[index]
    mem_rps = results["memory"]["throughput_c64"]["rps"]  # type: ignore[index]
    results["redis_vs_memory_rps"] = round(results["redis"]["throughput_c64"]["rps"] / mem_rps, 3)  # type: ignore[index]
    out = ROOT / "results" / ("fleet-quick.json" if quick else "fleet.json")
    out.write_text(json.dumps(results, indent=2))
    print(json.dumps({k: results[k] for k in ("redis_vs_memory_rps",)}), f"wrote {out}")


if __name__ == "__main__":
    main()
