//! GetUsageStats echoes the days it looked at (as the request resolved
//! them, defaults included), so an empty range is not `{}` in grpcurl
//! (proto3 drops zero values; docs/operations.md §9); rows appear only once
//! the `usage-stats` job has rolled their day up.
use prost::Message;

use super::*;

fn range(from: &str, to: &str) -> bpb::GetUsageStatsRequest {
    bpb::GetUsageStatsRequest { from_day: from.into(), to_day: to.into(), ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_empty_range_echoes_the_days_looked_at() {
    let app = spawn_app().await;
    let mut admin = app.billing_admin.clone();
    // Today is 2026-03-15 (the test clock): the defaults are 30 days back to today.
    let r = admin.get_usage_stats(bpb::GetUsageStatsRequest::default()).await.unwrap().into_inner();
    assert!(r.stats.is_empty() && r.next_page_token.is_empty(), "{r:?}");
    assert_eq!((r.from_day.as_str(), r.to_day.as_str(), r.days_in_range), ("2026-02-13", "2026-03-15", 31));
    assert!(r.encoded_len() > 0, "an empty range is not `{{}}` in grpcurl");

    for (from, to, want) in [
        ("2026-03-01", "2026-03-10", ("2026-03-01", "2026-03-10", 10)),
        ("2026-03-15", "2026-03-15", ("2026-03-15", "2026-03-15", 1)),
        ("2026-03-10", "", ("2026-03-10", "2026-03-15", 6)),
        ("", "2026-03-01", ("2026-02-13", "2026-03-01", 17)),
    ] {
        let r = admin.get_usage_stats(range(from, to)).await.unwrap().into_inner();
        assert!(r.stats.is_empty(), "{r:?}");
        assert_eq!((r.from_day.as_str(), r.to_day.as_str(), r.days_in_range), want, "from {from:?} to {to:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rows_appear_after_the_usage_stats_job_and_every_page_echoes_the_range() {
    let app = spawn_app().await;
    // One usage session on 2026-03-15 and one on 2026-03-16 (the job rolls
    // up yesterday and today).
    for day in 0..2 {
        if day > 0 {
            app.clock.advance(Duration::days(1));
        }
        let s = app.start_usage("stats-range", UsageKind::Call).await.unwrap();
        app.clock.advance(Duration::minutes(10));
        app.end_usage(&s.id, 0).await.unwrap();
    }
    let mut admin = app.billing_admin.clone();
    let before = admin.get_usage_stats(range("2026-03-15", "")).await.unwrap().into_inner();
    assert!(before.stats.is_empty(), "no rows before the job has run: {before:?}");
    assert_eq!((before.from_day.as_str(), before.to_day.as_str(), before.days_in_range), ("2026-03-15", "2026-03-16", 2));

    billing_svc::jobs::run_once(&app.billing_app, "usage-stats").await.unwrap();
    let (mut days, mut token) = (Vec::new(), String::new());
    loop {
        let page = admin
            .get_usage_stats(bpb::GetUsageStatsRequest { page_size: 1, page_token: token, ..range("2026-03-15", "") })
            .await
            .unwrap()
            .into_inner();
        assert_eq!((page.from_day.as_str(), page.to_day.as_str(), page.days_in_range), ("2026-03-15", "2026-03-16", 2));
        days.extend(page.stats.iter().map(|s| (s.day.clone(), s.sessions)));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(days, vec![("2026-03-15".to_owned(), 1), ("2026-03-16".to_owned(), 1)]);
}
