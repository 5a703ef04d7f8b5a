//! Group commit of Deduct calls (docs/design.md, Performance): the batch
//! function charges each item exactly like a single charge, and concurrent
//! Deducts over real gRPC keep the ledger, the balances and the units exact
//! (Invariants 10 and 11) while they share transactions.
use diesel::{QueryableByName, sql_types};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use futures::{StreamExt, future::join_all, stream};
use proto::billing::v1::{self as bpb, UsageKind};
use std::collections::{BTreeMap, HashMap};
use tests::{
    TestApp,
    helpers::{assert_ledger_matches_balances, exec, retrying, scalar},
    spawn_app,
};
use tonic::Code;
use tonic_types::StatusExt;

#[derive(QueryableByName, Debug, PartialEq)]
struct Item {
    #[diesel(sql_type = sql_types::Integer)]
    r_item: i32,
    #[diesel(sql_type = sql_types::Nullable<sql_types::Text>)]
    r_error: Option<String>,
    #[diesel(sql_type = sql_types::Nullable<sql_types::BigInt>)]
    r_charged: Option<i64>,
    #[diesel(sql_type = sql_types::Nullable<sql_types::BigInt>)]
    r_unpaid: Option<i64>,
    #[diesel(sql_type = sql_types::Nullable<sql_types::Bool>)]
    r_replayed: Option<bool>,
    #[diesel(sql_type = sql_types::Nullable<sql_types::BigInt>)]
    r_credits_remaining: Option<i64>,
    #[diesel(sql_type = sql_types::Nullable<sql_types::BigInt>)]
    s_units_charged: Option<i64>,
}

/// The test clock's instant (harness: 2026-03-15 12:00 UTC), inside every
/// period the tests' subscriptions have.
const NOW: &str = "2026-03-15 12:00:00+00";

async fn batch(db: &mut AsyncPgConnection, items: &[(&str, &str, i64)]) -> Vec<Item> {
    let q = |v: Vec<String>| v.join(",");
    let sql = format!(
        "SELECT r_item, r_error, r_charged, r_unpaid, r_replayed, r_credits_remaining, s_units_charged \
           FROM billing_charge_batch(ARRAY[{}]::uuid[], ARRAY[{}]::text[], ARRAY[{}]::bigint[], '{NOW}') ORDER BY r_item",
        q(items.iter().map(|(s, _, _)| format!("'{s}'")).collect()),
        q(items.iter().map(|(_, d, _)| format!("'{d}'")).collect()),
        q(items.iter().map(|(_, _, u)| u.to_string()).collect()),
    );
    match diesel::sql_query(&sql).load(db).await {
        Ok(rows) => rows,
        Err(e) => panic!("{sql}: {e}"),
    }
}

fn ok(charged: i64, unpaid: i64, replayed: bool, credits: i64, session_units: i64) -> (Option<String>, [Option<i64>; 4], bool) {
    (None, [Some(charged), Some(unpaid), Some(credits), Some(session_units)], replayed)
}

fn shape(i: &Item) -> (Option<String>, [Option<i64>; 4], bool) {
    (i.r_error.clone(), [i.r_charged, i.r_unpaid, i.r_credits_remaining, i.s_units_charged], i.r_replayed.unwrap_or_default())
}

fn err(e: &str) -> (Option<String>, [Option<i64>; 4], bool) {
    (Some(e.into()), [None; 4], false)
}

