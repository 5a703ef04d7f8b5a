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
