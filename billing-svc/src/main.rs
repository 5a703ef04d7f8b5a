//! billing-svc binary: a thin CLI over the library.
use std::process::ExitCode;

use billing_svc::{App, Config, catalogue_cli::command::PlansCommand, gateway::Sandbox, jobs::Job, reconcile::AcknowledgedKind};
use clap::{Parser, Subcommand};
use proto::billing::v1::{self as pb, billing_service_client::BillingServiceClient};
use shared::{
    Clock,
    config::{Secret, parse},
};

#[derive(Parser)]
#[command(
    name = "billing-svc",
    version,
    about = "Billing: plans, payments, subscriptions, usage and credits (gRPC)",
    after_help = shared::config::ENV_NOTE
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// The configuration: every variable, with its default and help, is declared there.
    #[command(flatten)]
    env: billing_svc::config::Args,
}

#[derive(Subcommand)]
enum Command {
    /// Serve gRPC (migrates on start; health turns SERVING when the database answers).
    Serve,
    /// Run pending database migrations and exit.
    Migrate,
    /// Find inconsistencies; exit 1 when any is found (for cron alerting).
    Reconcile {
        /// Repair what is safely repairable, with an audit row per repair.
        #[arg(long)]
        fix: bool,
        /// Print the report as one JSON object.
        #[arg(long)]
        json: bool,
        /// checkout-svc's address: also list paid orders checkout does not know (information only).
        #[arg(long = "checkout-endpoint", env = "CHECKOUT_ENDPOINT")]
        checkout_endpoint: Option<String>,
        /// Bearer token for CHECKOUT_ENDPOINT.
        #[arg(long = "checkout-token", env = "CHECKOUT_TOKEN", hide_env_values = true, default_value = "", hide_default_value = true, value_parser = parse::secret)]
        checkout_token: Secret,
    },
    /// Close a finding that `reconcile --fix` never closes (a payment
    /// discrepancy refunded by hand or judged not owed, or a refused webhook
    /// event), with a note; audited.
    Acknowledge {
        /// What kind of finding it is, as `reconcile` prints it.
        #[arg(long, value_enum)]
        kind: AcknowledgedKind,
        /// The finding's subject id, as `reconcile` prints it.
        #[arg(long)]
        subject: String,
        /// Why it is closed (who refunded what, the gateway's refund id...).
        #[arg(long)]
        note: String,
    },
    /// Periodic jobs.
    Jobs {
        #[command(subcommand)]
        command: JobsCommand,
    },
    /// Play the customer's side of the sandbox gateway.
    Sandbox {
        #[command(subcommand)]
        command: SandboxCommand,
    },
    /// The plan catalogue: list, create, reprice, update, archive and
    /// unarchive plans through the running service's PlanCatalogService
    /// (admin token), which checks every change.
    Plans {
        #[command(subcommand)]
        command: PlansCommand,
        /// billing-svc's address.
        #[arg(long = "billing-endpoint", env = "BILLING_ENDPOINT", default_value = "http://127.0.0.1:50052", value_parser = parse::trimmed::<String>)]
        billing_endpoint: String,
        /// Admin token presented to BILLING_ENDPOINT (one of BILLING_ADMIN_TOKENS).
        #[arg(long = "admin-token", env = "ADMIN_TOKEN", hide_env_values = true, default_value = "", hide_default_value = true, value_parser = parse::secret)]
        admin_token: Secret,
    },
}

#[derive(Subcommand)]
enum JobsCommand {
    /// Run one iteration of a job and print what it did.
    RunOnce {
        /// The job to run.
        #[arg(value_enum)]
        job: Job,
    },
}

