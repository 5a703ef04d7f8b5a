//! `cargo run --release --bin stack`: PostgreSQL (found or started), the
//! stack's own two databases migrated, both services with their jobs, the
//! demo plans (`examples/plans/demo.json`) made sure of through billing's
//! plan catalogue like any operator's plans (docs/design.md, "Catalogue"),
//! ready-to-paste grpcurl lines, and `target/stack/stack.env` for scripts.
//! Ctrl-C or SIGTERM stops everything.
//!
//! The databases are the stack's own (docs/design.md, "Development
//! PostgreSQL"): named `<prefix>_checkout` and `<prefix>_billing`, which no
//! deployment uses, and marked with a comment when the stack creates them.
//! A database of that name without the mark is someone else's: the stack
//! refuses to start rather than migrate, serve or reconcile it. `--fresh`
//! drops the stack's own databases (never one without the mark) first.
use std::{path::Path, process::ExitCode, time::Duration};

use clap::Parser;
use shared::{
    Clock,
    config::{ENV_ONLY_HEADING, Secret, parse},
    server::Shutdown,
};
use test_support::pg::PgServer;

/// Everything is configured through the environment (each variable can also
/// be given as the option shown in `--help`); the services' own variables
/// are those of `checkout-svc --help` and `billing-svc --help`.
#[derive(Parser)]
#[command(
    name = "stack",
    version,
    about = "PostgreSQL (found or started) + billing-svc + checkout-svc with demo plans, for local use",
    after_help = "Also every variable of `checkout-svc --help` and `billing-svc --help`. Writes \
                  target/stack/stack.env with the addresses and tokens. Ctrl-C or SIGTERM stops everything."
)]
struct Cli {
    #[command(flatten)]
    settings: Settings,
    /// PostgreSQL server to use [default: 127.0.0.1:5432, else a private cluster under target/pg].
    #[arg(long = "database-url", env = "DATABASE_URL", hide_env_values = true, help_heading = ENV_ONLY_HEADING)]
    _database_url: Option<String>,
    #[command(flatten)]
    _telemetry: shared::config::TelemetryArgs,
}

#[derive(clap::Args)]
#[command(next_help_heading = "stack (environment)")]
struct Settings {
    /// checkout's gRPC address.
    #[arg(long = "checkout-listen-addr", env = "CHECKOUT_LISTEN_ADDR", default_value = "127.0.0.1:15051", value_parser = parse::trimmed::<String>)]
    checkout_listen: String,
    /// billing's gRPC address.
    #[arg(long = "billing-listen-addr", env = "BILLING_LISTEN_ADDR", default_value = "127.0.0.1:15052", value_parser = parse::trimmed::<String>)]
    billing_listen: String,
    /// billing's webhook endpoint (HTTP).
    #[arg(long = "billing-http-addr", env = "BILLING_HTTP_ADDR", default_value = "127.0.0.1:15053", value_parser = parse::trimmed::<String>)]
    billing_http: String,
    /// Caller token of checkout.
    #[arg(long = "checkout-token", env = "CHECKOUT_TOKEN", hide_env_values = true, default_value = "dev-checkout-token", value_parser = parse::trimmed_secret)]
    checkout_token: Secret,
    /// Caller token of billing, also used by checkout.
    #[arg(long = "billing-token", env = "BILLING_TOKEN", hide_env_values = true, default_value = "dev-billing-token", value_parser = parse::trimmed_secret)]
    billing_token: Secret,
    /// Admin token of both services.
    #[arg(long = "admin-token", env = "ADMIN_TOKEN", hide_env_values = true, default_value = "dev-admin-token", value_parser = parse::trimmed_secret)]
    admin_token: Secret,
    /// Sandbox payment signature key.
    #[arg(long = "gateway-key-secret", env = "GATEWAY_KEY_SECRET", hide_env_values = true, default_value = "dev-gateway-key-secret", value_parser = parse::trimmed_secret)]
    key_secret: Secret,
    /// Sandbox webhook signature key.
    #[arg(long = "gateway-webhook-secret", env = "GATEWAY_WEBHOOK_SECRET", hide_env_values = true, default_value = "dev-gateway-webhook-secret", value_parser = parse::trimmed_secret)]
    webhook_secret: Secret,
    /// Prefix of the stack's own databases: `<prefix>_checkout` and `<prefix>_billing`.
    #[arg(long = "db-prefix", env = "STACK_DB_PREFIX", default_value = "payments_stack", value_parser = parse_prefix)]
    db_prefix: String,
    /// Drop the stack's own databases (only those it created) and start from empty.
    #[arg(long = "fresh", env = "STACK_FRESH")]
    fresh: bool,
    /// Use the private cluster under target/pg even when a server answers on 127.0.0.1:5432.
    #[arg(long = "private-pg", env = "STACK_PRIVATE_PG")]
    private_pg: bool,
    /// Where to write the addresses, tokens and database URLs for scripts.
    #[arg(long = "env-file", env = "STACK_ENV_FILE", default_value = "target/stack/stack.env", value_parser = parse::trimmed::<String>)]
    env_file: String,
}

