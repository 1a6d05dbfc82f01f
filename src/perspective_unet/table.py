"""Plain-text and Markdown tables for the command line's reports."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["format_table"]


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
    except ValueError:
        return text in ("nan", "n/a", "-")
    return True


def format_table(
    header: Sequence[str], rows: Sequence[Sequence[object]], *, markdown: bool = False, footer: Sequence[object] = ()
) -> str:
    """Align columns; numbers are right-aligned, text left-aligned.

    Args:
        header: Column titles.
        rows: Cells; each is converted with ``str``.
        markdown: A GitHub Markdown table instead of a plain one.
        footer: An optional last row set apart by a rule (plain) or written as a normal row (Markdown).

    Example:
        >>> print(format_table(["organ", "dice"], [["liver", "0.95"]]))
        organ  dice
        -----  ----
        liver  0.95
    """
    body = [[str(c) for c in row] for row in rows]
    tail = [str(c) for c in footer]
    table = [list(header), *body, *([tail] if tail else [])]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    right = [all(_is_number(r[i]) for r in body + ([tail] if tail else [])) and body for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        parts = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right)]
        return ("| " + " | ".join(parts) + " |") if markdown else "  ".join(parts).rstrip()

    if markdown:
        rule = "|" + "|".join("-" * (w + 1) + (":" if r else "-") for w, r in zip(widths, right)) + "|"
        return "\n".join([line(header), rule, *(line(r) for r in body), *([line(tail)] if tail else [])])
    rule = "  ".join("-" * w for w in widths)
    lines = [line(header), rule, *(line(r) for r in body)]
    if tail:
        lines += [rule, line(tail)]
    return "\n".join(lines)
