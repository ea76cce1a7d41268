#!/usr/bin/env python3
"""The values table of helm/hookbus/README.md, generated from helm/hookbus/values.yaml.

A key is documented by a comment that starts with `# --` right above it (further `#` lines
continue it). The table lists every documented key with its default (from values.yaml) and
that text. check() fails when a value has no description (neither itself nor a map above it
is documented) or when the table in the README is not what write() would put there.

  python3 values_doc.py          check (exit 1 with the problems)
  python3 values_doc.py --fix    rewrite the table between the markers
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
VALUES = ROOT / "helm" / "hookbus" / "values.yaml"
README = ROOT / "helm" / "hookbus" / "README.md"
START = "<!-- values-table:start (generated from values.yaml by scripts/check-deploy --sync; do not edit) -->"
END = "<!-- values-table:end -->"

KEY = re.compile(r"^(\s*)([A-Za-z0-9_][A-Za-z0-9_.\-/]*|\"[^\"]+\"):(\s|$)")


def documented() -> list[tuple[str, str]]:
    """(dotted key, description) in file order."""
    out: list[tuple[str, str]] = []
    stack: list[tuple[int, str]] = []
    desc: list[str] | None = None
    in_list_indent: int | None = None
    for line in VALUES.read_text().splitlines():
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if stripped.startswith("# --"):
            desc = [stripped[4:].strip()]
            continue
        if stripped.startswith("#"):
            if desc is not None:
                desc.append(stripped[1:].strip())
            continue
        if not stripped:
            desc = None
            continue
        if in_list_indent is not None and indent > in_list_indent:
            continue  # inside a list item of a documented key
        in_list_indent = None
        if stripped.startswith("- "):
            in_list_indent = indent - 1
            desc = None
            continue
        m = KEY.match(line)
        if not m:
            desc = None
            continue
        key = m.group(2).strip('"')
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key))
        if desc is not None:
            out.append((".".join(k for _, k in stack), " ".join(d for d in desc if d)))
        desc = None
        rest = line[m.end():].strip()
        if not rest:
            in_list_indent = None
    return out


def lookup(values: dict[str, Any], dotted: list[str]) -> Any:
    cur: Any = values
    for k in dotted:
        cur = cur[k]
    return cur


def leaves(value: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Paths of every value a user can set: scalars, lists and empty maps."""
    if isinstance(value, dict) and value:
        return [p for k, v in value.items() for p in leaves(v, path + (str(k),))]
    return [path]


def split(dotted: str, values: dict[str, Any]) -> list[str]:
    """Dotted key back to its path (keys may contain dots, e.g. kubernetes.io/...)."""
    parts = dotted.split(".")
    out: list[str] = []
    cur: Any = values
    i = 0
    while i < len(parts):
        for j in range(len(parts), i, -1):
            k = ".".join(parts[i:j])
            if isinstance(cur, dict) and k in cur:
                out.append(k)
                cur = cur[k]
                i = j
                break
        else:
            raise KeyError(dotted)
    return out


def table() -> str:
    values = yaml.safe_load(VALUES.read_text())
    rows = ["| key | default | description |", "|---|---|---|"]
    docs = documented()
    keys = [d for d, _ in docs]
    for dotted, desc in docs:
        default = lookup(values, split(dotted, values))
        if isinstance(default, dict) and any(k.startswith(dotted + ".") for k in keys):
            rows.append(f"| `{dotted}` | (the keys below) | {desc.replace('|', chr(92) + '|')} |")
            continue
        text = json.dumps(default, ensure_ascii=False, separators=(", ", ": "))
        text = text.replace("|", "\\|")
        desc = desc.replace("|", "\\|")
        rows.append(f"| `{dotted}` | `{text}` | {desc} |")
    return "\n".join(rows)


def check() -> list[str]:
    problems = []
    values = yaml.safe_load(VALUES.read_text())
    docs = documented()
    keys = set()
    for dotted, _ in docs:
        try:
            keys.add(tuple(split(dotted, values)))
        except KeyError:
            problems.append(f"values.yaml: documented key {dotted} not found in the parsed values")
    for leaf in leaves(values):
        if not any(leaf[: len(k)] == k for k in keys):
            problems.append(f"values.yaml: {'.'.join(leaf)} has no `# --` description (nor has a map above it)")
    if not README.exists():
        problems.append(f"{README.relative_to(ROOT)} is missing (run: scripts/check-deploy --sync)")
        return problems
    text = README.read_text()
    if START not in text or END not in text:
        problems.append(f"{README.relative_to(ROOT)} lacks the values table markers")
    elif text[text.index(START) + len(START): text.index(END)].strip() != table():
        problems.append(f"{README.relative_to(ROOT)}: the values table differs from values.yaml "
                        "(run: scripts/check-deploy --sync)")
    return problems


def write() -> None:
    text = README.read_text()
    new = text[: text.index(START) + len(START)] + "\n" + table() + "\n" + text[text.index(END):]
    if new != text:
        README.write_text(new)
        print(f"  generated the values table of {README.relative_to(ROOT)}")


if __name__ == "__main__":
    if "--fix" in sys.argv:
        write()
    errs = check()
    for e in errs:
        print(f"  FAIL {e}")
    sys.exit(1 if errs else 0)
