"""``ledger.write_interval_seconds``: how often the writer writes what requests recorded, through a live gateway."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from tests.conftest import gateway_config, ledger_rows
from tokenctl.config import ConfigError

MESSAGES = {"model": "claude-haiku-4-5", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}


def _pending_after_one_request(live: Any) -> list[int]:
    """``/ready``'s count of rows not yet written, sampled for 1.5 s after one answered request."""
    headers = {"x-api-key": live.key, "anthropic-version": "2023-06-01"}
    assert httpx.post(live.url + "/v1/messages", json=MESSAGES, headers=headers).status_code == 200
    samples = []
    for _ in range(15):
        samples.append(httpx.get(live.url + "/ready").json()["ledger_pending"])
        time.sleep(0.1)
    return samples


def test_a_long_write_interval_holds_rows_in_the_journal_until_the_cycle(make_gateway: Any) -> None:
    # the writer cycles when it starts, then every 5 s: a request sent at once waits in the journal ~5 s
    slow = make_gateway({"ledger": {"write_interval_seconds": 5}})
    assert set(_pending_after_one_request(slow)) == {1}  # recorded (journaled), not yet in the database
    assert ledger_rows(slow.db_path) == []
    deadline = time.monotonic() + 7
    while not ledger_rows(slow.db_path) and time.monotonic() < deadline:  # no flush: the writer's own cycle
        time.sleep(0.1)
    assert len(ledger_rows(slow.db_path)) == 1
    default = make_gateway()
    assert _pending_after_one_request(default)[-1] == 0


@pytest.mark.parametrize(
    ("ledger", "words"),
    [
        ({"write_interval_seconds": 0}, "above 0"),
        ({"write_interval_seconds": 6}, "at most 5 s"),
        ({"write_interval_seconds": 1, "max_lag_seconds": 1.5}, "half of ledger.max_lag_seconds (1.5 s)"),
        ({"write_interval_seconds": "fast"}, "non-negative number"),
    ],
)
def test_a_write_interval_the_writer_could_not_keep_is_refused(
    tmp_path: Path, ledger: dict[str, Any], words: str
) -> None:
    with pytest.raises(ConfigError, match="write_interval_seconds") as raised:
        gateway_config("http://127.0.0.1:9", tmp_path, ledger=ledger)
    assert words in str(raised.value)
