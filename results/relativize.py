"""Rewrite the absolute paths of the checkouts that produced these results as paths relative to the repository
root, in the files that recorded them: Hydra's ``.hydra/*.yaml``, ``multirun.yaml`` and the train logs. Only
those path prefixes change (``/work/main/results/x`` -> ``results/x``, ``cwd: /work/main`` -> ``cwd: .``); no
number, metric or other text does. Run once per new results folder, from the repository root:

    python results/relativize.py results /work/main /tmp/i8c
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

PATTERNS = ("**/.hydra/*.yaml", "**/multirun.yaml", "**/*.log")


def relativize(text: str, checkouts: list[str]) -> str:
    """Each checkout path, longest first, wherever it stands whole: followed by / (dropped) or by a space, quote
    or line end (it becomes .)."""
    for root in sorted((c.rstrip("/") for c in checkouts), key=len, reverse=True):
        text = re.sub(re.escape(root) + r"(/|(?=[\s'\"]|$))", lambda m: "" if m.group(1) else ".", text,
                      flags=re.MULTILINE)
    return text


def main(folder: str, *checkouts: str) -> None:
    for pattern in PATTERNS:
        for path in sorted(Path(folder).glob(pattern)):
            text = path.read_text()
            new = relativize(text, list(checkouts))
            if new != text:
                path.write_text(new)
                print(f"relativized {path}")


if __name__ == "__main__":
    main(*sys.argv[1:])
