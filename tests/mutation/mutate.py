#!/usr/bin/env python3
"""Reads mutations.txt. `mutate.py list` prints name, suites, skip, about (separated by
U+001F)
per mutation; `mutate.py apply NAME DIR` applies that mutation's edits to the
tree at DIR (each find text must occur exactly once; exit 2 otherwise)."""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def parse(path):
    muts, cur = [], None
    with open(path, encoding="utf-8") as f:
        for raw in f:
            line = raw.rstrip("\n")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if line.startswith("[") and line.endswith("]"):
                cur = {"name": line[1:-1], "about": "", "suites": "", "skip": "", "edits": []}
                muts.append(cur)
                continue
            key, sep, value = line.partition(" =")
            if not sep or cur is None:
                sys.exit(f"mutations.txt: cannot read line: {line!r}")
            value = value[1:] if value.startswith(" ") else value
            if key == "file":
                cur["edits"].append({"file": value})
            elif key in ("find", "replace"):
                cur["edits"][-1][key] = value
            else:
                cur[key] = value
    return muts


def main():
    muts = parse(os.path.join(HERE, "mutations.txt"))
    if sys.argv[1] == "list":
        for m in muts:
            print("\x1f".join([m["name"], m["suites"], m["skip"], m["about"]]))
        return
    name, tree = sys.argv[2], sys.argv[3]
    m = next((m for m in muts if m["name"] == name), None)
    if m is None:
        sys.exit(f"no mutation {name}")
    for e in m["edits"]:
        path = os.path.join(tree, e["file"])
        text = open(path, encoding="utf-8").read()
        n = text.count(e["find"])
        if n != 1:
            print(f"{name}: {e['find']!r} occurs {n} times in {e['file']}", file=sys.stderr)
            sys.exit(2)
        text = text.replace(e["find"], e.get("replace", ""))
        open(path, "w", encoding="utf-8").write(text)


if __name__ == "__main__":
    main()
