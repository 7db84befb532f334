"""tokenctl (governed) vs LiteLLM's proxy, side by side on the same box: requests/s per core and CPU per request.

Layout as in ``gateway_bench.py``: the fake provider and wrk on core 0, each proxy alone on core 1, measured
in turns so both see the same machine. tokenctl runs with a team budget, a model policy and routing (every
request reserved and settled); LiteLLM runs with a master key and no database (no budgets), which is the
cheapest way it serves. LiteLLM is installed in its own virtualenv so its pins do not touch tokenctl's:

    python -m venv /tmp/llvenv && /tmp/llvenv/bin/pip install 'litellm[proxy]==1.80.17'  # newer [proxy] needs litellm-proxy, not on PyPI here
    python bench/litellm_bench.py --litellm /tmp/llvenv/bin/litellm     # writes bench/results/litellm.json
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

import httpx2 as httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gateway_bench import (
    FAKE_PORT,
    GOVERNED,
    GW_PORT,
    ROOT,
    SMALL_BODY,
    bench_folder,
    cpu_seconds,
    create_key,
    start,
    start_fake,
    wrk,
)

LITELLM_PORT = 19160
MASTER_KEY = "sk-bench-master"


def litellm_config(work: Path) -> Path:
    path = work / "litellm.yaml"
    path.write_text(
        "model_list:\n"
        "  - model_name: claude-sonnet-4-5\n"
        "    litellm_params:\n"
        "      model: anthropic/claude-sonnet-4-5\n"
        f"      api_base: http://127.0.0.1:{FAKE_PORT}\n"
        "      api_key: fake-provider-key\n"
        f"general_settings:\n  master_key: {MASTER_KEY}\n"
        "litellm_settings:\n  telemetry: false\n"
    )
    return path


def wait_for(url: str, headers: dict[str, str], seconds: float = 120) -> None:
    """Until a real request through the proxy answers 200 (LiteLLM takes a while to import and start)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.post(url, content=SMALL_BODY, headers=headers, timeout=10).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer 200 within {seconds:g} s")


def tree_cpu(proc: psutil.Process) -> float:
    """CPU seconds of the process and its children (a proxy may serve from a worker process)."""
    return cpu_seconds(proc) + sum(cpu_seconds(child) for child in proc.children(recursive=True))


def measure(proc: psutil.Process, url: str, body: Path, headers: dict[str, str], seconds: int) -> tuple[float, int]:
    before = tree_cpu(proc)
    result = wrk(url, body, headers, 16, seconds)
    if result["non_2xx"]:
        raise RuntimeError(f"{url}: {result['non_2xx']} answers were not 2xx")
    return tree_cpu(proc) - before, result["requests"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--litellm", required=True, help="the litellm executable (its own virtualenv)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args()
    work, env = bench_folder("litellm")
    body = work / "small.json"
    config = work / "tokenctl.yaml"
    config.write_text(
        f"server: {{port: {GW_PORT}}}\nledger: {{path: {work / 'ledger.db'}}}\n"
        f"providers:\n  - {{name: a, kind: anthropic, base_url: 'http://127.0.0.1:{FAKE_PORT}', models: ['claude-*']}}\n"
        + GOVERNED
    )
    key = create_key(config)
    base = {"Content-Type": "application/json", "anthropic-version": "2023-06-01"}
    targets = {
        "tokenctl_governed": (f"http://127.0.0.1:{GW_PORT}/v1/messages", {**base, "x-api-key": key}),
        "litellm": (f"http://127.0.0.1:{LITELLM_PORT}/v1/messages", {**base, "Authorization": f"Bearer {MASTER_KEY}"}),
    }
    litellm_env = {**env, "LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False"}
    procs = {
        "fake": start_fake(env),
        "tokenctl_governed": start(
            [sys.executable, "-m", "tokenctl", "--config", str(config), "serve", "--log-level", "WARNING"], 1, env
        ),
        "litellm": start(
            [args.litellm, "--config", str(litellm_config(work)), "--port", str(LITELLM_PORT), "--num_workers", "1"],
            1,
            litellm_env,
        ),
    }
    totals = {name: [0.0, 0] for name in targets}
    try:
        for url, headers in targets.values():
            wait_for(url, headers)
            wrk(url, body, headers, 16, 2)  # warm-up
        for _ in range(args.rounds):
            for name, (url, headers) in targets.items():
                proc = psutil.Process(procs[name].pid)
                cpu, done = measure(proc, url, body, headers, args.seconds)
                totals[name][0] += cpu
                totals[name][1] += done
    finally:
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(30)
            except Exception:
                proc.kill()
    elapsed = args.rounds * args.seconds
    results: dict[str, object] = {"python": sys.version.split()[0], "rounds": args.rounds, "seconds": args.seconds}
    for name, (cpu, done) in totals.items():
        results[name] = {
            "requests": done,
            "req_per_s": round(done / elapsed, 1),
            "cpu_us_per_request": round(cpu / done * 1e6, 1),
            "req_per_cpu_second": round(done / cpu, 1),
        }
    ours, theirs = results["tokenctl_governed"], results["litellm"]
    results["ratio_req_per_cpu_second"] = round(ours["req_per_cpu_second"] / theirs["req_per_cpu_second"], 1)  # type: ignore[index]
    out = ROOT / "results" / "litellm.json"
    out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
