//! checkout-svc binary: a thin CLI over the library.
use std::process::ExitCode;

use checkout_svc::{App, jobs::Job};
use clap::{Parser, Subcommand};
use shared::Clock;

#[derive(Parser)]
#[command(
    name = "checkout-svc",
    version,
    about = "Checkout sessions (gRPC); calls billing-svc",
    after_help = shared::config::ENV_NOTE
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// The configuration: every variable, with its default and help, is declared there.
    #[command(flatten)]
    env: checkout_svc::config::Args,
}

#[derive(Subcommand)]
enum Command {
    /// Serve gRPC (migrates on start; health turns SERVING when the database answers).
    Serve,
    /// Run pending database migrations and exit.
    Migrate,
    /// Expire ACTIVE sessions past 24 h and delete unpaid ones older than 7 days
    /// (asks billing first; a paid session is completed instead).
    Cleanup {
        /// Only count what would change.
        #[arg(long)]
        dry_run: bool,
    },
    /// Periodic jobs.
    Jobs {
        #[command(subcommand)]
        command: JobsCommand,
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

#[tokio::main]
async fn main() -> ExitCode {
    shared::service::main("checkout-svc", run).await
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = cli.env.into_config();
    // No database, no work: there is no embedded fallback in this binary.
    let url = shared::config::require_database_url(config.database_url.clone(), "CHECKOUT_DATABASE_URL", "checkout")?;
    match cli.command {
        Command::Serve => {
            config.check_serving()?;
            let listener = shared::server::bind(&config.listen_addr, "CHECKOUT_LISTEN_ADDR").await?;
            let shutdown = shared::service::shutdown_on_signal();
            checkout_svc::serve(config, url, listener, Clock::system(), shutdown).await?;
        }
        Command::Migrate => shared::service::migrate_command("checkout-svc", checkout_svc::app::migrate(&url)).await?,
        Command::Cleanup { dry_run } => {
            checkout_svc::app::migrate(&url).await?;
            let app = App::new(config, &url, Clock::system())?;
            let c = checkout_svc::sessions::cleanup(&app, dry_run).await?;
            println!(
                "cleanup{}: expired {} deleted {} completed_by_sync {} skipped_billing_unavailable {}",
                if dry_run { " (dry run)" } else { "" },
                c.expired,
                c.deleted,
                c.completed_by_sync,
                c.skipped_billing_unavailable
            );
        }
        Command::Jobs { command: JobsCommand::RunOnce { job } } => {
            let app = App::new(config, &url, Clock::system())?;
            println!("{}", checkout_svc::jobs::run_once(&app, job.name()).await?);
        }
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
        let problems = shared::config::check_env_table(&readme, "checkout", &Cli::command());
        assert!(problems.is_empty(), "docs/configuration.md disagrees with checkout-svc:\n{}", problems.join("\n"));
    }

    #[test]
    fn readme_commands_match_the_declared_commands_and_help_is_complete() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap_or_default();
        let mut problems = shared::config::check_commands_section(&readme, "checkout-svc", &Cli::command());
        problems.extend(shared::config::check_help_complete(&Cli::command()));
        assert!(problems.is_empty(), "checkout-svc's commands and help:\n{}", problems.join("\n"));
    }
}