/// One statement, deterministic: the same deduction id twice (charged once,
/// the second a replay of the first), two sessions of one subscription, an
/// ended session, an unknown one and a reused id with other units, each
/// failing only itself; the balance runs out in the middle of the batch and
/// the rest is recorded unpaid, in arrival order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_charges_each_item_like_a_single_charge_and_fails_only_bad_items() {
    let app = spawn_app().await;
    let a = app.start_usage("batch", UsageKind::Text).await.unwrap().id;
    let b = app.start_usage("batch", UsageKind::Call).await.unwrap().id;
    let ended = app.start_usage("batch", UsageKind::Text).await.unwrap().id;
    app.end_usage(&ended, 0).await.unwrap();
    let unknown = uuid::Uuid::new_v4().to_string();
    let mut db = app.billing_db().await;
    exec(&mut db, "UPDATE subscriptions SET credits_granted = 5, credits_remaining = 5 WHERE user_id = 'batch'").await;

    let rows = batch(
        &mut db,
        &[
            (&a, "d1", 2),
            (&a, "d1", 2),
            (&b, "d2", 1),
            (&ended, "d3", 1),
            (&unknown, "d4", 1),
            (&a, "d1", 3),
            (&b, "d5", 4),
            (&a, "d6", 1),
        ],
    )
    .await;
    let got: Vec<_> = rows.iter().map(shape).collect();
    assert_eq!(rows.iter().map(|r| r.r_item).collect::<Vec<_>>(), (1..=8).collect::<Vec<_>>(), "one row per item, in order");
    assert_eq!(
        got,
        vec![
            ok(2, 0, false, 3, 2),
            ok(2, 0, true, 3, 2),
            ok(1, 0, false, 2, 1),
            err("SESSION_ENDED"),
            err("NOT_FOUND"),
            err("DEDUCTION_ID_REUSED"),
            ok(2, 2, false, 0, 3),
            ok(0, 1, false, 0, 2),
        ]
    );
    let row = |id: &str, col: &str| format!("SELECT {col} AS n FROM usage_sessions WHERE id = '{id}'");
    assert_eq!(scalar(&mut db, &row(&a, "units_unpaid")).await, 1);
    assert_eq!(scalar(&mut db, &row(&a, "next_unit_index")).await, 3, "d1 counted once");
    assert_eq!(scalar(&mut db, &row(&b, "units_unpaid")).await, 2);
    assert_eq!(scalar(&mut db, &row(&b, "next_unit_index")).await, 5);
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM deductions").await, 4, "d1, d2, d5, d6");
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM ledger WHERE kind = 'USAGE'").await, 5);
    assert_eq!(scalar(&mut db, "SELECT count(DISTINCT xmin::text) AS n FROM deductions").await, 1, "one transaction");
    assert_ledger_matches_balances(&mut db).await;

    // The same calls again replay what the batch answered.
    let again = batch(&mut db, &[(&a, "d1", 2), (&b, "d5", 4), (&a, "d6", 1)]).await;
    assert_eq!(
        again.iter().map(shape).collect::<Vec<_>>(),
        vec![ok(2, 0, true, 0, 2), ok(2, 2, true, 0, 3), ok(0, 1, true, 0, 2)]
    );
}

/// A batch whose session was moved to the user's new subscription while it
/// ran charges the live one (docs/design.md, Invariants 12).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_on_a_replaced_subscription_charges_the_live_one() {
    let app = spawn_app().await;
    let s = app.start_usage("mover", UsageKind::Text).await.unwrap();
    let pro = app.subscribe("mover", "pro-monthly").await;
    assert_ne!(s.subscription_id, pro.id);
    let mut db = app.billing_db().await;
    let rows = batch(&mut db, &[(&s.id, "m1", 1), (&s.id, "m2", 1)]).await;
    assert_eq!(
        rows.iter().map(|r| (r.r_error.clone(), r.r_charged, r.r_unpaid)).collect::<Vec<_>>(),
        vec![(None, Some(1), Some(0)), (None, Some(1), Some(0))]
    );
    assert_eq!(
        scalar(&mut db, &format!("SELECT count(*) AS n FROM ledger WHERE kind = 'USAGE' AND subscription_id = '{}'", pro.id))
            .await,
        2
    );
    assert_eq!(app.usage_session(&s.id).await.subscription_id, pro.id, "the session follows the live subscription");
    assert_ledger_matches_balances(&mut db).await;
}

/// A batch on a subscription whose period has ended opens the next period
/// first, once (docs/design.md, Invariants 14), and charges both items in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_on_a_due_period_rolls_it_once_and_charges_the_new_period() {
    let app = spawn_app().await;
    let s = app.start_usage("roller", UsageKind::Text).await.unwrap();
    let mut db = app.billing_db().await;
    // The free subscription's period (calendar months) as if March had not
    // been opened yet: February, with its credits spent.
    exec(
        &mut db,
        "UPDATE subscriptions SET period_start = '2026-02-01 00:00:00+00', period_end = '2026-03-01 00:00:00+00', \
         credits_remaining = 0 WHERE user_id = 'roller'",
    )
    .await;
    exec(
        &mut db,
        "INSERT INTO ledger (subscription_id, period_start, kind, credits) \
         SELECT id, period_start, 'CARRY_OVER', credits_granted FROM subscriptions WHERE user_id = 'roller'",
    )
    .await;
    let rows = batch(&mut db, &[(&s.id, "r1", 1), (&s.id, "r2", 2)]).await;
    assert_eq!(
        rows.iter().map(|r| (r.r_error.clone(), r.r_charged, r.r_unpaid)).collect::<Vec<_>>(),
        vec![(None, Some(1), Some(0)), (None, Some(2), Some(0))],
        "charged from the fresh grant of the new period"
    );
    assert_eq!(
        scalar(
            &mut db,
            "SELECT count(*) AS n FROM subscriptions WHERE user_id = 'roller' AND period_start = '2026-03-01 00:00:00+00'"
        )
        .await,
        1,
        "the period rolled"
    );
    assert_eq!(
        scalar(&mut db, "SELECT count(*) AS n FROM ledger WHERE kind = 'USAGE' AND period_start = '2026-03-01 00:00:00+00'")
            .await,
        3
    );
    assert_ledger_matches_balances(&mut db).await;
}

