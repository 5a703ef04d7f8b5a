#!/usr/bin/env python3
"""After the failovers of tests/ha/run.sh: every operation loadgen was told
succeeded is on the new primary, nothing was applied twice, and the figures
of each event (tests/ha/README.md). Exits 1 on any violation.

Reads, in --work: events.log (`<ms> kill|switchover|healed ...`, written by
run.sh), primary.log (`<ms> <writable ports or ->`, monitor.py),
acks-<scenario>.log (`<ms> <scenario> ok <id> <id>` / `... error <Code>`,
loadgen --ack-log), loadgen-<scenario>.json and the nodes' PostgreSQL logs.
"""
import argparse
import collections
import glob
import json
import os
import sys

import psycopg2

SCENARIOS = ("deduct", "verify-payment", "webhook")
# A caller retries these with the same ids (docs/integration.md); anything
# else during a failover is a defect.
RETRYABLE = {"Unavailable", "Aborted", "DeadlineExceeded"}

args = argparse.ArgumentParser()
args.add_argument("--work", required=True)
args.add_argument("--port", type=int, required=True, help="the new primary")
args.add_argument("--database", required=True, help="billing's database")
args = args.parse_args()
violations = []


def lines(name):
    path = os.path.join(args.work, name)
    with open(path) as f:
        return [line.split() for line in f if line.strip()]


events = [(int(p[0]), p[1], p[2:]) for p in lines("events.log")]
primary = [(int(p[0]), p[1]) for p in lines("primary.log")]
acks = {s: [] for s in SCENARIOS}
errors = {s: [] for s in SCENARIOS}
setup_errors = collections.Counter()      # loadgen's set-up, before the first event
for s in SCENARIOS:
    for p in lines(f"acks-{s}.log"):
        if p[1] == "setup":
            setup_errors[p[3]] += 1
        else:
            (acks if p[2] == "ok" else errors)[s].append((int(p[0]), p[3:]))

# --- the database: every acknowledged operation, nothing twice -------------
db = psycopg2.connect(host="127.0.0.1", port=args.port, user="postgres", dbname=args.database, connect_timeout=5)
db.set_session(readonly=True)
cur = db.cursor()


def one(sql, *params):
    cur.execute(sql, params)
    return cur.fetchone()[0]


def missing(sql, ids):
    """Acknowledged ids (pairs) the query does not find: `sql` selects the
    pairs a(x, y) it finds, given arrays %s, %s."""
    if not ids:
        return []
    xs, ys = [i[0] for i in ids], [i[1] for i in ids]
    cur.execute(sql, (xs, ys))
    found = {(r[0], r[1]) for r in cur.fetchall()}
    return [i for i in ids if (i[0], i[1]) not in found]


acked = {s: [tuple(ids) for _, ids in acks[s]] for s in SCENARIOS}
lost = {
    "deduct": missing(
        """SELECT a.x, a.y FROM unnest(%s::text[], %s::text[]) AS a(x, y)
           JOIN deductions d ON d.usage_session_id = a.x::uuid AND d.deduction_id = a.y""",
        acked["deduct"]),
    # The order paid by exactly this payment, and its subscription.
    "verify-payment": missing(
        """SELECT a.x, a.y FROM unnest(%s::text[], %s::text[]) AS a(x, y)
           JOIN orders o ON o.id = a.x AND o.status = 'PAID' AND o.payment_id = a.y
           JOIN subscriptions s ON s.order_id = o.id""",
        acked["verify-payment"]),
    # The stored event, processed, and its order paid with a subscription.
    "webhook": missing(
        """SELECT a.x, a.y FROM unnest(%s::text[], %s::text[]) AS a(x, y)
           JOIN webhook_events w ON w.event_id = a.x AND w.order_id = a.y AND w.outcome = 'PROCESSED'
           JOIN orders o ON o.id = a.y AND o.status = 'PAID'
           JOIN subscriptions s ON s.order_id = o.id""",
        acked["webhook"]),
}
for s, ids in lost.items():
    if ids:
        violations.append(f"{len(ids)} acknowledged {s} operations are not on the new primary, e.g. {ids[:3]}")
    dupes = len(acked[s]) - len(set(acked[s]))
    if dupes:
        violations.append(f"{dupes} {s} ids were acknowledged twice (loadgen reuses no id)")

twice = {
    # UNIQUE (usage_session_id, unit_index) holds the ledger; this also
    # catches a constraint that went missing.
    "ledger units charged twice": one(
        """SELECT count(*) FROM (SELECT 1 FROM ledger WHERE usage_session_id IS NOT NULL
           GROUP BY usage_session_id, unit_index HAVING count(*) > 1) d"""),
    # Each Deduct charged once: per session, the ledger's units are the
    # deductions' and the session's.
    "usage sessions whose ledger disagrees with their deductions": one(
        """SELECT count(*) FROM usage_sessions us
           WHERE (SELECT count(*) FROM ledger l WHERE l.usage_session_id = us.id AND l.kind = 'USAGE')
                 <> us.units_charged
              OR us.units_charged <> (SELECT coalesce(sum(units_charged), 0) FROM deductions d
                                      WHERE d.usage_session_id = us.id)"""),
    "orders with more than one subscription": one(
        "SELECT count(*) FROM (SELECT 1 FROM subscriptions WHERE order_id IS NOT NULL GROUP BY order_id HAVING count(*) > 1) d"),
    # A second capture of an order is recorded here (SECOND_PAYMENT).
    "payment discrepancies": one("SELECT count(*) FROM payment_discrepancies"),
    "webhook events not PROCESSED": one("SELECT count(*) FROM webhook_events WHERE outcome <> 'PROCESSED'"),
    "orders with more than one stored webhook event": one(
        "SELECT count(*) FROM (SELECT 1 FROM webhook_events GROUP BY order_id HAVING count(*) > 1) d"),
}
for what, n in twice.items():
    if n:
        violations.append(f"{n} {what}")

