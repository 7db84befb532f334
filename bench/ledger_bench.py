"""The ledger write path on its own: what ``record()`` costs the request path, and how fast the writer writes.

    python bench/ledger_bench.py            # 100k synthetic rows per case; writes bench/results/ledger.json

Cases, in one run: the journal with and without ``fsync`` (ledger.fsync), and the writer's throughput with
the request path idle (rows/s it can sustain) and while rows keep arriving. Synthetic rows are more varied
than one team's traffic (many users, keys and sessions), so the rollups cost more here than in a gateway run.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from tokenctl.ledger.writer import LedgerWriter
from tokenctl.testing.synthetic import synthetic_entries

ROOT = Path(__file__).resolve().parent


def case(rows: int, fsync: bool, pace: bool) -> dict[str, float]:
    folder = tempfile.mkdtemp(prefix="tokenctl-ledger-bench-")
    entries = list(synthetic_entries(rows, start=time.time() - 5 * 86400, days=5))
    cycle = {} if pace else {"interval_seconds": 3600}  # the default cycle, or none until flush()
    writer = LedgerWriter(os.path.join(folder, "ledger.db"), fsync=fsync, **cycle)
    writer.start()
    started = time.perf_counter()
    for entry in entries:
        writer.record(entry)
    recorded = time.perf_counter()
    assert writer.flush(600)
    written = time.perf_counter()
    writer.close()
    shutil.rmtree(folder)
    result = {
        "rows": rows,
        "record_us_per_row": round((recorded - started) / rows * 1e6, 1),
        "rows_per_second_overall": round(rows / (written - started)),
    }
    if not pace:  # the thread only started writing when flush() woke it: its throughput alone
        result["writer_rows_per_second_alone"] = round(rows / (written - recorded))
    return result


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    results = {
        "python": sys.version.split()[0],
        "journal_no_fsync_concurrent": case(rows, fsync=False, pace=True),
        "journal_fsync_concurrent": case(rows, fsync=True, pace=True),
        "writer_alone": case(rows, fsync=False, pace=False),
    }
    out = ROOT / "results" / "ledger.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
