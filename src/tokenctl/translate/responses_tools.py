"""The tools a Responses client (Codex) offers, in the form every other API has: named functions.

Codex sends its tools as ``tools`` and, with its newest models, as an ``additional_tools`` input item; they
come in kinds Chat Completions and Anthropic Messages do not have:

- ``function``: kept as it is;
- ``custom`` (a freeform tool such as ``apply_patch``, whose input is raw text, often under a grammar): a
  function with one string parameter, ``input``; the grammar goes into the description so the model writes
  valid input. Its calls go back to the client as ``custom_tool_call`` items with that raw text;
- ``namespace`` (a group, such as ``multi_agent_v1``): its tools are offered flat, as ``<namespace>__<name>``
  (the delimiter Codex itself uses where namespaces cannot be kept); the default namespace ``functions``
  keeps plain names. Calls go back with the tool's own name and its ``namespace``;
- ``web_search``: Anthropic's web search server tool on the Claude models that have it (at most
  ``WEB_SEARCHES_PER_REQUEST`` searches, metered and priced per search), shown to the client as
  ``web_search_call`` items; not offered where the model has none, or when Codex asks for no live web access
  (``external_web_access: false``: every provider search is live);
- ``tool_search`` and other built-in tools: no equivalent, so they are not offered and the ledger row names
  them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from tokenctl.translate.anthropic_to_chat import Untranslatable

WEB_SEARCH = "web_search"  # the name of the provider's own search when it runs one
DEFAULT_NAMESPACE = "functions"  # where Codex's own tools live; their calls carry plain names
FLAT_DELIMITER = "__"


@dataclass(slots=True)
class Function:
    """One tool as the provider sees it."""

    name: str
    description: str
    parameters: dict[str, Any]


@dataclass(slots=True)
class ResponsesTools:
    functions: list[Function] = field(default_factory=list)
    custom: set[str] = field(default_factory=set)  # exposed names of freeform tools
    namespaced: dict[str, tuple[str, str]] = field(default_factory=dict)  # exposed name -> (namespace, name)
    dropped: list[str] = field(default_factory=list)  # what could not be offered, for the ledger row
    web_search: bool = False  # a live web search was offered (the provider's own, where it has one)

    def exposed(self, name: str, namespace: str | None = None) -> str:
        """The name the provider knows a client tool by."""
        if namespace and namespace != DEFAULT_NAMESPACE:
            return f"{namespace.rstrip('_')}{FLAT_DELIMITER}{name.lstrip('_')}"
        return name

    def call_item(self, name: str, call_id: str, arguments: str, status: str = "completed") -> dict[str, Any]:
        """The Responses output item for a call the provider's model made to the tool it knows as ``name``."""
        item_id = f"fc_{call_id}"
        if name == WEB_SEARCH and self.web_search:  # the provider ran it: the client is only told
            query = _query(arguments)
            return {
                "type": "web_search_call",
                "id": f"ws_{call_id}",
                "status": status,
                "action": {"type": "search", "query": query},
            }
        if name in self.custom:
            return {
                "type": "custom_tool_call",
                "id": item_id.replace("fc_", "ctc_", 1),
                "status": status,
                "call_id": call_id,
                "name": name,
                "input": _custom_input(arguments),
            }
        item: dict[str, Any] = {
            "type": "function_call",
            "id": item_id,
            "status": status,
            "call_id": call_id,
            "name": name,
            "arguments": arguments or "{}",
        }
        if name in self.namespaced:
            item["namespace"], item["name"] = self.namespaced[name]
        return item


def read_tools(body: dict[str, Any]) -> ResponsesTools:
    """Every tool the request offers, from ``tools`` and ``additional_tools`` input items."""
    tools = ResponsesTools()
    offered = list(body.get("tools") or [])
    items = body.get("input")
    if isinstance(items, list):
        for item in items:
            if isinstance(item, dict) and item.get("type") == "additional_tools":
                offered += item.get("tools") or []
    for tool in offered:
        _add(tools, tool, None)
    return tools


def _add(tools: ResponsesTools, tool: Any, namespace: str | None) -> None:
    if not isinstance(tool, dict):
        raise Untranslatable("tools: each tool must be an object")
    kind = tool.get("type")
    if kind == "namespace":
        if namespace is not None:
            raise Untranslatable("tools: a namespace inside a namespace cannot be offered to this model")
        for inner in tool.get("tools") or []:
            _add(tools, inner, str(tool.get("name") or DEFAULT_NAMESPACE))
        return
    if kind == "web_search" and tool.get("external_web_access") is not False:
        tools.web_search = True  # the translator offers the provider's own search, or names it dropped
        return
    if kind == "web_search":
        tools.dropped.append("web_search tool not offered (external_web_access: false; the model's search is live)")
        return
    if kind not in ("function", "custom"):
        tools.dropped.append(f"{kind} tool not offered (no equivalent on this model)")
        return
    name = str(tool.get("name") or "")
    exposed = tools.exposed(name, namespace)
    if namespace and namespace != DEFAULT_NAMESPACE:
        tools.namespaced[exposed] = (namespace, name)
    description = str(tool.get("description") or "")
    if kind == "custom":
        tools.custom.add(exposed)
        tools.functions.append(Function(exposed, _custom_description(description, tool.get("format")), _CUSTOM))
    else:
        tools.functions.append(Function(exposed, description, tool.get("parameters") or {"type": "object"}))


_CUSTOM = {
    "type": "object",
    "properties": {"input": {"type": "string", "description": "The tool's whole input, as its description says."}},
    "required": ["input"],
}


def _custom_description(description: str, fmt: Any) -> str:
    if isinstance(fmt, dict) and fmt.get("type") == "grammar" and fmt.get("definition"):
        syntax = fmt.get("syntax") or "grammar"
        return f"{description}\n\nThe input must follow this {syntax} grammar:\n{fmt['definition']}"
    return description


def _custom_input(arguments: str) -> str:
    """The raw input of a freeform tool call from the JSON arguments the provider's model wrote."""
    try:
        value = orjson.loads(arguments or "{}")
    except orjson.JSONDecodeError:
        return arguments
    if isinstance(value, dict) and isinstance(value.get("input"), str):
        return value["input"]
    return arguments


def _query(arguments: str) -> str:
    try:
        value = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return ""
    return str(value.get("query") or "") if isinstance(value, dict) else ""


def custom_arguments(raw_input: Any) -> str:
    """A freeform tool call the client sent back in its history, as the JSON arguments the provider expects."""
    return orjson.dumps({"input": raw_input if isinstance(raw_input, str) else str(raw_input or "")}).decode()


def call_name(item: dict[str, Any], tools: ResponsesTools) -> str:
    """The provider-side name of a function or custom call in the client's history."""
    return tools.exposed(str(item.get("name") or ""), item.get("namespace"))


def output_text(output: Any) -> str:
    """A tool output as text: a string, or ``input_text`` parts (what Codex sends for custom tools)."""
    if output is None or isinstance(output, str):
        return output or ""
    if isinstance(output, list):
        return "\n".join(str(p.get("text", "")) for p in output if isinstance(p, dict) and "text" in p)
    if isinstance(output, dict):
        return str(output.get("content") or output.get("text") or orjson.dumps(output).decode())
    return str(output)
