//! `cargo run --release --bin stack`: PostgreSQL (found or started), both
//! databases migrated (demo plans are seeded by billing's migrations), both
//! services with their jobs, ready-to-paste grpcurl lines, and
//! `target/stack/stack.env` for scripts. Ctrl-C or SIGTERM stops everything.
use std::{path::Path, process::ExitCode, time::Duration};

use clap::Parser;
use shared::{Clock, config::env_or, pg::PgServer, server::Shutdown};

/// Everything is configured through the environment, so `--help` (and
/// `--version`) are the only arguments; anything else is refused before a
/// port is bound.
#[derive(Parser)]
#[command(
    name = "stack",
    version,
    about = "PostgreSQL (found or started) + billing-svc + checkout-svc with demo plans, for local use",
    after_help = ENV_HELP
)]
struct Cli {}

const ENV_HELP: &str = "\
Environment:
  CHECKOUT_LISTEN_ADDR    checkout's address (default 127.0.0.1:50051)
  BILLING_LISTEN_ADDR     billing's address (default 127.0.0.1:50052)
  BILLING_HTTP_ADDR       billing's webhook endpoint, HTTP (default 127.0.0.1:50053)
  CHECKOUT_TOKEN          caller token of checkout (default dev-checkout-token)
  BILLING_TOKEN           caller token of billing, also used by checkout (default dev-billing-token)
  ADMIN_TOKEN             admin token of both (default dev-admin-token)
  GATEWAY_KEY_SECRET      sandbox payment signature key (default dev-gateway-key-secret)
  GATEWAY_WEBHOOK_SECRET  sandbox webhook signature key (default dev-gateway-webhook-secret)
  DATABASE_URL            PostgreSQL server to use (default: 127.0.0.1:5432, else a private cluster under target/pg)
  and every variable of `checkout-svc --help` and `billing-svc --help`.

Writes target/stack/stack.env with the addresses and tokens. Ctrl-C or SIGTERM stops everything.";

struct Settings {
    checkout_listen: String,
    billing_listen: String,
    billing_http: String,
    checkout_token: String,
    billing_token: String,
    admin_token: String,
    key_secret: String,
    webhook_secret: String,
}

