//! `cargo run --release --bin loadgen -- --scenario <name> --concurrency N[,M...] --duration S [--json] [--cpu name=pid,...]
//! [--watch-events] [--purchase-rate R] [--retry S] [--ack-log FILE]`
//!
//! Drives a running stack (see `target/stack/stack.env`) over real gRPC, one
//! run per concurrency level; prints a line (or a JSON object) per level with
//! throughput, p50/p99/p999, errors by status and, with `--cpu`, the CPU
//! seconds each watched process tree and loadgen spent in the measured window.
//! With `--watch-events`, the lag of billing's event stream over the measured
//! windows; with `--purchase-rate`, purchases beside the scenario; with
//! `--retry` and `--ack-log`, the caller's side of a failover (tests/ha/).
use std::time::Duration;

use clap::{Parser, ValueEnum};
use tests::loadgen::{
    self,
    scenarios::{self, Target, Timing},
};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Scenario {
    /// CreateSession, each for a new user.
    CreateSession,
    /// VerifyPayment of fresh orders (see --orders, --storm).
    VerifyPayment,
    /// Deduct across usage sessions of different users (see --sessions).
    Deduct,
    /// Deduct across 100 usage sessions sharing one subscription.
    DeductHot,
    /// Signed payment.captured webhooks over HTTP, one per fresh order.
    Webhook,
}