#[derive(Subcommand)]
enum SandboxCommand {
    /// Pay an order: print a payment id and its signature for VerifyPayment /
    /// CompleteSession; with --webhook also deliver the signed payment.captured
    /// webhook over HTTP to BILLING_HTTP_ADDR, as the gateway would (the
    /// order's amount is read from BILLING_ENDPOINT with BILLING_TOKEN).
    Pay {
        /// The order to pay (CreateSession's or a renewal's order id).
        #[arg(long)]
        order_id: String,
        /// Also deliver the signed payment.captured webhook to BILLING_HTTP_ADDR.
        #[arg(long)]
        webhook: bool,
        /// With --webhook: the payment also saves a card (a customer and
        /// recurring token in the event), so renewals are charged to it.
        #[arg(long, requires = "webhook")]
        save_card: bool,
        /// billing-svc's address, where the order's amount is read (with --webhook).
        #[arg(long = "billing-endpoint", env = "BILLING_ENDPOINT", default_value = "http://127.0.0.1:50052", value_parser = parse::trimmed::<String>)]
        billing_endpoint: String,
        /// Bearer token presented to BILLING_ENDPOINT.
        #[arg(long = "billing-token", env = "BILLING_TOKEN", hide_env_values = true, default_value = "", hide_default_value = true, value_parser = parse::secret)]
        billing_token: Secret,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    shared::service::main("billing-svc", run).await
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = cli.env.into_config();
    if let Command::Sandbox { command: SandboxCommand::Pay { order_id, webhook, save_card, billing_endpoint, billing_token } } =
        cli.command
    {
        return sandbox_pay(&config, &order_id, webhook.then_some(save_card), &billing_endpoint, &billing_token).await;
    }
    if let Command::Plans { command, billing_endpoint, admin_token } = cli.command {
        return plans(command, &billing_endpoint, &admin_token).await;
    }
    // No database, no work: there is no embedded fallback in this binary.
    let url = shared::config::require_database_url(config.database_url.clone(), "BILLING_DATABASE_URL", "billing")?;
    match cli.command {
        Command::Serve => {
            config.check_serving()?;
            let listener = shared::server::bind(&config.listen_addr, "BILLING_LISTEN_ADDR").await?;
            let shutdown = shared::service::shutdown_on_signal();
            let http_listener = shared::server::bind(&config.http_addr, "BILLING_HTTP_ADDR").await?;
            billing_svc::serve(config, url, listener, http_listener, Clock::system(), shutdown).await?;
        }
        Command::Migrate => shared::service::migrate_command("billing-svc", billing_svc::app::migrate(&url)).await?,
        Command::Reconcile { fix, json, checkout_endpoint, checkout_token } => {
            billing_svc::app::migrate(&url).await?;
            let app = App::new(config, &url, Clock::system());
            let report = billing_svc::reconcile::run(&app, app.clock.now(), app.config.stuck_session_after, fix).await?;
            // Informational: paid orders checkout does not know (never fails the run).
            let info = match checkout_endpoint {
                Some(endpoint) => {
                    let token = checkout_token.expose();
                    let since = app.clock.now() - chrono::Duration::days(30);
                    billing_svc::cross_check::paid_orders_unknown_to_checkout(&app.pool, &endpoint, token, since, 5000).await?
                }
                None => Vec::new(),
            };
            if json {
                println!("{}", serde_json::json!({ "findings": report.findings, "fixed": report.fixed, "information": info }));
            } else {
                for f in report.findings.iter().chain(&info) {
                    println!("{:<34} {:<40} {}{}", f.kind, f.subject_id, f.detail, if f.fixed { "  [fixed]" } else { "" });
                }
                match report.findings.len() {
                    0 => println!("reconcile: no inconsistencies found"),
                    n => println!("reconcile: {n} finding(s), {} fixed", report.fixed),
                }
                if !info.is_empty() {
                    println!("reconcile: {} paid order(s) unknown to checkout (information)", info.len());
                }
            }
            let unfixed = report.findings.iter().any(|f| !f.fixed);
            return Ok(if unfixed { ExitCode::FAILURE } else { ExitCode::SUCCESS });
        }
        Command::Acknowledge { kind, subject, note } => {
            let kind = kind.finding_kind().as_str();
            billing_svc::app::migrate(&url).await?;
            let app = App::new(config, &url, Clock::system());
            let mut conn = app.conn().await?;
            match billing_svc::reconcile::acknowledge(&mut conn, kind, &subject, &note, app.clock.now()).await {
                Ok(true) => println!("acknowledged {kind} {subject}"),
                Ok(false) => println!("{kind} {subject} was already closed; nothing changed"),
                Err(e) => anyhow::bail!("{e}"),
            }
        }
        Command::Jobs { command: JobsCommand::RunOnce { job } } => {
            let app = App::new(config, &url, Clock::system());
            println!("{}", billing_svc::jobs::run_once(&app, job.name()).await?);
        }
        Command::Sandbox { .. } | Command::Plans { .. } => {}
    }
    Ok(ExitCode::SUCCESS)
}

/// `billing-svc plans ...` against the running service.
async fn plans(command: PlansCommand, endpoint: &str, token: &Secret) -> anyhow::Result<ExitCode> {
    if token.is_empty() {
        anyhow::bail!(
            "ADMIN_TOKEN (--admin-token) must be set: the catalogue takes an admin token (the stack's is in target/stack/stack.env)"
        );
    }
    let catalog = billing_svc::catalogue_cli::Catalog::new(endpoint, token.expose())?;
    billing_svc::catalogue_cli::command::run(command, &catalog, endpoint, &mut std::io::stdout().lock()).await?;
    Ok(ExitCode::SUCCESS)
}

/// `webhook`: None prints the payment only; Some(save_card) also delivers it.
async fn sandbox_pay(
    config: &Config,
    order_id: &str,
    webhook: Option<bool>,
    endpoint: &str,
    token: &Secret,
) -> anyhow::Result<ExitCode> {
    if config.gateway.kind != billing_svc::config::GatewayKind::Sandbox {
        anyhow::bail!(
            "sandbox pay plays the sandbox gateway's customer; GATEWAY must be sandbox (pay real orders at the gateway)"
        );
    }
    if config.gateway.key_secret.is_empty() {
        anyhow::bail!("GATEWAY_KEY_SECRET must be set (the stack prints it in target/stack/stack.env)");
    }
    let sandbox = Sandbox::new(config.gateway.clone());
    let payment_id = Sandbox::new_payment_id();
    let signature = sandbox.sign_payment(order_id, &payment_id);
    println!("order_id={order_id}\npayment_id={payment_id}\nsignature={signature}");
    let Some(save_card) = webhook else { return Ok(ExitCode::SUCCESS) };
    let token = token.expose();
    let mut client = BillingServiceClient::connect(endpoint.to_owned())
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach billing at {endpoint} (BILLING_ENDPOINT): {e}"))?;
    let budget = shared::client::Budget::new(std::time::Duration::from_secs(10));
    let found = client
        .batch_get_orders(budget.request(
            pb::BatchGetOrdersRequest {
                order_ids: vec![order_id.to_owned()],
                checkout_session_ids: vec![],
                ..Default::default()
            },
            token,
        ))
        .await?
        .into_inner();
    let order = found.orders.first().ok_or_else(|| anyhow::anyhow!("order {order_id} not found at billing"))?;
    let card = save_card.then(|| ("cust_sandbox".to_owned(), format!("token_{}", uuid::Uuid::new_v4().simple())));
    let saved = card.as_ref().map(|(c, t)| (c.as_str(), t.as_str()));
    let body = Sandbox::captured_event_body_saving(order_id, &payment_id, order.amount_minor, &order.currency, saved);
    // Delivered the way the gateway delivers it: a signed HTTP POST.
    // BILLING_HTTP_ADDR, its default 0.0.0.0:8080 reached at 127.0.0.1:8080.
    let url = format!("http://{}/webhooks/razorpay", config.http_addr.replace("0.0.0.0", "127.0.0.1"));
    let resp = reqwest::Client::new()
        .post(&url)
        .timeout(std::time::Duration::from_secs(10))
        .header(billing_svc::http::SIGNATURE_HEADER, sandbox.sign_webhook(&body))
        .header(billing_svc::http::EVENT_ID_HEADER, format!("evt_{}", uuid::Uuid::new_v4().simple()))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach billing's webhook endpoint {url} (BILLING_HTTP_ADDR): {e}"))?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    println!("webhook: HTTP {status} {text}");
    if !status.is_success() {
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
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
        let problems = shared::config::check_env_table(&readme, "billing", &Cli::command());
        assert!(problems.is_empty(), "docs/configuration.md disagrees with billing-svc:\n{}", problems.join("\n"));
    }

    #[test]
    fn readme_commands_match_the_declared_commands_and_help_is_complete() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap_or_default();
        let mut problems = shared::config::check_commands_section(&readme, "billing-svc", &Cli::command());
        problems.extend(shared::config::check_help_complete(&Cli::command()));
        assert!(problems.is_empty(), "billing-svc's commands and help:\n{}", problems.join("\n"));
    }
}
