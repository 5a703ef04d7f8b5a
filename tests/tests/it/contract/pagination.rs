//! Keyset pagination of billing's list RPCs (ListSubscriptions,
//! GetUsageStats, ListPlans; ListFindings in reconcile::findings): pages
//! cover every row once, in order, across ties of the sort key; page sizes
//! default to 50 (ListPlans: 0 reads every plan) and stop at 500; a token
//! that no response produced is INVALID_ARGUMENT.
use proto::billing::v1 as bpb;
use std::collections::HashSet;
use tests::{
    helpers::{exec, scalar},
    spawn_app,
};
use tonic::Code;

/// Seeds `n` subscriptions of `user`, one ACTIVE and the rest REPLACED.
/// Every three share a `created_at`, so pages must break ties on the id.
async fn seed_subscriptions(db: &mut diesel_async::AsyncPgConnection, user: &str, n: usize) {
    exec(
        db,
        &format!(
            "INSERT INTO subscriptions (id, user_id, plan_id, status, anchor_at, calendar_periods, period_start, \
                                        period_end, credits_granted, credits_remaining, created_at) \
             SELECT gen_random_uuid(), '{user}', 'free', CASE WHEN i = 0 THEN 'ACTIVE' ELSE 'REPLACED' END, \
                    t, true, t, t + interval '1 month', 100, 0, t \
               FROM (SELECT i, timestamptz '2026-01-01 00:00:00+00' + (i / 3) * interval '1 minute' AS t \
                       FROM generate_series(0, {}) AS i) s",
            n - 1
        ),
    )
    .await;
}

/// Seeds the daily rollup: every day of `days` ending at 2026-03-15 (the
/// test clock's today), for each of `plans`.
async fn seed_stats(db: &mut diesel_async::AsyncPgConnection, days: i64, plans: &[&str]) {
    let plans = plans.iter().map(|p| format!("'{p}'")).collect::<Vec<_>>().join(", ");
    exec(
        db,
        &format!(
            "INSERT INTO usage_stats_daily (day, plan_id, sessions, minutes, credits) \
             SELECT date '2026-03-15' - d, p, d, 2 * d, 3 * d \
               FROM generate_series(0, {}) AS d, unnest(ARRAY[{plans}]) AS p",
            days - 1
        ),
    )
    .await;
}

