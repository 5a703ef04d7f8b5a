#!/usr/bin/env python3
"""Reads mutations.txt. `mutate.py list` prints name, suites, skip, about (separated by
U+001F)
per mutation; `mutate.py apply NAME DIR` applies that mutation's edits to the
tree at DIR (each find text must occur exactly once; exit 2 otherwise) and
prints the services whose migrated database it must change (see `used`).

Every edited file must be one the build or the migration runner uses (exit 3
otherwise, nothing applied): a Rust file compiled into a crate (reachable
through `mod` declarations from its `src/lib.rs` or `src/main.rs`), a live SQL
function file (`<svc>/sql/functions/<name>.sql` listed in the service's
`sql_functions![...]`), or a migration's `up.sql`. run.sh then proves an SQL
mutant live by migrating a scratch database with the mutated binary and
comparing its schema with the unmutated one."""
import os
import re
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


def reachable_rust(tree, crate):
    """The .rs files of `crate` reachable through `mod name;` declarations."""
    seen, todo = set(), []
    for root in ("src/lib.rs", "src/main.rs"):
        if os.path.exists(os.path.join(tree, crate, root)):
            todo.append(os.path.join(crate, root))
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        text = open(os.path.join(tree, f), encoding="utf-8").read()
        # Comments are not declarations.
        text = re.sub(r"//[^\n]*", "", text)
        base = os.path.dirname(f)
        stem = os.path.splitext(os.path.basename(f))[0]
        # Children of foo.rs live in foo/; of mod.rs, lib.rs, main.rs beside it.
        if stem not in ("mod", "lib", "main"):
            base = os.path.join(base, stem)
        for m in re.finditer(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+([a-z_][a-z0-9_]*)\s*;", text, re.M):
            # A test-only module is not in the binaries the suites run.
            if "cfg(test)" in text[: m.start()].rstrip().rsplit("\n", 1)[-1]:
                continue
            for cand in (os.path.join(base, m.group(1) + ".rs"), os.path.join(base, m.group(1), "mod.rs")):
                if os.path.exists(os.path.join(tree, cand)):
                    todo.append(cand)
    return seen


def listed_functions(tree, svc):
    """The names in `<svc>/src/app.rs`'s sql_functions![...] list."""
    text = open(os.path.join(tree, svc, "src", "app.rs"), encoding="utf-8").read()
    m = re.search(r"sql_functions!\[([^\]]*)\]", text)
    return set(re.findall(r"[a-z_][a-z0-9_]*", m.group(1))) if m else set()


def used(tree, path):
    """(kind, service) when the build or the migration runner uses `path`:
    kind "rust" or "sql" (then the service whose database it shapes); None
    otherwise."""
    parts = path.split("/")
    if path.endswith(".rs") and len(parts) >= 3 and parts[1] == "src":
        return ("rust", parts[0]) if path in reachable_rust(tree, parts[0]) else None
    if len(parts) == 4 and parts[1:3] == ["sql", "functions"] and path.endswith(".sql"):
        name = parts[3][: -len(".sql")]
        if parts[0] == "shared":
            # A shared function file shapes the database of every service
            # that lists it (`sql_functions![shared name; ...]`).
            users = [s for s in ("billing-svc", "checkout-svc") if name in listed_functions(tree, s)]
            return ("sql", users[0]) if users else None
        return ("sql", parts[0]) if name in listed_functions(tree, parts[0]) else None
    if len(parts) == 4 and parts[1] == "migrations" and parts[3] == "up.sql":
        return ("sql", parts[0])
    return None


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
    sql_services = set()
    for e in m["edits"]:
        u = used(tree, e["file"])
        if u is None:
            print(f"{name}: {e['file']} is not a file the build or the migration runner uses "
                  "(not a reachable module of a crate's src, a listed SQL function file or a migration)", file=sys.stderr)
            sys.exit(3)
        if u[0] == "sql":
            sql_services.add(u[1])
    for e in m["edits"]:
        path = os.path.join(tree, e["file"])
        text = open(path, encoding="utf-8").read()
        n = text.count(e["find"])
        if n != 1:
            print(f"{name}: {e['find']!r} occurs {n} times in {e['file']}", file=sys.stderr)
            sys.exit(2)
        text = text.replace(e["find"], e.get("replace", ""))
        open(path, "w", encoding="utf-8").write(text)
    print(" ".join(sorted(sql_services)))


if __name__ == "__main__":
    main()