fn settings() -> anyhow::Result<Settings> {
    Ok(Settings {
        checkout_listen: env_or("CHECKOUT_LISTEN_ADDR", "127.0.0.1:50051".to_owned())?,
        billing_listen: env_or("BILLING_LISTEN_ADDR", "127.0.0.1:50052".to_owned())?,
        billing_http: env_or("BILLING_HTTP_ADDR", "127.0.0.1:50053".to_owned())?,
        checkout_token: env_or("CHECKOUT_TOKEN", "dev-checkout-token".to_owned())?,
        billing_token: env_or("BILLING_TOKEN", "dev-billing-token".to_owned())?,
        admin_token: env_or("ADMIN_TOKEN", "dev-admin-token".to_owned())?,
        key_secret: env_or("GATEWAY_KEY_SECRET", "dev-gateway-key-secret".to_owned())?,
        webhook_secret: env_or("GATEWAY_WEBHOOK_SECRET", "dev-gateway-webhook-secret".to_owned())?,
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let Cli {} = Cli::parse();
    let _telemetry = shared::telemetry::init("stack").ok();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stack: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let s = settings()?;
    let server = PgServer::resolve(Path::new("target/pg")).await?;
    for db in ["checkout", "billing"] {
        server.ensure_database(db, None).await?;
    }
    let checkout_db = server.url("checkout");
    let billing_db = server.url("billing");
    billing_svc::app::migrate(&billing_db).await?;
    checkout_svc::app::migrate(&checkout_db).await?;

    let billing_listener = shared::server::bind(&s.billing_listen, "BILLING_LISTEN_ADDR").await?;
    let checkout_listener = shared::server::bind(&s.checkout_listen, "CHECKOUT_LISTEN_ADDR").await?;
    let billing_http_listener = shared::server::bind(&s.billing_http, "BILLING_HTTP_ADDR").await?;
    let billing_addr = billing_listener.local_addr()?;
    let billing_http_addr = billing_http_listener.local_addr()?;
    let checkout_addr = checkout_listener.local_addr()?;

    let mut bcfg = billing_svc::Config::from_env()?;
    bcfg.auth_tokens = vec![s.billing_token.clone()];
    bcfg.admin_tokens = vec![s.admin_token.clone()];
    bcfg.gateway.key_secret = s.key_secret.clone();
    bcfg.gateway.webhook_secret = s.webhook_secret.clone();
    let mut ccfg = checkout_svc::Config::from_env()?;
    ccfg.auth_tokens = vec![s.checkout_token.clone()];
    ccfg.admin_tokens = vec![s.admin_token.clone()];
    ccfg.billing_endpoint = format!("http://{billing_addr}");
    ccfg.billing_token = s.billing_token.clone();

    let shutdown = Shutdown::new();
    let billing = tokio::spawn(billing_svc::serve(
        bcfg,
        billing_db.clone(),
        billing_listener,
        billing_http_listener,
        Clock::system(),
        shutdown.clone(),
    ));
    let checkout =
        tokio::spawn(checkout_svc::serve(ccfg, checkout_db.clone(), checkout_listener, Clock::system(), shutdown.clone()));
    tests::harness::wait_serving(&billing_addr.to_string(), proto::BILLING_SERVICE_NAME).await?;
    tests::harness::wait_serving(&checkout_addr.to_string(), proto::CHECKOUT_SERVICE_NAME).await?;

    let env = format!(
        "CHECKOUT_ADDR={checkout_addr}\nBILLING_ADDR={billing_addr}\nCHECKOUT_TOKEN={}\nADMIN_TOKEN={}\nBILLING_TOKEN={}\n\
         BILLING_HTTP_ADDR={billing_http_addr}\n\
         CHECKOUT_DATABASE_URL={checkout_db}\nBILLING_DATABASE_URL={billing_db}\nBILLING_ENDPOINT=http://{billing_addr}\n\
         GATEWAY_KEY_SECRET={}\nGATEWAY_WEBHOOK_SECRET={}\n",
        s.checkout_token, s.admin_token, s.billing_token, s.key_secret, s.webhook_secret
    );
    std::fs::create_dir_all("target/stack")?;
    std::fs::write("target/stack/stack.env", &env)?;
    print_banner(&s, &checkout_addr.to_string(), &billing_addr.to_string(), &billing_http_addr.to_string(), server.is_private());

    shared::server::termination_signal().await;
    println!("\nstack: stopping (draining in-flight requests)...");
    shutdown.trigger();
    for task in [billing, checkout] {
        match tokio::time::timeout(Duration::from_secs(30), task).await {
            Ok(Ok(Err(e))) => eprintln!("stack: service stopped with an error: {e:#}"),
            Err(_) => eprintln!("stack: a service did not stop within 30 s"),
            _ => {}
        }
    }
    drop(server); // stops a private cluster, if we started one
    println!("stack: stopped");
    Ok(())
}

fn print_banner(s: &Settings, checkout: &str, billing: &str, webhooks: &str, private_pg: bool) {
    let c = &s.checkout_token;
    let b = &s.billing_token;
    let a = &s.admin_token;
    println!(
        r#"
payments stack is up{pg}
  checkout-svc  {checkout}   token: {c}
  billing-svc   {billing}   token: {b}
  webhooks      http://{webhooks}/webhooks/razorpay   (GET /healthz)
  admin token   {a}
  env file      target/stack/stack.env   (set -a; . target/stack/stack.env; set +a)

Try it (grpcurl 1.8+, reflection is on):
  grpcurl -plaintext {checkout} list
  grpcurl -plaintext -d '{{"service":"checkout.v1.CheckoutService"}}' {checkout} grpc.health.v1.Health/Check
  grpcurl -plaintext -H 'authorization: Bearer {b}' {billing} billing.v1.BillingService/ListPlans
  grpcurl -plaintext -H 'authorization: Bearer {c}' -d '{{"user_id":"alice","plan_id":"pro-monthly"}}' \
      {checkout} checkout.v1.CheckoutService/CreateSession
  # pay the order_id printed above, then complete with the printed payment_id and signature:
  set -a; . target/stack/stack.env; set +a; cargo run -q --bin billing-svc -- sandbox pay --order-id <order_id>
  grpcurl -plaintext -H 'authorization: Bearer {c}' -d '{{"id":"<session id>","payment_id":"<payment_id>","signature":"<signature>"}}' \
      {checkout} checkout.v1.CheckoutService/CompleteSession
  grpcurl -plaintext -H 'authorization: Bearer {b}' -d '{{"user_id":"alice","kind":"USAGE_KIND_CALL"}}' \
      {billing} billing.v1.BillingService/StartUsageSession

The gateway's side: a customer who pays and never comes back (the webhook arrives over HTTP,
checkout's completion sync completes the session):
  set -a; . target/stack/stack.env; set +a; cargo run -q --bin billing-svc -- sandbox pay --order-id <order_id> --webhook
  # or post a signed webhook yourself:
  body='{{"event":"payment.captured","payload":{{"payment":{{"entity":{{"id":"pay_demo1","order_id":"<order_id>","amount":149900,"currency":"INR"}}}}}}}}'
  curl -sS -X POST http://{webhooks}/webhooks/razorpay -H 'X-Razorpay-Event-Id: evt_demo1' \
      -H "X-Razorpay-Signature: $(printf %s "$body" | openssl dgst -sha256 -hmac "$GATEWAY_WEBHOOK_SECRET" | sed 's/^.* //')" \
      --data-binary "$body"

Ctrl-C stops everything."#,
        pg = if private_pg { " (private PostgreSQL under target/pg)" } else { "" },
    );
}
