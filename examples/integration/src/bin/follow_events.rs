//! Follows billing's event stream and prints each event, resuming where the
//! last run stopped: the cursor is kept in `EVENTS_CURSOR_FILE` (default
//! `target/stack/billing-events.cursor`) after every event. Reads the stack's
//! env file like `integration-example` (BILLING_ADDR, BILLING_TOKEN).
//! Restart billing meanwhile: it goes on from its cursor, nothing lost;
//! a redelivered event is skipped by its version. Ctrl-C stops it.
use std::process::ExitCode;

use integration_example::{Endpoints, Follower};

fn setting(name: &str, file: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty()).or_else(|| {
        file.lines().filter_map(|l| l.split_once('=')).find(|(k, _)| k.trim() == name).map(|(_, v)| v.trim().to_owned())
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let env_path = std::env::var("STACK_ENV").unwrap_or_else(|_| "target/stack/stack.env".into());
    let file = std::fs::read_to_string(env_path).unwrap_or_default();
    let (Some(billing_addr), Some(billing_token)) = (setting("BILLING_ADDR", &file), setting("BILLING_TOKEN", &file)) else {
        eprintln!("BILLING_ADDR and BILLING_TOKEN are not set (run the stack, or export them)");
        return ExitCode::FAILURE;
    };
    let endpoints = Endpoints { checkout_addr: String::new(), billing_addr, checkout_token: String::new(), billing_token };
    let cursor_file = std::env::var("EVENTS_CURSOR_FILE").unwrap_or_else(|_| "target/stack/billing-events.cursor".into());
    let saved = std::fs::read_to_string(&cursor_file).ok().map(|c| c.trim().to_owned()).filter(|c| !c.is_empty());
    println!("following billing's events from {}", saved.as_deref().unwrap_or("now"));
    let mut follower = Follower::new(saved);
    let result = follower
        .follow(&endpoints, |e| {
            println!(
                "{} {} {}#{} user={}",
                e.r#type().as_str_name().trim_start_matches("BILLING_EVENT_TYPE_"),
                e.entity_kind,
                e.entity_id,
                e.entity_version,
                e.user_id
            );
            // Here a consumer applies the event and stores the cursor with it.
            if let Err(err) = std::fs::write(&cursor_file, &e.cursor) {
                eprintln!("cannot save the cursor to {cursor_file}: {err}");
                return false;
            }
            true
        })
        .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(s) => {
            eprintln!("{:?}: {}", s.code(), s.message());
            ExitCode::FAILURE
        }
    }
}