/// Lower-case hex, the encoding of the services' page tokens (for forging).
fn hex(s: impl AsRef<[u8]>) -> String {
    s.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn subs_request(user: &str, page_size: i32, page_token: &str) -> bpb::ListSubscriptionsRequest {
    bpb::ListSubscriptionsRequest { user_id: user.into(), page_size, page_token: page_token.into() }
}

fn stats_request(page_size: i32, page_token: &str) -> bpb::GetUsageStatsRequest {
    bpb::GetUsageStatsRequest { page_size, page_token: page_token.into(), ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn list_subscriptions_pages_cover_every_row_once_newest_first() {
    let mut app = spawn_app().await;
    let mut db = app.billing_db().await;
    seed_subscriptions(&mut db, "pager", 130).await;
    seed_subscriptions(&mut db, "someone-else", 5).await;

    // Default page size 50: 50, 50, 30, and no token after the last page.
    let mut all = Vec::new();
    let mut token = String::new();
    let mut sizes = Vec::new();
    loop {
        let page = app.billing.list_subscriptions(subs_request("pager", 0, &token)).await.unwrap().into_inner();
        sizes.push(page.subscriptions.len());
        all.extend(page.subscriptions);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(sizes, vec![50, 50, 30]);
    assert!(all.iter().all(|s| s.user_id == "pager"));
    let ids: HashSet<&str> = all.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids.len(), 130, "no row twice, none left out");
    assert_eq!(all.iter().filter(|s| s.status == bpb::SubscriptionStatus::Active as i32).count(), 1);

    // Newest first, ties on created_at broken by id (descending).
    let key = |s: &bpb::Subscription| {
        let t = s.created_at.unwrap();
        (t.seconds, t.nanos, s.id.clone())
    };
    assert!(all.windows(2).all(|w| key(&w[0]) > key(&w[1])), "pages are ordered newest first without overlap");

    // One page of 500 holds them all and says there is nothing more; small
    // pages (cutting through groups of equal created_at) give the same rows.
    let one = app.billing.list_subscriptions(subs_request("pager", 500, "")).await.unwrap().into_inner();
    assert!(one.next_page_token.is_empty());
    assert_eq!(one.subscriptions, all);
    let mut small = Vec::new();
    let mut token = String::new();
    loop {
        let page = app.billing.list_subscriptions(subs_request("pager", 7, &token)).await.unwrap().into_inner();
        assert!(page.subscriptions.len() <= 7);
        small.extend(page.subscriptions);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(small, all);

    // An exact multiple of the page size ends with an empty token, not an
    // empty page.
    seed_subscriptions(&mut db, "even", 10).await;
    let page = app.billing.list_subscriptions(subs_request("even", 10, "")).await.unwrap().into_inner();
    assert_eq!((page.subscriptions.len(), page.next_page_token.as_str()), (10, ""));

    // A user with no subscriptions reads an empty page; reads create no rows.
    let page = app.billing.list_subscriptions(subs_request("nobody", 0, "")).await.unwrap().into_inner();
    assert!(page.subscriptions.is_empty() && page.next_page_token.is_empty());
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM subscriptions WHERE user_id = 'nobody'").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn list_subscriptions_refuses_bad_page_sizes_and_tokens() {
    let mut app = spawn_app().await;
    let mut db = app.billing_db().await;
    seed_subscriptions(&mut db, "pager", 3).await;
    let mut billing = app.billing.clone();
    for size in [-1, 501, i32::MAX, i32::MIN] {
        let e = billing.list_subscriptions(subs_request("pager", size, "")).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "page_size {size}");
        assert!(e.message().contains("page_size"), "{e:?}");
    }
    let stats_token = {
        seed_stats(&mut db, 2, &["free"]).await;
        let page = app.billing_admin.get_usage_stats(stats_request(1, "")).await.unwrap().into_inner();
        assert!(!page.next_page_token.is_empty());
        page.next_page_token
    };
    let forged = [
        "zz".to_owned(),
        "not a token".to_owned(),
        hex("1|not-a-uuid"),
        hex(format!("{}|{}", i64::MAX, uuid::Uuid::nil())),
        "ab".repeat(1000),
        stats_token,
    ];
    for token in &forged {
        let e = billing.list_subscriptions(subs_request("pager", 0, token)).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "token {token:.40}");
        assert!(e.message().contains("page_token"), "{e:?}");
    }
    // The largest allowed page is accepted.
    let page = billing.list_subscriptions(subs_request("pager", 500, "")).await.unwrap().into_inner();
    assert_eq!(page.subscriptions.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn get_usage_stats_pages_cover_every_row_once_by_day_then_plan() {
    let mut app = spawn_app().await;
    let mut db = app.billing_db().await;
    // 40 days × 3 plans; the default window (the last 30 days and today)
    // holds 31 × 3 = 93 rows.
    seed_stats(&mut db, 40, &["basic-monthly", "free", "pro-monthly"]).await;

    let mut admin = app.billing_admin.clone();
    let mut all = Vec::new();
    let mut token = String::new();
    let mut sizes = Vec::new();
    loop {
        let page = admin.get_usage_stats(stats_request(0, &token)).await.unwrap().into_inner();
        sizes.push(page.stats.len());
        all.extend(page.stats);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(sizes, vec![50, 43]);
    let key = |s: &bpb::UsageStat| (s.day.clone(), s.plan_id.clone());
    assert!(all.windows(2).all(|w| key(&w[0]) < key(&w[1])), "ordered by day then plan, no overlap");
    assert_eq!((all[0].day.as_str(), all[0].plan_id.as_str()), ("2026-02-13", "basic-monthly"));
    assert_eq!((all[92].day.as_str(), all[92].plan_id.as_str()), ("2026-03-15", "pro-monthly"));

    // Pages of 2 cut through each day's plans and give the same rows.
    let mut small = Vec::new();
    let mut token = String::new();
    loop {
        let page = admin.get_usage_stats(stats_request(2, &token)).await.unwrap().into_inner();
        small.extend(page.stats);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(small, all);

    // The window still applies to later pages.
    let r = bpb::GetUsageStatsRequest {
        from_day: "2026-03-01".into(),
        to_day: "2026-03-02".into(),
        page_size: 4,
        page_token: String::new(),
    };
    let first = admin.get_usage_stats(r.clone()).await.unwrap().into_inner();
    assert_eq!(first.stats.len(), 4);
    let second =
        admin.get_usage_stats(bpb::GetUsageStatsRequest { page_token: first.next_page_token, ..r }).await.unwrap().into_inner();
    assert_eq!(second.stats.len(), 2);
    assert!(second.next_page_token.is_empty());
    assert!(second.stats.iter().all(|s| s.day == "2026-03-02"));

    // Still admin only, whatever the paging.
    let e = app.billing.get_usage_stats(stats_request(10, "")).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn get_usage_stats_refuses_bad_page_sizes_and_tokens() {
    let mut app = spawn_app().await;
    let mut db = app.billing_db().await;
    seed_subscriptions(&mut db, "pager", 2).await;
    let subs_token = app.billing.list_subscriptions(subs_request("pager", 1, "")).await.unwrap().into_inner().next_page_token;
    assert!(!subs_token.is_empty());
    let mut admin = app.billing_admin.clone();
    for size in [-1, 501, i32::MAX] {
        let e = admin.get_usage_stats(stats_request(size, "")).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "page_size {size}");
        assert!(e.message().contains("page_size"), "{e:?}");
    }
    let forged = [
        "zz".to_owned(),
        hex("2026-13-01|free"),
        hex("1999-12-31|free"),
        hex("2026-03-01|"),
        hex("2026-03-01|fr\u{0}ee"),
        hex(format!("2026-03-01|{}", "p".repeat(129))),
        "ab".repeat(2000),
        subs_token,
    ];
    for token in &forged {
        let e = admin.get_usage_stats(stats_request(0, token)).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "token {token:.40}");
        assert!(e.message().contains("page_token"), "{e:?}");
    }
}

/// Seeds `n` extra plans through the catalogue; every four share a price,
/// so pages must break ties on the id.
async fn seed_plans(app: &tests::TestApp, n: usize) {
    for i in 0..n {
        app.create_plan(&format!("extra-{i:03}"), "Extra", 1000 * (i as i64 / 4 + 1), 10).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn list_plans_pages_cover_every_plan_once_and_page_size_zero_reads_all() {
    let app = spawn_app().await;
    let mut db = app.billing_db().await;
    seed_plans(&app, 23).await;
    let mut billing = app.billing.clone();

    // Today's callers send no page_size: every plan, cheapest first, no token.
    let all = billing.list_plans(bpb::ListPlansRequest::default()).await.unwrap().into_inner();
    assert!(all.next_page_token.is_empty());
    let stored = scalar(&mut db, "SELECT count(*) AS n FROM plans").await;
    assert_eq!(all.plans.len() as i64, stored);
    let key = |p: &bpb::Plan| (p.price_minor, p.id.clone());
    assert!(all.plans.windows(2).all(|w| key(&w[0]) < key(&w[1])), "sorted by price then id");

    // Pages of 5 give the same plans in the same order, each once.
    let mut paged = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page =
            billing.list_plans(bpb::ListPlansRequest { page_size: 5, page_token: token.clone() }).await.unwrap().into_inner();
        assert!(page.plans.len() <= 5);
        pages += 1;
        paged.extend(page.plans);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, all.plans.len().div_ceil(5));
    let ids: Vec<_> = paged.iter().map(key).collect();
    assert_eq!(ids, all.plans.iter().map(key).collect::<Vec<_>>());
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), ids.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn list_plans_refuses_bad_page_sizes_and_tokens() {
    let app = spawn_app().await;
    let mut billing = app.billing.clone();
    for size in [-1, 501, i32::MAX, i32::MIN] {
        let e = billing.list_plans(bpb::ListPlansRequest { page_size: size, page_token: String::new() }).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "page_size {size}");
        assert!(e.message().contains("page_size"), "{e:?}");
    }
    let forged = [
        "zz".to_owned(),
        "not a token".to_owned(),
        hex("cheap|free"),
        hex("100|"),
        hex(format!("1|{}", "x".repeat(129))),
        "ab".repeat(1000),
    ];
    for token in &forged {
        let e = billing.list_plans(bpb::ListPlansRequest { page_size: 0, page_token: token.clone() }).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "token {token:.40}");
        assert!(e.message().contains("page_token"), "{e:?}");
    }
    // The largest page is accepted and holds every seeded plan.
    let page = billing.list_plans(bpb::ListPlansRequest { page_size: 500, page_token: String::new() }).await.unwrap();
    assert!(page.into_inner().next_page_token.is_empty());
}