/// What marks a database as the stack's own (its `COMMENT ON DATABASE`).
const OWN_DATABASE: &str = "created by the payments stack for local use; `stack --fresh` drops it";

fn parse_prefix(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 40
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok { Ok(s.to_owned()) } else { Err("1-40 of a-z, 0-9 and _, starting with a letter".to_owned()) }
}

/// The stack's own databases `names` on `server`: created (and marked) when
/// missing, dropped and created again with `fresh`. Refused, before any is
/// created or dropped, when one exists without the mark. Whether each is new.
async fn own_databases(server: &PgServer, names: &[&str], fresh: bool) -> anyhow::Result<Vec<bool>> {
    let mut exists = Vec::new();
    for name in names {
        match server.database_comment(name).await? {
            Some(Some(mark)) if mark == OWN_DATABASE => exists.push(true),
            Some(_) => anyhow::bail!(
                "database {name} on {} exists and was not created by stack; stack uses only databases it created. \
                 Set STACK_DB_PREFIX (--db-prefix) to another prefix, or use the private cluster (--private-pg)",
                server.address()
            ),
            None => exists.push(false),
        }
    }
    let mut new = Vec::new();
    for (name, exists) in names.iter().zip(exists) {
        if exists && !fresh {
            new.push(false);
            continue;
        }
        if exists {
            server.drop_database(name).await?;
        }
        // Created by someone else since the check: theirs, not ours.
        if !server.ensure_database(name, None).await? {
            anyhow::bail!("database {name} on {} appeared while stack was creating it; not touching it", server.address());
        }
        server.set_database_comment(name, OWN_DATABASE).await?;
        new.push(true);
    }
    Ok(new)
}

#[tokio::main]
async fn main() -> ExitCode {
    // A bad value is one line naming its variable, before a port is bound.
    shared::service::main("stack", |cli: Cli| run(cli.settings)).await
}