#[derive(Parser)]
#[command(name = "loadgen", about = "Benchmark a running stack over gRPC (start it with: cargo run --release --bin stack)")]
struct Args {
    /// What to drive.
    #[arg(long, value_enum)]
    scenario: Scenario,
    /// Concurrent workers (each with its own HTTP/2 connection); a comma-separated list runs one sweep level each.
    #[arg(long, value_delimiter = ',', default_value = "8")]
    concurrency: Vec<usize>,
    /// Measured seconds (Ctrl-C or SIGTERM ends them early; the checks and the report still follow).
    #[arg(long, default_value_t = 15)]
    duration: u64,
    /// Warm-up seconds before measuring.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Print one JSON line instead of a table.
    #[arg(long)]
    json: bool,
    /// The env file of the stack to drive: by default the benchmark stack's
    /// (docs/benchmarks.md), so seeded rows never land in the stack you use
    /// by hand.
    #[arg(long, default_value = "target/stack/bench.env")]
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
    /// Process trees whose CPU time to report per level, as name=pid or, for the backends of one database only, name=postmaster-pid:db (e.g. postgres=PID,billing-db=PID:billing,stack=PID).
    #[arg(long, value_delimiter = ',')]
    cpu: Vec<String>,
    /// Follow billing's WatchEvents meanwhile and report the event lag (arrival time minus the event's time, the database's transaction time) of the events of the measured windows: p50, p99, max and the count; fails unless the events table holds as many events as the stream brought.
    #[arg(long)]
    watch_events: bool,
    /// Purchases per second (CreateOrder + VerifyPayment, each for a new user) beside the scenario, from its set-up to its end, so that events flow; fails unless the database shows a paid subscription per successful purchase.
    #[arg(long, default_value_t = 0.0)]
    purchase_rate: f64,
    /// Operations started per second by all workers together (0: as fast as they go); a worker that fell behind does not catch up in a burst.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Send a call that failed with UNAVAILABLE, ABORTED with RetryInfo, no answer within 10 s or a broken connection again, with the same ids, after RetryInfo's delay, for up to this many seconds (0: never); the report's `retried_<code>` counts those failures (tests/ha/README.md).
    #[arg(long, default_value_t = 0)]
    retry: u64,
    /// Append every acknowledged operation's ids (deduct: usage session and deduction id; verify-payment: order and payment id; webhook: event and order id) and every failed attempt's status code to this file, a line each with the time in unix milliseconds (tests/ha/README.md).
    #[arg(long)]
    ack_log: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let target = Target::from_env(&loadgen::read_env_file(&args.env)?)?;
    let mut watched = Vec::new();
    for w in &args.cpu {
        let (name, pid) = w.split_once('=').ok_or_else(|| anyhow::anyhow!("--cpu wants name=pid[:db], got {w:?}"))?;
        let (pid, db) = match pid.split_once(':') {
            Some((pid, db)) => (pid, Some(db.to_owned())),
            None => (pid, None),
        };
        watched.push((name.to_owned(), pid.parse::<u32>().map_err(|e| anyhow::anyhow!("--cpu {w:?}: {e}"))?, db));
    }
    loadgen::watch_cpu(watched);
    loadgen::acks::init(args.ack_log.as_deref(), Duration::from_secs(args.retry))?;
    // Ctrl-C or SIGTERM ends the measured window early; the checks and the
    // report follow. A second one ends loadgen at once.
    tokio::spawn(async {
        shared::server::termination_signal().await;
        eprintln!("\nloadgen: stopping early (again to quit now)");
        loadgen::stop();
        shared::server::termination_signal().await;
        std::process::exit(130);
    });
    let levels: Vec<usize> = args.concurrency.iter().map(|c| (*c).max(1)).collect();
    let timing = |concurrency: usize| Timing {
        concurrency,
        warmup: Duration::from_secs(args.warmup),
        duration: Duration::from_secs(args.duration.max(1)),
        rate: args.rate,
    };
    let lag = if args.watch_events { Some(loadgen::events::watch_lag(&target).await?) } else { None };
    let purchases =
        if args.purchase_rate > 0.0 { Some(loadgen::events::purchase_stream(&target, args.purchase_rate)?) } else { None };
    let mut reports = match args.scenario {
        // One set-up (thousands of usage sessions), then every level.
        Scenario::Deduct | Scenario::DeductHot => {
            let hot = matches!(args.scenario, Scenario::DeductHot);
            scenarios::deduct(&target, &timing(1), &levels, args.sessions, hot).await?
        }
        Scenario::CreateSession | Scenario::VerifyPayment | Scenario::Webhook => {
            let mut reports = Vec::new();
            for &c in &levels {
                let t = timing(c);
                reports.push(match args.scenario {
                    Scenario::VerifyPayment => scenarios::verify_payment(&target, &t, args.orders, args.storm).await?,
                    Scenario::Webhook => scenarios::webhook(&target, &t, args.orders).await?,
                    _ => scenarios::create_session(&target, &t).await?,
                });
            }
            reports
        }
    };
    let (mut extra, mut lag_line) = (std::collections::BTreeMap::new(), None);
    if let Some(p) = purchases {
        let (ok, failed, in_db) = p.finish(&target).await?;
        extra.extend([("purchases_ok", ok), ("purchases_failed", failed), ("purchases_paid_in_db", in_db)]);
    }
    if let Some(lag) = lag {
        let r = lag.finish(&target, &loadgen::measured_windows()).await?;
        let us = |ms: f64| (ms * 1000.0).round() as i64;
        extra.extend([
            ("events_received", r.received),
            ("events_in_db", r.stored),
            ("events_in_measured_windows", r.measured as i64),
            ("event_streams", r.streams as i64),
            ("event_lag_p50_us", us(r.p50_ms)),
            ("event_lag_p99_us", us(r.p99_ms)),
            ("event_lag_max_us", us(r.max_ms)),
        ]);
        lag_line = Some(format!(
            "events: {} received ({} in the table, {} stream(s)), {} in the measured windows: lag p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
            r.received, r.stored, r.streams, r.measured, r.p50_ms, r.p99_ms, r.max_ms
        ));
    }
    if let Some(last) = reports.last_mut() {
        last.extra.extend(extra.into_iter().map(|(k, v)| (k.to_owned(), v)));
        last.extra.extend(loadgen::acks::retried().into_iter().map(|(code, n)| (format!("retried_{code}"), n as i64)));
    }
    for report in &reports {
        if args.json {
            println!("{}", serde_json::to_string(report)?);
        } else {
            println!(
                "{:<16} c={:<3} {:>9.1} ops/s  p50 {:>7.2} ms  p99 {:>7.2} ms  p999 {:>7.2} ms  max {:>7.2} ms  ops {}  errors {:?} cpu_s {:?} {:?}",
                report.scenario,
                report.concurrency,
                report.throughput_rps,
                report.p50_ms,
                report.p99_ms,
                report.p999_ms,
                report.max_ms,
                report.ops,
                report.errors,
                report.cpu_s,
                report.extra
            );
        }
    }
    if let (Some(line), false) = (lag_line, args.json) {
        println!("{line}");
    }
    Ok(())
}

#[cfg(test)]
mod cli_tests {
    use clap::CommandFactory;

    use super::Args;

    #[test]
    fn cli_declarations_are_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn readme_commands_list_every_scenario_and_help_is_complete() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap_or_default();
        let mut problems = shared::config::check_commands_section(&readme, "loadgen", &Args::command());
        problems.extend(shared::config::check_help_complete(&Args::command()));
        assert!(problems.is_empty(), "loadgen's commands and help:\n{}", problems.join("\n"));
    }
}
