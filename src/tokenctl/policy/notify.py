"""Notifications to a Slack-compatible webhook (``POST {"text": …}``), sent in the background.

A slow or failing webhook never delays a request: each message is its own task with a timeout,
failures are logged, and every notification is also in the audit log.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp

log = logging.getLogger("tokenctl.notify")


class Notifier:
    def __init__(self, http: aiohttp.ClientSession | None, timeout_seconds: float = 5.0) -> None:
        self._http = http
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._tasks: set[asyncio.Task[None]] = set()
        self.sent = 0
        self.failed = 0

    def send(self, url: str | None, text: str) -> None:
        if not url or self._http is None:
            return
        task = asyncio.get_running_loop().create_task(self._post(url, text))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post(self, url: str, text: str) -> None:
        assert self._http is not None
        try:
            async with self._http.post(url, json={"text": text}, timeout=self._timeout) as resp:
                if resp.status >= 300:
                    raise aiohttp.ClientResponseError(resp.request_info, (), status=resp.status)
            self.sent += 1
        except (TimeoutError, aiohttp.ClientError) as exc:
            self.failed += 1
            log.warning("webhook notification failed: %s", exc)

    async def drain(self, timeout: float = 5.0) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)
