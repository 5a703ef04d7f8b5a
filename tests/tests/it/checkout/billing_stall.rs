//! Billing's connection failing under checkout: while billing stalls,
//! CreateSession answers UNAVAILABLE with RetryInfo (never a plan-limit
//! code), and checkout recovers once the backlog arrives. A TCP relay in
//! front of billing holds the traffic; real PostgreSQL, real sockets.
use futures::future::join_all;
use proto::checkout::v1 as cpb;
use tests::{helpers::scalar, spawn_app};
use tonic::Code;
use tonic_types::StatusExt;

/// A TCP relay in front of billing whose client→billing direction can be
/// held: billing stalls from checkout's point of view, and whatever checkout
/// wrote meanwhile (requests, then the resets of the calls it gave up on)
/// arrives in one burst on release.
async fn stallable_relay(target: std::net::SocketAddr) -> (std::net::SocketAddr, tokio::sync::watch::Sender<bool>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    async fn pump(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        mut held: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if *held.borrow_and_update() {
                if held.changed().await.is_err() {
                    return;
                }
                continue;
            }
            tokio::select! {
                n = from.read(&mut buf) => match n {
                    Ok(0) | Err(_) => return,
                    Ok(n) => if to.write_all(&buf[..n]).await.is_err() { return },
                },
                _ = held.changed() => {}
            }
        }
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (hold, held) = tokio::sync::watch::channel(false);
    let (never_tx, never_held) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        // The billing→checkout direction is never held; its sender lives
        // as long as the relay.
        let _keep_open = never_tx;
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(target).await else { continue };
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            tokio::spawn(pump(cr, sw, held.clone()));
            tokio::spawn(pump(sr, cw, never_held.clone()));
        }
    });
    (addr, hold)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn billing_stall_answers_unavailable_then_recovers_never_a_plan_limit_code() {
    let app = spawn_app().await;
    // A second checkout that reaches billing through the relay.
    let (relay, hold) = stallable_relay(app.billing_addr).await;
    let db_url =
        tests::harness::fresh_database("checkout-svc", |u| Box::pin(async move { checkout_svc::app::migrate(&u).await }))
            .await
            .unwrap();
    let mut cfg = tests::harness::checkout_config(&tests::harness::Options::default(), relay);
    cfg.billing_timeout = std::time::Duration::from_secs(1);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let shutdown = shared::server::Shutdown::new();
    let served = tokio::spawn(checkout_svc::serve(cfg, db_url.clone(), listener, app.clock.clone(), shutdown.clone()));
    tests::harness::wait_serving(&addr, proto::CHECKOUT_SERVICE_NAME).await.unwrap();
    let checkout = tests::checkout_client(&addr, tests::harness::SERVICE_TOKEN).unwrap();
    let create = |user: String| {
        let mut c = checkout.clone();
        async move {
            c.create_session(cpb::CreateSessionRequest { user_id: user, plan_id: "pro-monthly".into(), ..Default::default() })
                .await
        }
    };
    create("warm-up".into()).await.unwrap();

    // Billing stalls: every call is abandoned at its deadline.
    hold.send_replace(true);
    let stalled = join_all((0..60).map(|i| create(format!("stalled-{i}")))).await;
    for r in &stalled {
        let e = r.as_ref().unwrap_err();
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
        assert!(e.get_error_details().retry_info().is_some(), "{e:?}");
    }
    // Billing resumes and receives the backlog, abandoned calls and all,
    // while new calls arrive.
    hold.send_replace(false);
    let after = join_all((0..40).map(|i| create(format!("after-{i}")))).await;
    let mut ok = 0;
    for r in &after {
        match r {
            Ok(_) => ok += 1,
            Err(e) => assert_eq!(e.code(), Code::Unavailable, "{e:?}"),
        }
    }
    // And it serves normally again.
    let again = tests::helpers::retrying(|| create("after-stall".into())).await;
    assert!(again.is_ok(), "{again:?}");

    let mut db = tests::harness::connect(&db_url).await;
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM checkout_sessions WHERE user_id LIKE 'stalled-%'").await, 0);
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM checkout_sessions WHERE user_id LIKE 'after-%'").await, ok + 1);
    drop(db);
    shutdown.trigger();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), served).await;
    let name = db_url.rsplit('/').next().unwrap_or_default().split('?').next().unwrap_or_default().to_owned();
    let _ = tests::harness::pg().await.unwrap().drop_database(&name).await;
}
