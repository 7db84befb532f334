"""A stand-in provider that answers every Messages request with the 429 ``billing_error`` shape (with
``x-should-retry: false``) that recent Claude Code versions are said to show as a spend limit, counting the
requests it gets in COUNT_FILE: ``python3 billing_standin.py PORT COUNT_FILE``. The real-CLI test compares how
Claude Code shows it with how it shows tokenctl's 402."""

from __future__ import annotations

import sys
from pathlib import Path

from aiohttp import web

MESSAGE = "tokenctl: budget 'tiny' (user broke, monthly) is exhausted. Ask your administrator to raise the budget."


def main() -> None:
    port, count_file = int(sys.argv[1]), Path(sys.argv[2])
    count_file.write_text("0")

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        if request.path.endswith("/count_tokens"):
            return web.json_response({"input_tokens": 10})
        count_file.write_text(str(int(count_file.read_text()) + 1))
        body = {"type": "error", "error": {"type": "billing_error", "message": MESSAGE}, "request_id": "req_standin"}
        return web.json_response(body, status=429, headers={"x-should-retry": "false", "request-id": "req_standin"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__":
    main()
