//! Runs the purchase flow of `integration_example` against a running
//! `stack` (`cargo run --release --bin stack`), paying through the sandbox
//! gateway the way its widget would: reads `target/stack/stack.env` (or
//! `STACK_ENV`), environment variables override it: CHECKOUT_ADDR,
//! BILLING_ADDR, CHECKOUT_TOKEN, BILLING_TOKEN, and GATEWAY_KEY_SECRET (the
//! sandbox signs payments with it; a real gateway signs them itself).
//! Optional: USER_ID (default: a new one per run), PLAN_ID (pro-monthly).
use std::{collections::HashMap, process::ExitCode};

use hmac::{Hmac, KeyInit, Mac};
use integration_example::{Endpoints, Paid, purchase};
use sha2::Sha256;
use tonic::Status;
use uuid::Uuid;

/// `KEY=VALUE` lines of the stack's env file, when it is there.
fn stack_env() -> HashMap<String, String> {
    let path = std::env::var("STACK_ENV").unwrap_or_else(|_| "target/stack/stack.env".into());
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

fn setting(file: &HashMap<String, String>, name: &str) -> Result<String, String> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .or_else(|| file.get(name).cloned())
        .ok_or_else(|| format!("{name} is not set (run the stack, or export it)"))
}

/// What the sandbox gateway hands the customer after paying `order_id`:
/// a new payment id and the hex HMAC-SHA256 of "order_id|payment_id".
fn sandbox_pay(key_secret: &str, order_id: &str) -> Result<Paid, Status> {
    let payment_id = format!("pay_{}", &Uuid::new_v4().simple().to_string()[..14]);
    let mut mac = Hmac::<Sha256>::new_from_slice(key_secret.as_bytes()).map_err(|e| Status::internal(e.to_string()))?;
    mac.update(format!("{order_id}|{payment_id}").as_bytes());
    Ok(Paid { payment_id, signature: hex::encode(mac.finalize().into_bytes()) })
}

async fn run() -> Result<(), String> {
    let file = stack_env();
    let endpoints = Endpoints {
        checkout_addr: setting(&file, "CHECKOUT_ADDR")?,
        billing_addr: setting(&file, "BILLING_ADDR")?,
        checkout_token: setting(&file, "CHECKOUT_TOKEN")?,
        billing_token: setting(&file, "BILLING_TOKEN")?,
    };
    let key_secret = setting(&file, "GATEWAY_KEY_SECRET")?;
    let user = std::env::var("USER_ID").unwrap_or_else(|_| format!("example-{}", &Uuid::new_v4().simple().to_string()[..8]));
    let plan = std::env::var("PLAN_ID").unwrap_or_else(|_| "pro-monthly".into());
    let bought = purchase(&endpoints, &user, &plan, |widget| {
        println!(
            "widget:       gateway={} key_id={} order_id={} amount_minor={} currency={}",
            widget.gateway, widget.key_id, widget.gateway_order_id, widget.amount_minor, widget.currency
        );
        if widget.gateway != "sandbox" {
            return Err(Status::failed_precondition("billing does not run the sandbox gateway: pay in its widget instead"));
        }
        sandbox_pay(&key_secret, &widget.gateway_order_id)
    })
    .await
    .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
    println!("session:      {} (COMPLETED, user {user}, plan {plan})", bought.session_id);
    println!("order:        {}", bought.order_id);
    println!(
        "subscription: {} status={} credits {}/{}",
        bought.subscription_id,
        bought.subscription.status().as_str_name(),
        bought.subscription.credits_remaining,
        bought.subscription.credits_granted
    );
    println!("usage:        session {} charged {} unit(s)", bought.usage_session_id, bought.units_charged);
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("integration-example: {e}");
            ExitCode::FAILURE
        }
    }
}