async fn deduct(app: &TestApp, session: &str, deduction_id: &str, units: i64) -> Result<bpb::DeductResponse, tonic::Status> {
    let mut b = app.billing.clone();
    b.deduct(bpb::DeductRequest { usage_session_id: session.into(), deduction_id: deduction_id.into(), units })
        .await
        .map(|r| r.into_inner())
}

/// Many concurrent Deducts over gRPC across sessions of several
/// subscriptions (one of them hot), every id sent twice at once: each pair
/// gets one answer charged once (the other its replay), and afterwards
/// sum(ledger) == credits_granted - credits_remaining per subscription and
/// the units charged match the answers, the sessions and the deductions.
/// Transactions holding several deductions show that the calls were
/// coalesced.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_deducts_across_sessions_are_coalesced_and_keep_ledger_and_units_exact() {
    const IDS: usize = 600;
    const IN_FLIGHT: usize = 64;
    let app =
        tests::spawn_app_with(tests::harness::Options { pool_size: 16, max_concurrent_requests: 20_000, ..Default::default() })
            .await;
    let mut sessions = Vec::new();
    for u in 0..4 {
        let user = format!("many-{u}");
        app.subscribe(&user, "pro-monthly").await;
        for _ in 0..if u == 0 { 12 } else { 3 } {
            sessions.push(app.start_usage(&user, UsageKind::Text).await.unwrap().id);
        }
    }
    let mut db = app.billing_db().await;
    // One subscription runs out in the middle; the others do not.
    exec(
        &mut db,
        "UPDATE subscriptions SET credits_granted = 400, credits_remaining = 400 WHERE user_id = 'many-0' AND status = 'ACTIVE'",
    )
    .await;
    exec(&mut db, "UPDATE subscriptions SET credits_granted = 100000, credits_remaining = 100000 WHERE user_id <> 'many-0' AND status = 'ACTIVE'").await;

    let calls: Vec<(String, String, i64)> = (0..IDS * 2)
        .map(|i| {
            let n = i / 2;
            // Most calls on the hot subscription's sessions (the first 12).
            let s = if n % 3 == 0 { 12 + n % (sessions.len() - 12) } else { n % 12 };
            (sessions[s].clone(), format!("id-{n}"), 1 + (n % 3) as i64)
        })
        .collect();
    let results: Vec<_> = stream::iter(calls.iter().cloned())
        .map(|(s, d, u)| {
            let app = &app;
            async move { (s.clone(), d.clone(), u, retrying(|| deduct(app, &s, &d, u)).await) }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;

    let mut answers: BTreeMap<String, Vec<bpb::DeductResponse>> = BTreeMap::new();
    for (_, d, u, r) in results {
        let r = r.expect("every Deduct gets an answer (refusals retried)");
        assert_eq!(r.units_charged + r.units_unpaid, u, "{r:?}");
        answers.entry(d).or_default().push(r);
    }
    let mut charged_per_session: HashMap<String, i64> = HashMap::new();
    for (d, pair) in &answers {
        assert_eq!(pair.len(), 2, "{d}");
        assert_eq!(pair.iter().filter(|r| !r.replayed).count(), 1, "{d}: charged once, replayed once: {pair:?}");
        assert_eq!((pair[0].units_charged, pair[0].units_unpaid), (pair[1].units_charged, pair[1].units_unpaid), "{d}");
        let s = pair[0].session.as_ref().unwrap();
        assert_eq!(s.id, pair[1].session.as_ref().unwrap().id);
        *charged_per_session.entry(s.id.clone()).or_default() += pair[0].units_charged;
    }
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM deductions").await, IDS as i64, "one row per deduction id");
    for (s, charged) in &charged_per_session {
        let q = |sql: String| sql;
        assert_eq!(
            scalar(&mut db, &q(format!("SELECT units_charged AS n FROM usage_sessions WHERE id = '{s}'"))).await,
            *charged
        );
        assert_eq!(
            scalar(&mut db, &q(format!("SELECT count(*) AS n FROM ledger WHERE usage_session_id = '{s}'"))).await,
            *charged,
            "a ledger row per charged unit"
        );
        assert_eq!(
            scalar(
                &mut db,
                &q(format!("SELECT (units_charged + units_unpaid - next_unit_index) AS n FROM usage_sessions WHERE id = '{s}'"))
            )
            .await,
            0,
            "every unit got its own index"
        );
    }
    assert_eq!(
        scalar(&mut db, "SELECT credits_remaining AS n FROM subscriptions WHERE user_id = 'many-0' AND status = 'ACTIVE'").await,
        0,
        "the hot balance ran out"
    );
    assert_eq!(
        scalar(
            &mut db,
            "SELECT count(*) AS n FROM (SELECT 1 FROM ledger GROUP BY usage_session_id, unit_index HAVING count(*) > 1) d"
        )
        .await,
        0
    );
    assert_ledger_matches_balances(&mut db).await;
    let shared =
        scalar(&mut db, "SELECT count(*) AS n FROM (SELECT 1 FROM deductions GROUP BY xmin::text HAVING count(*) > 1) t").await;
    assert!(shared > 0, "no transaction charged two Deducts: the calls were never coalesced, the race did not happen");
}

/// Bad calls coalesced with good ones fail alone, with the statuses and
/// details a single Deduct gives (docs/design.md, Error model), while the
/// good ones in the same batches are charged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_calls_in_a_batch_fail_alone_with_the_single_deduct_statuses() {
    const ROUNDS: usize = 40;
    let app = spawn_app().await;
    app.subscribe("mixed", "pro-monthly").await;
    let good = app.start_usage("mixed", UsageKind::Text).await.unwrap().id;
    let ended = app.start_usage("mixed", UsageKind::Text).await.unwrap().id;
    app.end_usage(&ended, 0).await.unwrap();
    let unknown = uuid::Uuid::new_v4().to_string();
    deduct(&app, &good, "taken", 2).await.unwrap();

    let rounds = join_all((0..ROUNDS).map(|i| {
        let (app, good, ended, unknown) = (&app, &good, &ended, &unknown);
        async move {
            let (g, l, h) = (format!("good-{i}"), format!("late-{i}"), format!("ghost-{i}"));
            let (ok, e_ended, e_unknown, e_reused) = tokio::join!(
                deduct(app, good, &g, 1),
                deduct(app, ended, &l, 1),
                deduct(app, unknown, &h, 1),
                deduct(app, good, "taken", 3),
            );
            (ok, e_ended, e_unknown, e_reused)
        }
    }))
    .await;
    for (ok, e_ended, e_unknown, e_reused) in rounds {
        let ok = ok.expect("a good call next to bad ones is charged");
        assert_eq!((ok.units_charged, ok.units_unpaid, ok.replayed), (1, 0, false));

        let e = e_ended.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        let details = e.get_error_details();
        let v = &details.precondition_failure().expect("PreconditionFailure").violations[0];
        assert_eq!((v.r#type.as_str(), v.subject.clone()), ("SESSION_ENDED", format!("usage_session:{ended}")));

        let e = e_unknown.unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
        let r = e.get_error_details().resource_info().cloned().expect("ResourceInfo");
        assert_eq!((r.resource_type.as_str(), r.resource_name.as_str()), ("usage_session", unknown.as_str()));

        let e = e_reused.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert_eq!(e.get_error_details().error_info().expect("ErrorInfo").reason, "IDEMPOTENCY_KEY_REUSED");
    }
    let mut db = app.billing_db().await;
    assert_eq!(
        scalar(&mut db, &format!("SELECT units_charged AS n FROM usage_sessions WHERE id = '{good}'")).await,
        2 + ROUNDS as i64
    );
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM deductions").await, 1 + ROUNDS as i64);
    assert_ledger_matches_balances(&mut db).await;
}
