"""``python -m bench.report BEFORE.json AFTER.json``: the two runs side by side, in Markdown."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any


def _value(row: dict[str, Any] | None) -> str:
    if row is None or row["measured"] is None or math.isnan(row["measured"]):
        return "n/a"
    text = f"{row['measured']:,.1f} {row['unit']}"
    if row.get("baseline"):
        text += f" ÷ {row['baseline']:,.1f} = **{row['ratio']:.2f}**"
    return text


def compare(before: dict[str, Any], after: dict[str, Any]) -> str:
    rows_before = {row["id"]: row for row in before["rows"]}
    rows_after = {row["id"]: row for row in after["rows"]}
    lines = [
        "| | measure | goal | before | after | met |",
        "|---|---|---|---|---|---|",
    ]
    for key in dict.fromkeys([*rows_before, *rows_after]):
        old, new = rows_before.get(key), rows_after.get(key)
        shown = new or old
        assert shown is not None
        met = {True: "yes", False: "no", None: ""}[new.get("met") if new else None]
        lines.append(
            f"| {key} | {shown['what']} | {shown['goal']} | {_value(old)} | {_value(new)} | {met} |"
        )
    return "\n".join(lines)


def main() -> None:
    before, after = (json.loads(Path(p).read_text()) for p in sys.argv[1:3])
    print(compare(before, after))


if __name__ == "__main__":
    main()
