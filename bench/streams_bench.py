"""Many concurrent agent streams: added event delay and memory per open stream, tokenctl beside the floor.

    python bench/streams_bench.py                      # 2,000 streams, 60 s per target; bench/results/streams.json
    python bench/streams_bench.py --streams 500 --seconds 30

Each stream is a 50 KB Claude Code-shaped request answered with 140 deltas 143 ms apart (~7 events/s, 20 s);
when one ends the next starts (churn). The fake provider and the load generator share core 0; the proxy under
test (the aiohttp floor, then tokenctl with its ledger on) runs alone on core 1. "Added delay" is how much
later than scheduled each event arrives, beyond the gap the provider waits; RSS per open stream is the
process's growth from idle divided by the streams open at that moment.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gateway_bench import claude_code_body, create_key, wait_up

ROOT = Path(__file__).resolve().parent
FAKE_PORT, GW_PORT, FLOOR_PORT = 19390, 19380, 19370
GAP = 0.143
EVENTS = 140


def _raise_fd_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _start(cmd: list[str], core: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["taskset", "-c", str(core), *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


async def _one_stream(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str],
    delays: list[float],
    open_streams: list[int],
) -> bool:
    open_streams[0] += 1
    try:
        async with session.post(url, data=body, headers=headers) as resp:
            if resp.status != 200:
                return False
            last = None
            async for line in resp.content:
                if not line.startswith(b"data:") or b"content_block_delta" not in line:
                    continue
                now = time.perf_counter()
                if last is not None:
                    delays.append(max(0.0, now - last - GAP))
                last = now
            return True
    except aiohttp.ClientError:
        return False
    finally:
        open_streams[0] -= 1


async def _load(
    url: str, streams: int, seconds: float, headers: dict[str, str], proc: psutil.Process, rss_idle: int
) -> dict[str, object]:
    body = claude_code_body(50_000)
    headers = {
        **headers,
        "x-fake-chunks": str(EVENTS),
        "x-fake-fault": f"stall:{int(GAP * 1000)}",
        "content-type": "application/json",
        "anthropic-version": "2023-06-01",
    }
    import orjson

    body = orjson.dumps({**orjson.loads(body), "stream": True})
    delays: list[float] = []
    open_streams = [0]
    done = {"ok": 0, "failed": 0}
    deadline = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=0)
    samples: list[tuple[int, int]] = []
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:

        async def worker(index: int) -> None:
            await asyncio.sleep(index * (EVENTS * GAP) / streams)  # staggered: streams end and start all the time
            while time.monotonic() < deadline:
                ok = await _one_stream(session, url, body, headers, delays, open_streams)
                done["ok" if ok else "failed"] += 1

        async def sampler() -> None:
            while time.monotonic() < deadline:
                await asyncio.sleep(5)
                samples.append((proc.memory_info().rss, open_streams[0]))

        await asyncio.gather(sampler(), *(worker(i) for i in range(streams)))
    steady = [(rss, n) for rss, n in samples[len(samples) // 2 :] if n]
    per_stream = statistics.median((rss - rss_idle) / n for rss, n in steady) if steady else None
    delays.sort()
    return {
        "streams_completed": done["ok"],
        "streams_failed": done["failed"],
        "events": len(delays),
        "added_delay_p50_ms": round(delays[len(delays) // 2] * 1000, 2) if delays else None,
        "added_delay_p99_ms": round(delays[int(len(delays) * 0.99)] * 1000, 2) if delays else None,
        "added_delay_max_ms": round(delays[-1] * 1000, 2) if delays else None,
        "rss_peak_mib": round(max((r for r, _ in samples), default=0) / 2**20, 1),
        "rss_kib_per_open_stream": round(per_stream / 1024, 1) if per_stream is not None else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=60)
    args = parser.parse_args()
    _raise_fd_limit()
    work = Path(tempfile.mkdtemp(prefix="tokenctl-streams-"))
    config = work / "tokenctl.yaml"
    config.write_text(
        f"server: {{port: {GW_PORT}}}\nledger: {{path: {work / 'ledger.db'}}}\n"
        f"providers:\n  - {{name: a, kind: anthropic, base_url: 'http://127.0.0.1:{FAKE_PORT}', models: ['claude-*'],"
        " timeout_seconds: 60}\n"
    )
    key = create_key(config)
    fake = _start([sys.executable, "-m", "tokenctl", "fake-provider", "--port", str(FAKE_PORT)], 0)
    results: dict[str, object] = {
        "python": sys.version.split()[0],
        "streams": args.streams,
        "seconds_per_target": args.seconds,
        "event_gap_ms": GAP * 1000,
    }
    try:
        wait_up(f"http://127.0.0.1:{FAKE_PORT}/v1/models")
        targets = {
            "aiohttp_floor": (
                [sys.executable, str(ROOT / "baseline_proxy.py"), str(FLOOR_PORT), f"http://127.0.0.1:{FAKE_PORT}"],
                FLOOR_PORT,
                {},
            ),
            "tokenctl": (
                [sys.executable, "-m", "tokenctl", "--config", str(config), "serve", "--log-level", "WARNING"],
                GW_PORT,
                {"x-api-key": key},
            ),
        }
        for name, (cmd, port, headers) in targets.items():
            proc = _start(cmd, 1)
            wait_up(f"http://127.0.0.1:{port}/")
            time.sleep(1)
            process = psutil.Process(proc.pid)
            idle = process.memory_info().rss
            results[name] = asyncio.run(
                _load(f"http://127.0.0.1:{port}/v1/messages", args.streams, args.seconds, headers, process, idle)
            )
            results[name]["rss_idle_mib"] = round(idle / 2**20, 1)  # type: ignore[index]
            print(name, results[name], flush=True)
            proc.terminate()
            proc.wait(60)
        floor, ours = results["aiohttp_floor"], results["tokenctl"]
        if floor["added_delay_p99_ms"]:  # type: ignore[index]
            results["p99_ratio_to_floor"] = round(ours["added_delay_p99_ms"] / floor["added_delay_p99_ms"], 2)  # type: ignore[index]
    finally:
        fake.terminate()
    out = ROOT / "results" / "streams.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