# A commit whose wait for the synchronous standby was cancelled is
# acknowledged without being on a standby (PostgreSQL warns in its log).
cancelled_waits = 0
for log in glob.glob(os.path.join(args.work, "cluster", "log", "pg*", "postgresql*.log")):
    with open(log, errors="replace") as f:
        cancelled_waits += sum("canceling wait for synchronous replication" in line for line in f)
if cancelled_waits:
    violations.append(f"{cancelled_waits} commits were acknowledged without waiting for the synchronous standby")

# --- figures per event ------------------------------------------------------
two_primaries = [(t, s) for t, s in primary if "," in s]
if two_primaries:
    violations.append(f"two nodes took writes at once: {two_primaries[:3]}")

moves = [(t, kind, rest) for t, kind, rest in events if kind in ("kill", "switchover")]
end = next((t for t, kind, _ in events if kind == "end"), max(t for t, _, _ in events))
deduct_times = sorted(t for t, _ in acks["deduct"])
all_errors = sorted((t, code[0]) for s in SCENARIOS for t, code in errors[s])


def ms(x):
    return "-" if x is None else f"{x / 1000:.2f} s"


rows = []
baseline = collections.Counter(code for t, code in all_errors if t < moves[0][0]) if moves else collections.Counter()
for i, (t, kind, rest) in enumerate(moves):
    until = moves[i + 1][0] if i + 1 < len(moves) else end
    down = next((p for p, s in primary if p >= t and s == "-"), None)
    up = next((p for p, s in primary if down is not None and p > down and s != "-"), None)
    if down is not None and down >= until:
        down = up = None
    window = (up - down) if down is not None and up is not None else (0 if down is None else None)
    first_ok = next((a for a in deduct_times if a > (up or t)), None)
    in_event = [a for a in deduct_times if t <= a < until]
    gaps = [b - a for a, b in zip([t] + in_event, in_event)]
    failed = [e for e, _ in all_errors if t <= e < until]
    codes = collections.Counter(code for e, code in all_errors if t <= e < until)
    rows.append({
        "event": f"{kind} {rest[0]}" + (f" -> {rest[1]}" if kind == "switchover" else "")
                 + (" (standbys behind)" if "behind" in rest else ""),
        "no_primary_ms": window,
        "first_deduct_after_ms": None if first_ok is None else first_ok - t,
        "longest_deduct_gap_ms": max(gaps) if gaps else None,
        "failing_ms": (failed[-1] - failed[0]) if failed else 0,
        "errors": dict(codes),
    })
    if first_ok is None:
        violations.append(f"{kind}: no Deduct succeeded after it")

total_codes = collections.Counter(code for _, code in all_errors)
for code, n in (total_codes + setup_errors).items():
    if code not in RETRYABLE:
        violations.append(f"{n} {code} errors (only {', '.join(sorted(RETRYABLE))} are expected)")
for s in SCENARIOS:
    with open(os.path.join(args.work, f"loadgen-{s}.json")) as f:
        for line in f:
            report = json.loads(line)
            if report.get("errors"):
                violations.append(f"loadgen {s}: calls failed after every retry: {report['errors']}")

print()
print("ha: per event. no primary: time without a writable node; first Deduct: from the event to the first")
print("    Deduct acknowledged after the new primary appeared; longest gap: longest time without an acknowledged")
print("    Deduct; failing: from the first to the last failed call; errors: every failed attempt, by code")
print(f"    {'event':<34} {'no primary':>10} {'first Deduct':>12} {'longest gap':>11} {'failing':>8}  errors")
for r in rows:
    print(f"    {r['event']:<34} {ms(r['no_primary_ms']):>10} {ms(r['first_deduct_after_ms']):>12}"
          f" {ms(r['longest_deduct_gap_ms']):>11} {ms(r['failing_ms']):>8}  {r['errors'] or '{}'}")
print(f"ha: errors before the first event: {dict(baseline) or '{}'} (loadgen's set-up: {dict(setup_errors) or '{}'});"
      f" in total: {dict(total_codes) or '{}'} (INTERNAL: {total_codes.get('Internal', 0)})")
checked = {s: len(acked[s]) for s in SCENARIOS}
print(f"ha: acknowledged operations checked on the new primary: {sum(checked.values())} {checked};"
      f" lost: {sum(len(v) for v in lost.values())}")
print(f"ha: applied twice: {sum(twice.values())} ({', '.join(f'{k}: {v}' for k, v in twice.items())});"
      f" commits acknowledged without the sync standby: {cancelled_waits}; moments with two primaries: {len(two_primaries)}")
with open(os.path.join(args.work, "summary.json"), "w") as f:
    json.dump({"events": rows, "errors": dict(total_codes), "checked": checked,
               "lost": {s: len(v) for s, v in lost.items()}, "twice": twice, "violations": violations}, f, indent=1)
if violations:
    print("ha: VIOLATIONS:\n  " + "\n  ".join(violations), file=sys.stderr)
    sys.exit(1)
print("ha: OK")
