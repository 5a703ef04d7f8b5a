//! `cargo run --release --bin loadgen -- --scenario <name> --concurrency N --duration S [--json]`
//!
//! Drives a running stack (see `target/stack/stack.env`) over real gRPC.
use std::time::Duration;

use clap::{Parser, ValueEnum};
use tests::loadgen::{
    self,
    scenarios::{self, Target, Timing},
};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Scenario {
    CreateSession,
    VerifyPayment,
    Deduct,
    DeductHot,
    /// Signed payment.captured webhooks over HTTP, one per fresh order.
    Webhook,
}

#[derive(Parser)]
#[command(name = "loadgen", about = "Benchmark a running stack over gRPC (start it with: cargo run --release --bin stack)")]
struct Args {
    #[arg(long, value_enum)]
    scenario: Scenario,
    /// Concurrent workers (each with its own HTTP/2 connection).
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 15)]
    duration: u64,
    /// Warm-up seconds before measuring.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Print one JSON line instead of a table.
    #[arg(long)]
    json: bool,
    /// The stack's env file.
    #[arg(long, default_value = "target/stack/stack.env")]
    env: String,
    /// verify-payment, webhook: orders created before the run.
    #[arg(long, default_value_t = 40_000)]
    orders: usize,
    /// verify-payment: identical VerifyPayment calls fired at once per order (duplicate storm).
    #[arg(long, default_value_t = 1)]
    storm: usize,
    /// deduct: usage sessions (each of its own user and subscription).
    #[arg(long, default_value_t = 10_000)]
    sessions: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let target = Target::from_env(&loadgen::read_env_file(&args.env)?)?;
    let timing = Timing {
        concurrency: args.concurrency.max(1),
        warmup: Duration::from_secs(args.warmup),
        duration: Duration::from_secs(args.duration.max(1)),
    };
    let report = match args.scenario {
        Scenario::CreateSession => scenarios::create_session(&target, &timing).await?,
        Scenario::VerifyPayment => scenarios::verify_payment(&target, &timing, args.orders, args.storm).await?,
        Scenario::Deduct => scenarios::deduct(&target, &timing, args.sessions, false).await?,
        Scenario::DeductHot => scenarios::deduct(&target, &timing, args.sessions, true).await?,
        Scenario::Webhook => scenarios::webhook(&target, &timing, args.orders).await?,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{:<16} c={:<3} {:>9.1} ops/s  p50 {:>7.2} ms  p99 {:>7.2} ms  p999 {:>7.2} ms  max {:>7.2} ms  ops {}  errors {:?} {:?}",
            report.scenario,
            report.concurrency,
            report.throughput_rps,
            report.p50_ms,
            report.p99_ms,
            report.p999_ms,
            report.max_ms,
            report.ops,
            report.errors,
            report.extra
        );
    }
    Ok(())
}