async fn run(s: Settings) -> anyhow::Result<ExitCode> {
    let scratch = Path::new("target/pg");
    let server = if s.private_pg { PgServer::private(scratch).await? } else { PgServer::resolve(scratch).await? };
    let (checkout_name, billing_name) = (format!("{}_checkout", s.db_prefix), format!("{}_billing", s.db_prefix));
    let names = [checkout_name.as_str(), billing_name.as_str()];
    let new = own_databases(&server, &names, s.fresh).await?;
    let said: Vec<String> = names
        .iter()
        .zip(new)
        .map(|(name, new)| {
            format!("{name} ({})", if new { "new" } else { "kept from an earlier run; --fresh starts from empty" })
        })
        .collect();
    let found = if server.is_private() { "private cluster under target/pg" } else { "found" };
    println!("stack: PostgreSQL at {} ({found}); databases {}", server.address(), said.join(", "));
    let checkout_db = server.url(&checkout_name);
    let billing_db = server.url(&billing_name);
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
    seed_demo_plans(&format!("http://{billing_addr}"), s.admin_token.expose()).await?;

    let env = format!(
        "CHECKOUT_ADDR={checkout_addr}\nBILLING_ADDR={billing_addr}\nCHECKOUT_TOKEN={}\nADMIN_TOKEN={}\nBILLING_TOKEN={}\n\
         BILLING_HTTP_ADDR={billing_http_addr}\n\
         CHECKOUT_DATABASE_URL={checkout_db}\nBILLING_DATABASE_URL={billing_db}\nBILLING_ENDPOINT=http://{billing_addr}\n\
         GATEWAY_KEY_SECRET={}\nGATEWAY_WEBHOOK_SECRET={}\nSTACK_PROCESS_ID={}\n",
        s.checkout_token.expose(),
        s.admin_token.expose(),
        s.billing_token.expose(),
        s.key_secret.expose(),
        s.webhook_secret.expose(),
        std::process::id()
    );
    if let Some(dir) = Path::new(&s.env_file).parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&s.env_file, &env)?;
    // Listening for SIGTERM before the banner says the stack is up.
    let stop = shared::server::termination_signal();
    print_banner(&s, &checkout_addr.to_string(), &billing_addr.to_string(), &billing_http_addr.to_string(), server.is_private());

    stop.await;
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
    Ok(ExitCode::SUCCESS)
}

/// The demo plans through the catalogue (CreatePlan with each plan's
/// request_id, so a re-run is a replay): those absent are created, those
/// present (from an earlier run, or from billing's first migration, which
/// created `basic-monthly` and `pro-monthly` before the catalogue existed)
/// are left as they are.
async fn seed_demo_plans(billing: &str, admin_token: &str) -> anyhow::Result<()> {
    use billing_svc::catalogue_cli::{Catalog, DEMO_PLANS, Ensured, plans_from_json};
    let catalog = Catalog::new(billing, admin_token)?;
    let seeded =
        catalog.ensure(&plans_from_json(DEMO_PLANS)?).await.map_err(|e| anyhow::anyhow!("seeding the demo plans: {e}"))?;
    let said: Vec<String> =
        seeded.iter().map(|(id, e)| format!("{id} ({})", if *e == Ensured::Created { "created" } else { "present" })).collect();
    println!("stack: demo plans {}", said.join(", "));
    Ok(())
}

