"""Plain-text tables for the terminal: right-aligned numbers, a rule under the header and above the total."""

from __future__ import annotations


def render_table(header: list[str], rows: list[list[str]], footer: list[str] | None = None) -> str:
    if not rows:
        return "(no rows)"
    every = [header, *rows, *([footer] if footer else [])]
    widths = [max(len(r[i]) for r in every) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        parts = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    out = [line(header), rule, *(line(r) for r in rows)]
    if footer:
        out += [rule, line(footer)]
    return "\n".join(out)
