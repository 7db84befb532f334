"""Instructions per request, counted by valgrind: the floor, tokenctl, and tokenctl governed.

CPU time on this VM drifts by a third from one hour to the next; an instruction count does not. Each target
runs under ``valgrind --tool=callgrind`` (counting switched on only for the measured requests), so the ratio
of instructions per request is the same on every run and shows exactly what a change to the request path or
the ledger writer gained. It counts user-space instructions only: not the kernel (sockets, the journal's
``write``), not cache misses, so CPU time per request is higher than these ratios say
(``gateway_bench.py`` measures that).

    python bench/instructions_bench.py          # ~6 minutes; writes bench/results/instructions.json

Needs Debian's ``valgrind`` and ``wrk``. Under valgrind a gateway serves about 50 requests a second, so the
ledger writer cycles every 5 s here (``ledger.write_interval_seconds: 5``): its batches then hold about as
many rows as at 2,500 requests a second with the default 100 ms, and its instructions per row are those of
production. Counting starts once the warm-up's rows are written and stops once the measured ones are.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2 as httpx
from gateway_bench import (
    FAKE_PORT,
    GOVERNED,
    GW_PORT,
    ROOT,
    SMALL_BODY,
    claude_code_body,
    create_key,
    start,
    start_fake,
    wrk,
)

FLOOR_PORT = GW_PORT + 1


def callgrind(cmd: list[str], out: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    counted = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--separate-threads=yes"]
    counted.append(f"--callgrind-out-file={out}")
    return start([*counted, *cmd], 1, env)


def control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], capture_output=True, check=True)


def wait_answering(url: str, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            httpx.head(url, timeout=5)
            return
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not start under valgrind") from None
            time.sleep(0.5)


def settled(base: str | None) -> None:
    """Until the gateway has done all the work of the requests so far: its writer has written every row, and a
    scrape has applied the requests its metrics noted in bulk (else each window would hold 0 or 1 of those
    applications, every 2,000 requests). Nothing for the floor."""
    if base is None:
        return
    deadline = time.monotonic() + 60
    while httpx.get(base + "/ready", timeout=30).json()["ledger_pending"] and time.monotonic() < deadline:
        time.sleep(0.2)
    httpx.get(base + "/metrics", timeout=30).raise_for_status()


def counted_instructions(out: Path, dump: int) -> dict[str, int]:
    """The instructions of one dump (callgrind's ``totals:`` lines: what was counted since counting was switched
    on or since the dump before), by thread number (01 is the request thread, 02 the ledger writer)."""
    counts: dict[str, int] = {}
    for part in sorted(out.parent.glob(f"{out.name}.{dump}*")):
        for line in part.read_text(errors="replace").splitlines():
            if line.startswith("totals:") and int(line.split()[1]):
                thread = part.name.rsplit("-", 1)[1]
                counts[thread] = counts.get(thread, 0) + int(line.split()[1])
    return counts


def measure(
    name: str, cmd: list[str], port: int, body: Path, headers: dict[str, str], seconds: int, env: dict[str, str]
) -> dict[str, float]:
    """Instructions per request under load, less what the process does on its own in as long (timers: key and
    rule refreshes, the writer's cycle; counted before the load): at 50 requests a second that would be
    counted against each request; at production rates it is nothing."""
    work = Path(tempfile.mkdtemp(prefix=f"tokenctl-ir-{name}-"))
    out = work / "callgrind.out"
    proc = callgrind(cmd, out, env)
    base = f"http://127.0.0.1:{port}"
    gateway = None if name == "floor" else base
    try:
        wait_answering(base + "/")
        url = base + "/v1/messages"
        wrk(url, body, headers, 16, 5)  # warm-up: imports, caches, the first writer batches
        settled(gateway)
        time.sleep(2)  # the warm-up's connections closed
        control(proc.pid, "-i", "on")
        time.sleep(seconds / 2)
        control(proc.pid, "-d")  # dump 1: the process on its own
        idle = seconds / 2
        started = time.monotonic()
        requests = wrk(url, body, headers, 16, seconds)["requests"]
        settled(gateway)
        control(proc.pid, "-d")  # dump 2: the measured requests
        loaded = time.monotonic() - started
        control(proc.pid, "-i", "off")
        time.sleep(1)
    finally:
        proc.kill()
        proc.wait(30)
    on_its_own, under_load = counted_instructions(out, 1), counted_instructions(out, 2)
    per_request = {t: (n - on_its_own.get(t, 0) * loaded / idle) / requests / 1000 for t, n in under_load.items()}
    result: dict[str, float] = {
        "requests": requests,
        "k_instructions_per_request": round(sum(per_request.values()), 1),
        "k_instructions_per_second_idle": round(sum(on_its_own.values()) / idle / 1000, 1),
    }
    result |= {f"thread_{t}": round(n, 1) for t, n in per_request.items() if abs(n) >= 0.05}
    print(name, result, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=15, help="measured load per target (default 15)")
    parser.add_argument("--small-only", action="store_true", help="only the small body")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    work = Path(tempfile.mkdtemp(prefix="tokenctl-ir-bench-"))
    fake = start_fake(env)
    results: dict[str, object] = {"python": sys.version.split()[0], "valgrind": _valgrind_version()}
    try:
        wait_answering(f"http://127.0.0.1:{FAKE_PORT}/v1/models")
        bodies = [("small", SMALL_BODY)] + ([] if args.small_only else [("claude_code_50kb", claude_code_body(50_000))])
        for body_name, body_bytes in bodies:
            body = work / f"{body_name}.json"
            body.write_bytes(body_bytes)
            counts = {}
            floor_cmd = [
                sys.executable,
                str(ROOT / "baseline_proxy.py"),
                str(FLOOR_PORT),
                f"http://127.0.0.1:{FAKE_PORT}",
            ]
            plain = {"Content-Type": "application/json", "anthropic-version": "2023-06-01"}
            counts["floor"] = measure("floor", floor_cmd, FLOOR_PORT, body, plain, args.seconds, env)
            for governed in (False, True):
                name = "tokenctl_governed" if governed else "tokenctl"
                config = work / f"{body_name}-{name}.yaml"
                config.write_text(
                    f"server: {{port: {GW_PORT}}}\n"
                    f"ledger: {{path: {work / f'{body_name}-{name}.db'}, write_interval_seconds: 5}}\n"
                    "observability: {metrics_public: true}\n"
                    "providers:\n"
                    f"  - {{name: a, kind: anthropic, base_url: 'http://127.0.0.1:{FAKE_PORT}', models: ['claude-*']}}\n"
                    + (GOVERNED if governed else "")
                )
                headers = {**plain, "x-api-key": create_key(config)}
                cmd = [sys.executable, "-m", "tokenctl", "--config", str(config), "serve", "--log-level", "WARNING"]
                counts[name] = measure(name, cmd, GW_PORT, body, headers, args.seconds, env)
            floor = counts["floor"]["k_instructions_per_request"]
            results[f"{body_name}/c16"] = {
                **counts,
                "ratio": round(counts["tokenctl"]["k_instructions_per_request"] / floor, 2),
                "ratio_governed": round(counts["tokenctl_governed"]["k_instructions_per_request"] / floor, 2),
            }
            print(body_name, results[f"{body_name}/c16"], flush=True)
    finally:
        fake.kill()
    out = ROOT / "results" / "instructions.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


def _valgrind_version() -> str:
    return subprocess.run(["valgrind", "--version"], capture_output=True, text=True).stdout.strip()


if __name__ == "__main__":
    main()
