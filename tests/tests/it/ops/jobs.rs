//! Background jobs across a database outage (docs/design.md, Jobs).
use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration as StdDuration,
};
use tests::{helpers::exec, spawn_app};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn job_keeps_running_across_a_database_outage_and_returns_its_connections() {
    let app = spawn_app().await;
    let db_name = app.billing_db_url.rsplit('/').next().unwrap().to_owned();
    let server = tests::harness::pg().await.unwrap();
    let mut admin = tests::harness::connect(&server.admin_url).await;
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let shutdown = shared::server::Shutdown::new();
    let job = {
        let (app, ok, failed) = (app.billing_app.clone(), ok.clone(), failed.clone());
        shared::jobs::spawn_periodic("auto-deduct", StdDuration::from_millis(50), shutdown.clone(), move || {
            let (app, ok, failed) = (app.clone(), ok.clone(), failed.clone());
            async move {
                let r = billing_svc::jobs::run_once(&app, "auto-deduct").await;
                if r.is_ok() {
                    ok.fetch_add(1, Ordering::SeqCst)
                } else {
                    failed.fetch_add(1, Ordering::SeqCst)
                };
                r
            }
        })
    };
    let wait_for = |counter: Arc<AtomicUsize>, above: usize| async move {
        for _ in 0..300 {
            if counter.load(Ordering::SeqCst) > above {
                return true;
            }
            tokio::time::sleep(StdDuration::from_millis(50)).await;
        }
        false
    };
    assert!(wait_for(ok.clone(), 0).await, "job runs");
    // The outage: no new connections, existing ones killed.
    exec(&mut admin, &format!("ALTER DATABASE \"{db_name}\" WITH ALLOW_CONNECTIONS false")).await;
    exec(&mut admin, &format!("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '{db_name}'")).await;
    assert!(wait_for(failed.clone(), 0).await, "iterations fail during the outage");
    let ok_during = ok.load(Ordering::SeqCst);
    exec(&mut admin, &format!("ALTER DATABASE \"{db_name}\" WITH ALLOW_CONNECTIONS true")).await;
    assert!(wait_for(ok.clone(), ok_during).await, "the job recovers by itself after the outage");
    shutdown.trigger();
    tokio::time::timeout(StdDuration::from_secs(10), job).await.unwrap().unwrap();
    // Nothing is checked out once the job stopped: the pool is not leaked.
    let state = app.billing_app.pool.state();
    assert_eq!(state.connections, state.idle_connections, "{state:?}");
    assert!(state.connections <= 10);
}