fn print_banner(s: &Settings, checkout: &str, billing: &str, webhooks: &str, private_pg: bool) {
    let env_file = &s.env_file;
    let c = s.checkout_token.expose();
    let b = s.billing_token.expose();
    let a = s.admin_token.expose();
    println!(
        r#"
payments stack is up{pg}
  checkout-svc  {checkout}   token: {c}
  billing-svc   {billing}   token: {b}
  webhooks      http://{webhooks}/webhooks/razorpay   (GET /healthz)
  admin token   {a}
  env file      {env_file}   (set -a; . {env_file}; set +a)

Try it (grpcurl 1.8+, reflection is on):
  grpcurl -plaintext {checkout} list
  grpcurl -plaintext -d '{{"service":"checkout.v1.CheckoutService"}}' {checkout} grpc.health.v1.Health/Check
  grpcurl -plaintext -H 'authorization: Bearer {b}' {billing} billing.v1.BillingService/ListPlans
  # request_id: a fresh UUID per new start (uuidgen), the same on a retry of it
  grpcurl -plaintext -H 'authorization: Bearer {c}' \
      -d '{{"user_id":"alice","plan_id":"pro-monthly","request_id":"6f1c2a4e-8d2b-4c1e-9a57-0b9e3d7c5a10"}}' \
      {checkout} checkout.v1.CheckoutService/CreateSession
  # pay the order_id printed above, then complete with the printed payment_id and signature:
  set -a; . {env_file}; set +a; cargo run --release -q --bin billing-svc -- sandbox pay --order-id <order_id>
  grpcurl -plaintext -H 'authorization: Bearer {c}' -d '{{"id":"<session id>","payment_id":"<payment_id>","signature":"<signature>"}}' \
      {checkout} checkout.v1.CheckoutService/CompleteSession
  grpcurl -plaintext -H 'authorization: Bearer {b}' \
      -d '{{"user_id":"alice","kind":"USAGE_KIND_CALL","request_id":"0c7e9b52-3f4a-4d8e-b1a6-5e2f7c9d8a34"}}' \
      {billing} billing.v1.BillingService/StartUsageSession

What happened, as it happens (README.md, "Events"; Ctrl-C to stop):
  grpcurl -plaintext -H 'authorization: Bearer {b}' -d '{{}}' {billing} billing.v1.BillingEventService/WatchEvents
  grpcurl -plaintext -H 'authorization: Bearer {c}' -d '{{"page_size":10}}' {checkout} checkout.v1.CheckoutEventService/ListEvents

The gateway's side: a customer who pays and never comes back (the webhook arrives over HTTP,
checkout's completion sync completes the session):
  set -a; . {env_file}; set +a; cargo run --release -q --bin billing-svc -- sandbox pay --order-id <order_id> --webhook
  # or post a signed webhook yourself (new payment and event ids per order):
  pay="pay_$(openssl rand -hex 7)"; evt="evt_$(openssl rand -hex 7)"
  body='{{"event":"payment.captured","payload":{{"payment":{{"entity":{{"id":"'"$pay"'","order_id":"<order_id>","amount":149900,"currency":"INR"}}}}}}}}'
  curl -sS -X POST http://{webhooks}/webhooks/razorpay -H "X-Razorpay-Event-Id: $evt" \
      -H "X-Razorpay-Signature: $(printf %s "$body" | openssl dgst -sha256 -hmac "$GATEWAY_WEBHOOK_SECRET" | sed 's/^.* //')" \
      --data-binary "$body"

The plan catalogue (README.md, "Plans"; admin token):
  set -a; . {env_file}; set +a; cargo run --release -q --bin billing-svc -- plans list
  cargo run --release -q --bin billing-svc -- plans create --file examples/plans/team.json
  cargo run --release -q --bin billing-svc -- plans reprice team-monthly --price 349900
  grpcurl -plaintext -H 'authorization: Bearer {a}' -d '{{"plan_id":"team-monthly"}}' {billing} billing.v1.PlanCatalogService/GetPlan

Renewals, cancellation and refunds (README.md, "Subscription lifecycle"):
  cargo run --release -q --bin billing-svc -- jobs run-once renewals      # renewal orders due within RENEWAL_LEAD_HOURS
  grpcurl -plaintext -H 'authorization: Bearer {b}' -d '{{"user_id":"alice"}}' {billing} billing.v1.BillingService/ListOrders
  grpcurl -plaintext -H 'authorization: Bearer {a}' -d '{{"order_id":"<order_id>","refund_all":true,"reason":"demo","refund_id":"demo-1"}}' \
      {billing} billing.v1.BillingService/RefundPayment

Ctrl-C stops everything."#,
        pg = if private_pg { " (private PostgreSQL under target/pg)" } else { "" },
    );
}

#[cfg(test)]
mod config_tests {
    use clap::CommandFactory;

    use super::Cli;

    #[test]
    fn cli_declarations_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn readme_configuration_table_matches_the_declared_variables() {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/configuration.md")).unwrap_or_default();
        let problems = shared::config::check_env_table(&readme, "stack", &Cli::command());
        assert!(problems.is_empty(), "docs/configuration.md disagrees with stack:\n{}", problems.join("\n"));
    }

    #[test]
    fn readme_commands_match_the_declared_commands_and_help_is_complete() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap_or_default();
        let mut problems = shared::config::check_commands_section(&readme, "stack", &Cli::command());
        problems.extend(shared::config::check_help_complete(&Cli::command()));
        assert!(problems.is_empty(), "stack's commands and help:\n{}", problems.join("\n"));
    }
}
