#!/usr/bin/env python3
"""Checks the `file:line` `name` anchors in docs/*.md: each must point at a
line of that file that mentions the name. Exit 1 with the stale anchors.
With --fix, moves each stale anchor to the line where that name is now
defined (fn, struct, enum or trait), when there is exactly one."""
import pathlib
import re
import sys

root = pathlib.Path(__file__).resolve().parent.parent
anchor = re.compile(r"`([\w./-]+\.rs):(\d+)`\s+`(\w+)`")
fix = "--fix" in sys.argv[1:]
stale = []
for doc in sorted((root / "docs").glob("*.md")):
    text = doc.read_text()

    def check(m):
        path, line, name = m.group(1), int(m.group(2)), m.group(3)
        file = root / path
        lines = file.read_text().splitlines() if file.exists() else []
        if 0 < line <= len(lines) and re.search(rf"\b{name}\b", lines[line - 1]):
            return m.group(0)
        defs = rf"\b(fn|struct|enum|trait) {name}\b"
        near = [i + 1 for i, l in enumerate(lines) if re.search(defs, l)]
        if fix and len(near) == 1:
            return f"`{path}:{near[0]}` `{name}`"
        where = f" (now at line {near[0]})" if len(near) == 1 else " (not found)"
        stale.append(f"{doc.relative_to(root)}: {path}:{line} `{name}`{where}")
        return m.group(0)

    fixed = anchor.sub(check, text)
    if fix and fixed != text:
        doc.write_text(fixed)
if stale:
    print("stale anchors (update the line numbers):", *stale, sep="\n  ")
    sys.exit(1)
print("docs anchors: all current")
