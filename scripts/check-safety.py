#!/usr/bin/env python3
"""Fails when an `unsafe` block, fn, impl or trait has no `SAFETY:` comment.

Every Rust file of the workspace (fuzz targets included, `target/` left out)
is scanned for `unsafe {`, `unsafe fn`, `unsafe impl` and `unsafe trait` in
code (comments and string literals are not code). Each one needs a
`// SAFETY:` comment (a `/// # Safety` section for an `unsafe fn` or
`unsafe trait`, which state the caller's duty) on its own line, in the
comments right above the statement that holds it, or in the comments right
above that statement's start when it spans lines (a `.filter(|x| unsafe
{ .. })` in a chain, a `let n = unsafe {` after a blank-free run of its
arguments). Every miss is printed as `path:line: ...`, and the exit status
is 1.

    scripts/check-safety.py [ROOT]
"""
import os
import re
import sys

ROOT = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), ".."))
SKIP_DIRS = {"target", ".git", "node_modules", "corpus", "artifacts"}
UNSAFE_RE = re.compile(r"\bunsafe\s*(\{|fn\b|impl\b|trait\b|extern\b)")
# How far above an unsafe line its statement may start.
MAX_LOOKBACK = 12


def rust_files(root):
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for f in sorted(filenames):
            if f.endswith(".rs"):
                yield os.path.join(dirpath, f)


def code_of(line):
    """The line without its `//` comment and with string literals blanked
    (good enough for this check: no raw strings hold `unsafe`)."""
    line = re.sub(r'"(?:\\.|[^"\\])*"', '""', line)
    i = line.find("//")
    return line if i < 0 else line[:i]


def is_comment(line):
    s = line.strip()
    return s.startswith("//")


def has_safety(lines, i, kind):
    """Whether the unsafe at lines[i] is justified."""
    if "SAFETY:" in lines[i]:
        return True
    wanted = ("SAFETY:", "# Safety") if kind in ("fn", "trait") else ("SAFETY:",)
    j = i - 1
    while j >= 0 and i - j <= MAX_LOOKBACK:
        line = lines[j]
        s = line.strip()
        if is_comment(line):
            if any(w in s for w in wanted):
                return True
            j -= 1
            continue
        if s.startswith("#[") or s.startswith("#!["):
            j -= 1
            continue
        code = code_of(line).rstrip()
        # A line that ends a statement or opens/closes a block is not part
        # of the statement holding the unsafe: the comment had to be below.
        if not code or code.endswith((";", "{", "}")):
            return False
        j -= 1
    return False


def main():
    misses = []
    count = 0
    for path in rust_files(ROOT):
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")
        in_block_comment = False
        for i, line in enumerate(lines):
            if in_block_comment:
                if "*/" in line:
                    in_block_comment = False
                continue
            if line.strip().startswith("/*") and "*/" not in line:
                in_block_comment = True
                continue
            for m in UNSAFE_RE.finditer(code_of(line)):
                count += 1
                kind = m.group(1).rstrip("\\b")
                if not has_safety(lines, i, kind):
                    rel = os.path.relpath(path, ROOT)
                    misses.append(f"{rel}:{i + 1}: `unsafe {kind}` without a SAFETY: comment above it")
    for m in misses:
        print(m)
    sys.stdout.flush()
    if misses:
        print(f"{len(misses)} of {count} unsafe sites lack a SAFETY: comment", file=sys.stderr)
        return 1
    print(f"every unsafe site has a SAFETY: comment ({count} sites)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
