"""A fleet on one machine: the SQLite single process beside PostgreSQL + Redis with 1 and 2 workers, in one run.

Every request is governed (a team budget: reserve and settle; a model policy; routing), metered and written to
the ledger. For each setup: requests/s at c=64 with a zero-latency upstream, added p50/p99 at c=16 with a
25 ms upstream (vs the provider direct), and for sizing what PostgreSQL and Redis spend per 1,000 requests
(CPU of their processes, ledger transactions).

    python bench/workers_bench.py           # ~2 minutes; writes bench/results/workers.json
    python bench/workers_bench.py --quick

Needs `wrk`, `taskset`, PostgreSQL at 127.0.0.1:5432 (a scratch schema, dropped afterwards) and Redis at
127.0.0.1:6379 (keys under a fresh prefix, deleted afterwards). On a 2-core machine, one worker is pinned to
core 1; two workers get both cores, which they share with wrk, the fake provider, PostgreSQL and Redis.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import psycopg
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gateway_bench import FAKE_PORT, GOVERNED, create_key, ledger_backlog, start, store_bench_setup, wait_up, wrk

ROOT = Path(__file__).resolve().parent
GW_PORT = 19182
PG_SERVER = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/0"
SETUPS = {  # name: (ledger, store, workers, cores)
    "sqlite_memory_1_worker": ("sqlite", "memory", 1, "1"),
    "postgresql_redis_1_worker": ("postgresql", "redis", 1, "1"),
    "postgresql_redis_2_workers": ("postgresql", "redis", 2, "0,1"),
}


def service_cpu(names: tuple[str, ...]) -> float:
    """CPU seconds used so far by every process of a server (PostgreSQL's backends, Redis)."""
    total = 0.0
    for proc in psutil.process_iter(["name", "cpu_times"]):
        if proc.info["name"] and proc.info["name"].startswith(names) and proc.info["cpu_times"]:
            total += proc.info["cpu_times"].user + proc.info["cpu_times"].system
    return total


def pg_commits() -> int:
    with psycopg.connect(PG_SERVER) as conn:
        row = conn.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()").fetchone()
        return int(row[0]) if row else 0


def config_for(work: Path, name: str, ledger: str, store: str, schema: str, prefix: str) -> Path:
    if ledger == "postgresql":
        with psycopg.connect(PG_SERVER, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            conn.execute(f"CREATE SCHEMA {schema}")
        url = f"{PG_SERVER}?options=-csearch_path%3D{schema}"
        ledger_line = f"ledger: {{url: '{url}', journal_dir: '{work / name}'}}\n"
    else:
        ledger_line = f"ledger: {{path: {work / (name + '.db')}}}\n"
    store_line = f"store: {{redis_url: '{REDIS_URL}', key_prefix: '{prefix}'}}\n" if store == "redis" else ""
    config = work / f"{name}.yaml"
    config.write_text(
        f"server: {{port: {GW_PORT}}}\n{ledger_line}{store_line}"
        f"providers:\n  - {{name: a, kind: anthropic, base_url: 'http://127.0.0.1:{FAKE_PORT}', models: ['claude-*']}}\n"
        + GOVERNED
    )
    return config


def run_setup(work: Path, name: str, secs: int, prefix: str) -> dict[str, Any]:
    ledger, store, workers, cores = SETUPS[name]
    schema = f"bench_workers_{uuid.uuid4().hex[:8]}"
    config = config_for(work, name, ledger, store, schema, prefix)
    key = create_key(config)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "tokenctl", "--config", str(config), "serve", "--log-level", "WARNING"]
    gw = start([*command, "--workers", str(workers)], cores, env)  # type: ignore[arg-type]
    url = f"http://127.0.0.1:{GW_PORT}/v1/messages"
    headers = {"Content-Type": "application/json", "x-api-key": key, "anthropic-version": "2023-06-01"}
    body = work / "small.json"
    try:
        wait_up(f"http://127.0.0.1:{GW_PORT}/")
        wrk(url, body, headers, 16, 2)  # warm-up
        latency = wrk(url, body, {**headers, "x-fake-fault": "slow:25"}, 16, secs)
        pg0, redis0, commits0 = service_cpu(("postgres",)), service_cpu(("redis-server",)), pg_commits()
        throughput = wrk(url, body, headers, 64, secs)
        backlog, catch_up = ledger_backlog(f"http://127.0.0.1:{GW_PORT}")
        pg1, redis1, commits1 = service_cpu(("postgres",)), service_cpu(("redis-server",)), pg_commits()
    finally:
        gw.send_signal(signal.SIGTERM)
        gw.wait(60)
        if ledger == "postgresql":
            with psycopg.connect(PG_SERVER, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    per_k = 1000 / throughput["requests"]
    out: dict[str, Any] = {
        "workers": workers,
        "cores": cores,
        "latency_c16_25ms_upstream": latency,
        "throughput_c64": throughput,
        "ledger_backlog_rows_at_stop": backlog,
        "ledger_catch_up_seconds": catch_up,
    }
    if ledger == "postgresql":
        out["postgresql_cpu_ms_per_1k_requests"] = round((pg1 - pg0) * 1000 * per_k, 1)
        out["postgresql_commits_per_1k_requests"] = round((commits1 - commits0) * per_k, 1)
    if store == "redis":
        out["redis_cpu_ms_per_1k_requests"] = round((redis1 - redis0) * 1000 * per_k, 1)
    return out


def main() -> None:
    secs, work, _, fake = store_bench_setup("workers")
    quick = secs == 3
    prefix = f"bench-{uuid.uuid4().hex[:6]}:"
    results: dict[str, Any] = {
        "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": sys.version.split()[0],
        "cores": os.cpu_count(),
    }
    try:
        wait_up(f"http://127.0.0.1:{FAKE_PORT}/v1/models")
        direct = f"http://127.0.0.1:{FAKE_PORT}/v1/messages"
        plain = {"Content-Type": "application/json", "x-fake-fault": "slow:25"}
        results["direct_latency_c16_25ms_upstream"] = wrk(direct, work / "small.json", plain, 16, secs)
        for name in SETUPS:
            results[name] = run_setup(work, name, secs, prefix)
            print(name, json.dumps(results[name]), flush=True)
            time.sleep(1)
    finally:
        fake.terminate()
        fake.wait(10)
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(f"{prefix}*"):
            client.delete(key)
        client.close()
    direct_latency = results["direct_latency_c16_25ms_upstream"]
    base_rps = results["sqlite_memory_1_worker"]["throughput_c64"]["rps"]
    for name in SETUPS:
        lat = results[name]["latency_c16_25ms_upstream"]
        results[name]["added_p50_ms"] = round(lat["p50_ms"] - direct_latency["p50_ms"], 2)
        results[name]["added_p99_ms"] = round(lat["p99_ms"] - direct_latency["p99_ms"], 2)
        results[name]["rps_vs_sqlite_single_process"] = round(results[name]["throughput_c64"]["rps"] / base_rps, 3)
    out = ROOT / "results" / ("workers-quick.json" if quick else "workers.json")
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
