//! Charging: ticks, ends and Deducts under concurrency, idempotency, and
//! the ledger they leave.
use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ticks_then_end_never_double_bill() {
    let app = spawn_app().await;
    app.subscribe("caller", "basic-monthly").await;
    let s = app.start_usage("caller", UsageKind::Call).await.unwrap();
    app.clock.advance(Duration::minutes(10));
    billing_svc::jobs::run_once(&app.billing_app, "auto-deduct").await.unwrap();
    app.clock.advance(Duration::minutes(10));
    billing_svc::jobs::run_once(&app.billing_app, "auto-deduct").await.unwrap();
    assert_eq!(app.usage_session(&s.id).await.auto_deductions_processed, 2);
    app.clock.advance(Duration::minutes(5));
    let end = app.end_usage(&s.id, 0).await.unwrap();
    assert_eq!(end.final_units_charged, 1, "25 min = 3 units, 2 already charged by the ticks");
    let after = end.session.unwrap();
    assert_eq!(after.units_charged, 3);
    assert_eq!(after.credits_remaining, 300 - 3);
    let mut db = app.billing_db().await;
    assert_eq!(scalar(&mut db, &format!("SELECT count(*) AS n FROM ledger WHERE usage_session_id = '{}'", s.id)).await, 3);
    assert_ledger_matches_balances(&mut db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn end_then_late_tick_charges_nothing_more() {
    let app = spawn_app().await;
    app.subscribe("hangup", "basic-monthly").await;
    let s = app.start_usage("hangup", UsageKind::Call).await.unwrap();
    app.clock.advance(Duration::minutes(25));
    let end = app.end_usage(&s.id, 1).await.unwrap();
    assert_eq!(end.final_units_charged, 4, "ceil(25/10) + 1 manual");
    billing_svc::jobs::run_once(&app.billing_app, "auto-deduct").await.unwrap();
    app.clock.advance(Duration::minutes(30));
    billing_svc::jobs::run_once(&app.billing_app, "auto-deduct").await.unwrap();
    assert_eq!(app.usage_session(&s.id).await.units_charged, 4);
    let again = app.end_usage(&s.id, 1).await.unwrap();
    assert!(again.replayed);
    assert_eq!(again.session.unwrap().units_charged, 4, "ending twice charges once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tick_and_end_at_the_same_instant_charge_each_unit_once_1000_times() {
    let app = spawn_app().await;
    let app = &app;
    let sub = app.subscribe("crowd", "pro-monthly").await;
    let mut db = app.billing_db().await;
    exec(
        &mut db,
        &format!("UPDATE subscriptions SET credits_granted = 100000, credits_remaining = 100000 WHERE id = '{}'", sub.id),
    )
    .await;
    let ids: Vec<String> = stream::iter(0..1000)
        .map(|_| retrying(|| app.start_usage("crowd", UsageKind::Call)))
        .buffer_unordered(50)
        .map(|r| r.unwrap().id)
        .collect()
        .await;
    app.clock.advance(Duration::minutes(25));
    // The ticks and the hang-ups land at the same instant.
    let ticks = join_all((0..4).map(|_| billing_svc::jobs::run_once(&app.billing_app, "auto-deduct")));
    let ends = stream::iter(ids.iter().enumerate())
        .map(|(i, id)| retrying(move || app.end_usage(id, (i % 2) as i64)))
        .buffer_unordered(100)
        .collect::<Vec<_>>();
    let (ticks, ends) = tokio::join!(ticks, ends);
    for t in ticks {
        t.unwrap();
    }
    for e in ends {
        e.unwrap();
    }
    // Every session: exactly ceil(25/10) = 3 units plus its manual unit.
    let wrong = scalar(
        &mut db,
        "SELECT count(*) AS n FROM usage_sessions WHERE user_id = 'crowd' \
         AND (status <> 'ENDED' OR units_charged + units_unpaid <> 3 + manual_deductions OR auto_deductions_processed > 2)",
    )
    .await;
    assert_eq!(wrong, 0);
    assert_eq!(
        scalar(
            &mut db,
            "SELECT count(*) AS n FROM ledger l JOIN usage_sessions s ON s.id = l.usage_session_id WHERE s.user_id = 'crowd'"
        )
        .await,
        3000 + 500
    );
    assert_ledger_matches_balances(&mut db).await;
}

/// 10,000 Deducts of one unit over 20 sessions that share one balance of
/// 6,000 credits, 64 in flight at once (four times the pool, so they queue
/// for connections, the per-session admission and the subscription row).
/// The balance must run out: exactly 6,000 units are paid and 4,000 unpaid.
/// A refusal (ABORTED: admission or lock bound; UNAVAILABLE: no connection
/// in time) is retried with the same deduction id, which replays the charge
/// if it had committed, so every Deduct ends with exactly one answer and the
/// totals are exact; any other failure fails the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deducts_10000_at_once_on_one_subscription_keep_balance_and_ledger_exact() {
    const DEDUCTS: usize = 10_000;
    const IN_FLIGHT: usize = 64;
    let app =
        tests::spawn_app_with(tests::harness::Options { pool_size: 16, max_concurrent_requests: 20_000, ..Default::default() })
            .await;
    let sub = app.subscribe("hot", "pro-monthly").await;
    let mut db = app.billing_db().await;
    let initial: i64 = 6000;
    exec(
        &mut db,
        &format!("UPDATE subscriptions SET credits_granted = {initial}, credits_remaining = {initial} WHERE id = '{}'", sub.id),
    )
    .await;
    let mut sessions = Vec::new();
    for _ in 0..20 {
        sessions.push(app.start_usage("hot", UsageKind::Text).await.unwrap().id);
    }
    let refusals = std::sync::atomic::AtomicUsize::new(0);
    let refusals = &refusals;
    let results: Vec<_> = stream::iter(0..DEDUCTS)
        .map(|i| {
            let b = app.billing.clone();
            let id = sessions[i % sessions.len()].clone();
            async move {
                retrying(|| {
                    let mut b = b.clone();
                    let req = bpb::DeductRequest { usage_session_id: id.clone(), deduction_id: format!("d-{i}"), units: 1 };
                    async move {
                        let r = b.deduct(req).await;
                        if r.is_err() {
                            refusals.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        r
                    }
                })
                .await
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    let mut charged = 0;
    let mut unpaid = 0;
    for r in &results {
        let r = r.as_ref().expect("every Deduct gets an answer (refusals retried)").get_ref();
        assert_eq!(r.units_charged + r.units_unpaid, 1, "{r:?}");
        if r.units_unpaid > 0 {
            assert_eq!(r.session.as_ref().unwrap().credits_remaining, 0, "a unit went unpaid while credits remained: {r:?}");
        }
        charged += r.units_charged;
        unpaid += r.units_unpaid;
    }
    println!(
        "{DEDUCTS} deducts, {IN_FLIGHT} in flight: {} refusals retried",
        refusals.load(std::sync::atomic::Ordering::Relaxed)
    );
    assert_eq!((charged, unpaid), (initial, DEDUCTS as i64 - initial), "the balance ran out: every credit paid one unit");
    let remaining = scalar(&mut db, &format!("SELECT credits_remaining AS n FROM subscriptions WHERE id = '{}'", sub.id)).await;
    assert_eq!(remaining, 0, "balance == initial - successful units");
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM deductions").await, DEDUCTS as i64, "one row per Deduct");
    assert_eq!(scalar(&mut db, "SELECT coalesce(sum(units_charged), 0)::bigint AS n FROM deductions").await, charged);
    assert_eq!(
        scalar(&mut db, "SELECT coalesce(sum(units_unpaid), 0)::bigint AS n FROM usage_sessions WHERE user_id = 'hot'").await,
        unpaid
    );
    assert_eq!(
        scalar(&mut db, "SELECT coalesce(sum(units_charged), 0)::bigint AS n FROM usage_sessions WHERE user_id = 'hot'").await,
        charged
    );
    assert_eq!(
        scalar(&mut db, &format!("SELECT count(*) AS n FROM ledger WHERE kind = 'USAGE' AND subscription_id = '{}'", sub.id))
            .await,
        charged
    );
    assert_eq!(
        scalar(
            &mut db,
            "SELECT count(*) AS n FROM (SELECT usage_session_id, unit_index FROM ledger GROUP BY 1, 2 HAVING count(*) > 1) d"
        )
        .await,
        0
    );
    assert_ledger_matches_balances(&mut db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deduct_is_idempotent_and_never_drives_a_balance_negative() {
    let mut app = spawn_app().await;
    let s = app.start_usage("poor", UsageKind::Text).await.unwrap();
    let mut db = app.billing_db().await;
    exec(&mut db, "UPDATE subscriptions SET credits_remaining = 2 WHERE user_id = 'poor'").await;
    exec(&mut db, "INSERT INTO ledger (subscription_id, period_start, kind, credits) SELECT id, period_start, 'CARRY_OVER', 28 FROM subscriptions WHERE user_id = 'poor'").await;
    let r = app
        .billing
        .deduct(bpb::DeductRequest { usage_session_id: s.id.clone(), deduction_id: "big".into(), units: 5 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.units_charged, r.units_unpaid, r.replayed), (2, 3, false));
    assert_eq!(r.session.as_ref().unwrap().credits_remaining, 0);
    assert_eq!(r.session.unwrap().units_unpaid, 3, "unpaid units are recorded on the session");
    let again = app
        .billing
        .deduct(bpb::DeductRequest { usage_session_id: s.id.clone(), deduction_id: "big".into(), units: 5 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((again.units_charged, again.units_unpaid, again.replayed), (2, 3, true));
    let e = app
        .billing
        .deduct(bpb::DeductRequest { usage_session_id: s.id.clone(), deduction_id: "big".into(), units: 6 })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(e.get_error_details().error_info().unwrap().reason, "IDEMPOTENCY_KEY_REUSED");
    assert_eq!(scalar(&mut db, &format!("SELECT count(*) AS n FROM ledger WHERE usage_session_id = '{}'", s.id)).await, 2);
    assert_ledger_matches_balances(&mut db).await;
    // With no credits left, a new session is refused with NO_CREDITS.
    let (reason, _) = quota(&app.start_usage("poor", UsageKind::Text).await.unwrap_err());
    assert_eq!(reason, "NO_CREDITS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_usage_input_gets_precise_statuses_and_writes_nothing() {
    let mut app = spawn_app().await;
    let s = app.start_usage("badu", UsageKind::Text).await.unwrap();
    let unknown = uuid::Uuid::new_v4().to_string();
    let deduct = |id: &str, units: i64| bpb::DeductRequest { usage_session_id: id.into(), deduction_id: "x".into(), units };
    assert_eq!(app.billing.deduct(deduct(&unknown, 1)).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(app.billing.deduct(deduct(&s.id, -1)).await.unwrap_err().code(), Code::InvalidArgument);
    assert_eq!(app.billing.deduct(deduct(&s.id, 0)).await.unwrap_err().code(), Code::InvalidArgument);
    assert_eq!(app.billing.deduct(deduct(&s.id, 1_000_000)).await.unwrap_err().code(), Code::InvalidArgument);
    assert_eq!(app.billing.deduct(deduct("nope", 1)).await.unwrap_err().code(), Code::InvalidArgument);
    let mut no_id = deduct(&s.id, 1);
    no_id.deduction_id = String::new();
    assert_eq!(app.billing.deduct(no_id).await.unwrap_err().code(), Code::InvalidArgument);
    for kind in [0, 99] {
        let e = app
            .billing
            .start_usage_session(bpb::StartUsageSessionRequest { user_id: "badu".into(), kind, ..Default::default() })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert_eq!(e.get_error_details().bad_request().unwrap().field_violations[0].field, "kind");
    }
    assert_eq!(app.end_usage(&unknown, 0).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(app.end_usage(&s.id, -3).await.unwrap_err().code(), Code::InvalidArgument);
    app.end_usage(&s.id, 0).await.unwrap();
    let e = app.billing.deduct(deduct(&s.id, 1)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "an ended session takes no deductions");
    let mut db = app.billing_db().await;
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM ledger").await, 0);
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM deductions").await, 0);
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM usage_sessions").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn usage_stats_roll_up_per_day_and_plan() {
    let mut app = spawn_app().await;
    for _ in 0..2 {
        let s = app.start_usage("stats", UsageKind::Call).await.unwrap();
        app.clock.advance(Duration::minutes(15));
        app.end_usage(&s.id, 0).await.unwrap();
    }
    billing_svc::jobs::run_once(&app.billing_app, "usage-stats").await.unwrap();
    billing_svc::jobs::run_once(&app.billing_app, "usage-stats").await.unwrap();
    let stats = app.billing_admin.get_usage_stats(bpb::GetUsageStatsRequest::default()).await.unwrap().into_inner().stats;
    assert_eq!(stats.len(), 1, "{stats:?}");
    assert_eq!((stats[0].day.as_str(), stats[0].plan_id.as_str()), ("2026-03-15", "free"));
    assert_eq!((stats[0].sessions, stats[0].minutes, stats[0].credits), (2, 30, 4));
    let e = app.billing.get_usage_stats(bpb::GetUsageStatsRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn explicit_interval_deductions_count_toward_the_end() {
    let mut app = spawn_app().await;
    app.subscribe("ticker", "basic-monthly").await;
    let s = app.start_usage("ticker", UsageKind::Call).await.unwrap();
    // The client's own per-interval deduction calls (the origin's "deduction" endpoint).
    for (minute, id) in [(10, "interval-1"), (20, "interval-2")] {
        app.clock.set(Utc.with_ymd_and_hms(2026, 3, 15, 12, minute, 0).unwrap());
        app.billing
            .deduct(bpb::DeductRequest { usage_session_id: s.id.clone(), deduction_id: id.into(), units: 1 })
            .await
            .unwrap();
    }
    // The server's job at the same moment finds nothing left to charge.
    billing_svc::jobs::run_once(&app.billing_app, "auto-deduct").await.unwrap();
    assert_eq!(app.usage_session(&s.id).await.units_charged, 2);
    app.clock.set(Utc.with_ymd_and_hms(2026, 3, 15, 12, 25, 0).unwrap());
    let end = app.end_usage(&s.id, 0).await.unwrap();
    assert_eq!(end.final_units_charged, 1, "hang-up at 25 min after two interval deductions: one more unit, not three");
    assert_eq!(end.session.unwrap().units_charged, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_running_when_the_user_pays_is_charged_to_the_new_subscription() {
    let app = spawn_app().await;
    let s = app.start_usage("upgrader", UsageKind::Call).await.unwrap();
    let paid = app.subscribe("upgrader", "pro-monthly").await;
    assert_eq!(paid.credits_granted, 1500 + 30, "the free credits carried over");
    app.clock.advance(Duration::minutes(15));
    let end = app.end_usage(&s.id, 0).await.unwrap().session.unwrap();
    assert_eq!((end.units_charged, end.units_unpaid), (2, 0), "charged from the balance the user now has");
    assert_eq!(end.subscription_id, paid.id);
    assert_eq!(end.credits_remaining, 1530 - 2);
    let mut db = app.billing_db().await;
    assert_ledger_matches_balances(&mut db).await;
}
