"""The reference floor: a bare aiohttp server + one pooled aiohttp client that forwards bytes.

No auth, no parsing, no metering, no ledger. The benchmark runs it beside tokenctl so the cost
of tokenctl's own work is visible on the same machine in the same run.

    python bench/baseline_proxy.py LISTEN_PORT UPSTREAM_BASE_URL
"""

from __future__ import annotations

import sys

import aiohttp
import uvloop
from aiohttp import web

_HOP = {"host", "content-length", "connection", "transfer-encoding", "keep-alive"}


def make_app(upstream: str) -> web.Application:
    app = web.Application(client_max_size=64 * 2**20)
    session_key = web.AppKey("session", aiohttp.ClientSession)

    async def start(app: web.Application):
        app[session_key] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        yield
        await app[session_key].close()

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        async with app[session_key].post(upstream + request.path, data=body, headers=headers) as resp:
            out = web.StreamResponse(status=resp.status, headers={"content-type": resp.headers.get("content-type", "")})
            await out.prepare(request)
            async for chunk in resp.content.iter_any():
                await out.write(chunk)
            await out.write_eof()
            return out

    app.cleanup_ctx.append(start)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


if __name__ == "__main__":
    uvloop.install()
    web.run_app(make_app(sys.argv[2]), host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
