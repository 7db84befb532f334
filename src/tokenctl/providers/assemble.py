"""An Anthropic Messages answer put together from its SSE events: the document a non-streaming client expects.

tokenctl streams a non-streaming request upstream when its reservation must grow with the output (see
``policy/stream_budget.py``), then hands the client the same JSON the provider would have sent: the
``message_start`` message with each content block as started, its deltas applied (text, thinking and its
signature, a tool call's input JSON, citations), and the stop reason and usage of ``message_delta``.
"""

from __future__ import annotations

from typing import Any

import orjson

from tokenctl.metering.stream import event_data, event_name


class MessageAssembler:
    def __init__(self) -> None:
        self.message: dict[str, Any] = {}
        self._blocks: dict[int, dict[str, Any]] = {}
        self._json: dict[int, list[str]] = {}  # partial tool-call input per block
        self.error: dict[str, Any] | None = None  # the provider's in-stream error event, if one came

    def add_event(self, event: bytes) -> None:
        """One SSE event as the provider sent it (``event:`` and ``data:`` lines); unparseable ones are skipped."""
        name = event_name(event)
        if not name or name == b"ping":
            return
        try:
            payload = orjson.loads(event_data(event))
        except orjson.JSONDecodeError:
            return
        if isinstance(payload, dict):
            self.add(name, payload)

    def add(self, name: bytes, payload: dict[str, Any]) -> None:
        if name == b"message_start" and isinstance(payload.get("message"), dict):
            self.message = dict(payload["message"])
        elif name == b"content_block_start" and isinstance(payload.get("content_block"), dict):
            self._blocks[int(payload.get("index", 0))] = dict(payload["content_block"])
        elif name == b"content_block_delta" and isinstance(payload.get("delta"), dict):
            self._delta(int(payload.get("index", 0)), payload["delta"])
        elif name == b"content_block_stop":
            self._close(int(payload.get("index", 0)))
        elif name == b"message_delta":
            got = payload.get("delta")
            delta: dict[str, Any] = got if isinstance(got, dict) else {}
            self.message.update({k: v for k, v in delta.items() if k in ("stop_reason", "stop_sequence")})
            if isinstance(payload.get("usage"), dict):
                self.message["usage"] = {**(self.message.get("usage") or {}), **payload["usage"]}
        elif name == b"error":
            self.error = payload

    def _delta(self, index: int, delta: dict[str, Any]) -> None:
        block = self._blocks.setdefault(index, {"type": "text", "text": ""})
        kind = delta.get("type")
        if kind == "text_delta":
            block["text"] = block.get("text", "") + str(delta.get("text", ""))
        elif kind == "thinking_delta":
            block["thinking"] = block.get("thinking", "") + str(delta.get("thinking", ""))
        elif kind == "signature_delta":
            block["signature"] = str(delta.get("signature", ""))
        elif kind == "input_json_delta":
            self._json.setdefault(index, []).append(str(delta.get("partial_json", "")))
        elif kind == "citations_delta" and delta.get("citation") is not None:
            block.setdefault("citations", []).append(delta["citation"])

    def _close(self, index: int) -> None:
        parts = self._json.pop(index, None)
        if parts is not None and index in self._blocks:
            text = "".join(parts)
            self._blocks[index]["input"] = orjson.loads(text) if text.strip() else {}

    def document(self) -> dict[str, Any]:
        for index in list(self._json):
            self._close(index)
        return {**self.message, "content": [self._blocks[i] for i in sorted(self._blocks)]}
