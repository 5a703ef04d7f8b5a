//! The `stack` binary (both services over a dev database).
#[tokio::test]
async fn stack_help_prints_help_and_exits_without_starting_anything() {
    // Ports nobody else uses: had it started a stack, it would bind them.
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_stack"))
            .arg("--help")
            .env("CHECKOUT_LISTEN_ADDR", "127.0.0.1:0")
            .env("BILLING_LISTEN_ADDR", "127.0.0.1:0")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("stack --help must exit, not serve")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("Usage: stack"), "{stdout}");
    assert!(stdout.contains("CHECKOUT_LISTEN_ADDR"), "{stdout}");
    assert!(!stdout.contains("payments stack is up"), "{stdout}");
    let bad = tokio::process::Command::new(env!("CARGO_BIN_EXE_stack")).arg("--bogus").output().await.unwrap();
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
}

mod databases {
    //! The stack works only in databases of its own (docs/design.md,
    //! "Development PostgreSQL"): a server that also holds a deployment's
    //! `checkout` and `billing`, or a database named like the stack's that
    //! the stack did not create, is left as it was.
    use std::{process::Stdio, time::Duration};

    use test_support::pg::PgServer;
    use tests::{
        harness::{connect, pg},
        helpers::{exec, scalar},
    };
    use tokio::io::{AsyncBufReadExt, BufReader};

    /// Runs `stack` with `args` against `server` until it is up (then stops
    /// it with SIGTERM) or exits; what it printed, and whether it came up.
    async fn run_stack(server: &PgServer, prefix: &str, args: &[&str]) -> (String, bool) {
        let dir = std::env::temp_dir().join(format!("stack-test-{prefix}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_stack"))
            .args(args)
            .current_dir(&dir)
            .env("DATABASE_URL", &server.admin_url)
            .env("STACK_DB_PREFIX", prefix)
            .env("CHECKOUT_LISTEN_ADDR", "127.0.0.1:0")
            .env("BILLING_LISTEN_ADDR", "127.0.0.1:0")
            .env("BILLING_HTTP_ADDR", "127.0.0.1:0")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut out = String::new();
        let mut up = false;
        let read = async {
            while let Ok(Some(line)) = lines.next_line().await {
                out.push_str(&line);
                out.push('\n');
                if line.contains("payments stack is up") {
                    up = true;
                    break;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(120), read).await.expect("stack neither came up nor exited");
        if up {
            let pid = child.id().unwrap().to_string();
            tokio::process::Command::new("kill").args(["-TERM", &pid]).status().await.unwrap();
        }
        let done = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output()).await.expect("stack did not stop");
        let done = done.unwrap();
        out.push_str(&String::from_utf8_lossy(&done.stdout));
        out.push_str(&String::from_utf8_lossy(&done.stderr));
        if up {
            assert!(done.status.success(), "SIGTERM stops the stack cleanly: {out}");
        }
        (out, up)
    }

    async fn tables(server: &PgServer, db: &str) -> Vec<String> {
        #[derive(diesel::QueryableByName)]
        struct T {
            #[diesel(sql_type = diesel::sql_types::Text)]
            name: String,
        }
        use diesel_async::RunQueryDsl;
        let mut c = connect(&server.url(db)).await;
        let rows: Vec<T> = diesel::sql_query("SELECT schemaname || '.' || relname AS name FROM pg_stat_user_tables ORDER BY 1")
            .load(&mut c)
            .await
            .unwrap();
        rows.into_iter().map(|t| t.name).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_stack_never_touches_databases_it_did_not_create() {
        let server = pg().await.unwrap();
        let prefix = format!("st{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        // A deployment's databases on the same server: made here when
        // missing (with rows), only looked at when they exist.
        let mut made = Vec::new();
        let mut before = Vec::new();
        for db in ["checkout", "billing"] {
            if server.ensure_database(db, None).await.unwrap() {
                made.push(db);
                let mut c = connect(&server.url(db)).await;
                exec(&mut c, "CREATE TABLE foreign_rows (id int PRIMARY KEY, note text)").await;
                exec(&mut c, "INSERT INTO foreign_rows SELECT g, 'not the stack''s' FROM generate_series(1, 100) g").await;
            }
            before.push(tables(server, db).await);
        }

        // A database named like the stack's, not made by it: refused, untouched.
        let squatter = format!("{prefix}_billing");
        server.ensure_database(&squatter, None).await.unwrap();
        let (out, up) = run_stack(server, &prefix, &[]).await;
        assert!(!up, "the stack must refuse a database it did not create: {out}");
        assert!(out.contains("was not created by stack"), "{out}");
        assert!(tables(server, &squatter).await.is_empty(), "nothing was migrated into it");
        assert_eq!(server.database_comment(&format!("{prefix}_checkout")).await.unwrap(), None, "and nothing created beside it");
        server.drop_database(&squatter).await.unwrap();

        // Its own databases: new, then kept, then fresh.
        let (out, up) = run_stack(server, &prefix, &[]).await;
        assert!(up, "{out}");
        assert!(out.contains(&format!("{prefix}_checkout (new)")) && out.contains(&format!("{prefix}_billing (new)")), "{out}");
        // Billing's first migration made the demo plans; the seed finds them.
        assert!(out.contains("stack: demo plans basic-monthly (present), pro-monthly (present)"), "{out}");
        let own = format!("{prefix}_checkout");
        exec(&mut connect(&server.url(&own)).await, "CREATE TABLE left_by_a_run (id int)").await;
        let (out, up) = run_stack(server, &prefix, &[]).await;
        assert!(up && out.contains(&format!("{own} (kept from an earlier run")), "{out}");
        assert!(tables(server, &own).await.contains(&"public.left_by_a_run".to_owned()));
        let (out, up) = run_stack(server, &prefix, &["--fresh"]).await;
        assert!(up && out.contains(&format!("{own} (new)")), "{out}");
        assert!(!tables(server, &own).await.contains(&"public.left_by_a_run".to_owned()), "--fresh starts from empty");
        assert!(tables(server, &own).await.contains(&"public.checkout_sessions".to_owned()), "and migrates again");

        // The deployment's databases are as they were.
        for (db, was) in ["checkout", "billing"].into_iter().zip(before) {
            assert_eq!(tables(server, db).await, was, "{db} changed");
            if made.contains(&db) {
                let mut c = connect(&server.url(db)).await;
                assert_eq!(scalar(&mut c, "SELECT count(*) AS n FROM foreign_rows WHERE note = 'not the stack''s'").await, 100);
            }
        }
        for db in [format!("{prefix}_checkout"), format!("{prefix}_billing")] {
            server.drop_database(&db).await.unwrap();
        }
        for db in made {
            server.drop_database(db).await.unwrap();
        }
    }
}
