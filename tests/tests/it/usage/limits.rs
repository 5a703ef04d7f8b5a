//! Plan limits: sessions, minutes and upload size per billing period.
use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_subscription_means_the_free_plan_with_calendar_periods() {
    let mut app = spawn_app().await;
    let u = app.billing.get_usage(bpb::GetUsageRequest { user_id: "newbie".into() }).await.unwrap().into_inner().usage.unwrap();
    assert_eq!(u.plan_id, "free");
    assert_eq!(u.period_start.unwrap().seconds, Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap().timestamp());
    assert_eq!(u.period_end.unwrap().seconds, Utc.with_ymd_and_hms(2026, 4, 1, 0, 0, 0).unwrap().timestamp());
    assert_eq!((u.sessions_used, u.minutes_used, u.credits_remaining), (0, 0, 30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn usage_of_the_previous_period_does_not_count_in_the_new_one() {
    let mut app = spawn_app().await;
    // The free plan allows 5 sessions a period: use them all in March.
    for _ in 0..5 {
        let s = app.start_usage("heavy", UsageKind::Text).await.unwrap();
        app.end_usage(&s.id, 0).await.unwrap();
    }
    let e = app.start_usage("heavy", UsageKind::Text).await.unwrap_err();
    let (reason, meta) = quota(&e);
    assert_eq!(reason, "SESSION_LIMIT_EXCEEDED");
    assert_eq!(meta["plan"], "free");
    assert_eq!(meta["current_usage"], "5");
    assert_eq!(meta["limit"], "5");
    // April: a new period starts at zero (this is what the origin got wrong).
    app.clock.set(Utc.with_ymd_and_hms(2026, 4, 2, 9, 0, 0).unwrap());
    app.start_usage("heavy", UsageKind::Text).await.expect("new period, fresh limits");
    let u = app.billing.get_usage(bpb::GetUsageRequest { user_id: "heavy".into() }).await.unwrap().into_inner().usage.unwrap();
    assert_eq!(u.sessions_used, 1);
    assert_eq!(u.period_start.unwrap().seconds, Utc.with_ymd_and_hms(2026, 4, 1, 0, 0, 0).unwrap().timestamp());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn session_limit_at_the_exact_boundary() {
    let app = spawn_app().await;
    let mut db = app.billing_db().await;
    for _ in 0..4 {
        app.start_usage("edge", UsageKind::Text).await.unwrap();
    }
    // limit - 1 used: allowed (and reaches the limit).
    app.start_usage("edge", UsageKind::Text).await.expect("4 of 5 used: one more is allowed");
    // limit used: refused.
    let (reason, meta) = quota(&app.start_usage("edge", UsageKind::Text).await.unwrap_err());
    assert_eq!((reason.as_str(), meta["current_usage"].as_str()), ("SESSION_LIMIT_EXCEEDED", "5"));
    // limit + 1 (e.g. a limit lowered by an operator): refused, usage reported.
    exec(&mut db, "INSERT INTO usage_sessions (id, user_id, subscription_id, kind, status, started_at, ended_at, deduction_interval_seconds) \
                   SELECT gen_random_uuid(), user_id, subscription_id, 'TEXT', 'ENDED', started_at, started_at, 600 FROM usage_sessions WHERE user_id = 'edge' LIMIT 1").await;
    let (_, meta) = quota(&app.start_usage("edge", UsageKind::Text).await.unwrap_err());
    assert_eq!(meta["current_usage"], "6");
    assert_eq!(
        scalar(&mut db, "SELECT count(*) AS n FROM usage_sessions WHERE user_id = 'edge'").await,
        6,
        "refusals write nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn minutes_limit_counts_active_time_clipped_to_the_period() {
    let app = spawn_app().await;
    app.start_usage("talker", UsageKind::Call).await.unwrap();
    app.clock.advance(Duration::minutes(59));
    app.start_usage("talker", UsageKind::Call).await.expect("59 active minutes: under the 60 minute limit");
    app.clock.advance(Duration::seconds(30));
    let (reason, meta) = quota(&app.start_usage("talker", UsageKind::Call).await.unwrap_err());
    assert_eq!(reason, "MINUTES_LIMIT_EXCEEDED");
    assert_eq!(meta["limit"], "60");
    assert!(meta["current_usage"].parse::<i64>().unwrap() >= 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upload_limit_is_the_plans_max_upload_bytes() {
    let mut app = spawn_app().await;
    let ok = app
        .billing
        .authorize_upload(bpb::AuthorizeUploadRequest { user_id: "up".into(), size_bytes: 10 << 20 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((ok.allowed, ok.max_upload_bytes), (true, 10 << 20));
    let e = app
        .billing
        .authorize_upload(bpb::AuthorizeUploadRequest { user_id: "up".into(), size_bytes: (10 << 20) + 1 })
        .await
        .unwrap_err();
    let (reason, meta) = quota(&e);
    assert_eq!((reason.as_str(), meta["limit"].as_str(), meta["plan"].as_str()), ("UPLOAD_TOO_LARGE", "10485760", "free"));
    let e = app.billing.authorize_upload(bpb::AuthorizeUploadRequest { user_id: "up".into(), size_bytes: 0 }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_starts_never_overshoot_the_session_limit() {
    let app = spawn_app().await;
    let results = join_all((0..20).map(|_| app.start_usage("rusher", UsageKind::Text))).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 5, "the free plan allows exactly 5");
    for r in results.iter().filter(|r| r.is_err()) {
        assert_eq!(quota(r.as_ref().unwrap_err()).0, "SESSION_LIMIT_EXCEEDED");
    }
}

/// The same for a user whose subscription row exists already (the first
/// use's insert, which also serializes, is not there to help): the live
/// row's lock is what makes the starts count one at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_starts_of_a_known_user_never_overshoot_the_session_limit() {
    let app = spawn_app().await;
    app.start_usage("rusher-2", UsageKind::Text).await.unwrap();
    let results = join_all((0..20).map(|_| app.start_usage("rusher-2", UsageKind::Text))).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 4, "the free plan allows exactly 5, one of them started before");
    for r in results.iter().filter(|r| r.is_err()) {
        assert_eq!(quota(r.as_ref().unwrap_err()).0, "SESSION_LIMIT_EXCEEDED");
    }
    let mut db = app.billing_db().await;
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM usage_sessions WHERE user_id = 'rusher-2'").await, 5);
}

/// PlanLimits states "unlimited" explicitly; the deprecated int fields stay
/// filled as before for older readers (0 = unlimited sessions or minutes,
/// but 0 upload bytes = no uploads). Pro has unlimited sessions; uploads are
/// never unlimited.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plan_limits_state_unlimited_explicitly_beside_the_legacy_zeros() {
    let mut app = spawn_app().await;
    let plans = app.billing.list_plans(bpb::ListPlansRequest::default()).await.unwrap().into_inner().plans;
    let limits = |id: &str| plans.iter().find(|p| p.id == id).and_then(|p| p.limits).unwrap();
    let limit = |l: Option<bpb::Limit>| l.map(|l| (l.unlimited, l.max)).unwrap();

    let pro = limits("pro-monthly");
    assert_eq!((pro.max_sessions_per_period, pro.max_minutes_per_period, pro.max_upload_bytes), (0, 3000, 1 << 30));
    assert_eq!(limit(pro.sessions_per_period), (true, 0), "pro: unlimited sessions");
    assert_eq!(limit(pro.minutes_per_period), (false, 3000));
    assert_eq!(limit(pro.upload_bytes), (false, 1 << 30));

    let free = limits("free");
    assert_eq!((free.max_sessions_per_period, free.max_minutes_per_period, free.max_upload_bytes), (5, 60, 10 << 20));
    assert_eq!((limit(free.sessions_per_period), limit(free.minutes_per_period)), ((false, 5), (false, 60)));

    // A plan that forbids uploads says max 0, not unlimited (a new version
    // of the free plan; a user without a subscription reads it).
    let no_uploads = bpb::UpdatePlanRequest {
        plan_id: "free".into(),
        request_id: uuid::Uuid::new_v4().to_string(),
        update_mask: Some(prost_types::FieldMask { paths: vec!["limits.upload_bytes".into()] }),
        limits: Some(bpb::PlanLimitsInput { upload_bytes: Some(tests::helpers::limit(Some(0))), ..Default::default() }),
        ..Default::default()
    };
    app.catalog.clone().update_plan(no_uploads).await.unwrap();
    let u = app.billing.get_usage(bpb::GetUsageRequest { user_id: "no-uploads".into() }).await.unwrap().into_inner();
    let l = u.usage.unwrap().limits.unwrap();
    assert_eq!((l.max_upload_bytes, limit(l.upload_bytes)), (0, (false, 0)));
}
