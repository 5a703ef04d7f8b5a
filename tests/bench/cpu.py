#!/usr/bin/env python3
"""CPU accounting for tests/bench/compare.sh (Linux /proc, clock ticks).

  cpu.py run POSTMASTER_PID DB -- CMD...
      runs CMD (pgbench) and prints its output, then one line
      "cpu postgres_db=S postgres_all=S cmd=S" (seconds): the CPU of the
      backends of database DB (sampled every 0.1 s while they live, so the
      backends CMD opens and closes are counted), of the whole server
      (postmaster, every backend, the children it reaped: other databases on
      a shared server included) and of CMD itself.
"""
import os
import subprocess
import sys
import time

HZ = os.sysconf("SC_CLK_TCK")


def procs():
    out = {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            stat = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            title = open(f"/proc/{p}/cmdline").read().replace("\0", " ")
        except OSError:
            continue
        out[int(p)] = (int(stat[1]), int(stat[11]) + int(stat[12]), int(stat[13]) + int(stat[14]), title)
    return out


def server_ticks(table, root):
    total, todo = 0, [root]
    while todo:
        x = todo.pop()
        if x in table:
            total += table[x][1] + (table[x][2] if x == root else 0)
        todo += [p for p, v in table.items() if v[0] == x]
    return total


def db_backends(table, root, db):
    return {p: v[1] for p, v in table.items() if v[0] == root and f" {db} " in v[3]}


def run(root, db, cmd):
    t0 = procs()
    all0, seen0 = server_ticks(t0, root), db_backends(t0, root, db)
    last = dict(seen0)
    start = os.times()
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    while child.poll() is None:
        last.update(db_backends(procs(), root, db))
        time.sleep(0.1)
    out = child.stdout.read() if child.stdout else ""
    end = os.times()
    all1 = server_ticks(procs(), root)
    db_ticks = sum(v - seen0.get(p, 0) for p, v in last.items())
    cmd_s = (end.children_user - start.children_user) + (end.children_system - start.children_system)
    sys.stdout.write(out)
    print(f"cpu postgres_db={db_ticks / HZ:.1f} postgres_all={(all1 - all0) / HZ:.1f} cmd={cmd_s:.1f}")
    return child.returncode


if __name__ == "__main__":
    if len(sys.argv) < 5 or sys.argv[1] != "run" or sys.argv[4] != "--":
        sys.exit(__doc__)
    sys.exit(run(int(sys.argv[2]), sys.argv[3], sys.argv[5:]))
