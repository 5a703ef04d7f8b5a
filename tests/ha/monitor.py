#!/usr/bin/env python3
"""Watches which nodes of the local HA cluster take writes.

monitor.py OUT PORT...: every 50 ms asks each node (one kept connection
each) whether it is in recovery, and appends a line to OUT whenever the set
of writable nodes changes: `<unix ms> <comma-separated writable ports, or
->`. Stops on SIGTERM. check.py reads the file for the time without a
primary, and for two writable nodes at once (which must never happen).
"""
import signal
import sys
import time

import psycopg2

out_path, ports = sys.argv[1], [int(p) for p in sys.argv[2:]]
running = True


def stop(*_):
    global running
    running = False


signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)

conns = {p: None for p in ports}


def writable(port):
    """True or False, or None when the node does not answer."""
    c = conns[port]
    try:
        if c is None:
            c = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres",
                                 connect_timeout=1, application_name="ha-monitor")
            c.autocommit = True
            conns[port] = c
        with c.cursor() as cur:
            cur.execute("SET statement_timeout = '1s'; SELECT NOT pg_is_in_recovery()")
            return bool(cur.fetchone()[0])
    except psycopg2.Error:
        if c is not None:
            try:
                c.close()
            except psycopg2.Error:
                pass
        conns[port] = None
        return None


last = None
with open(out_path, "a", buffering=1) as out:
    while running:
        now = time.time()
        state = ",".join(str(p) for p in ports if writable(p)) or "-"
        if state != last:
            out.write(f"{int(now * 1000)} {state}\n")
            last = state
        time.sleep(max(0.0, 0.05 - (time.time() - now)))
