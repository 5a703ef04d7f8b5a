//! The `loadgen` benchmark: drives a running stack over real gRPC with N
//! concurrent workers for a fixed time, after a warm-up, and reports
//! throughput, latency percentiles (hdrhistogram) and errors by status.
pub mod scenarios;

use std::{
    collections::BTreeMap,
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use tokio::sync::Mutex;
use tonic::Status;

/// `KEY=value` lines of `target/stack/stack.env`.
pub fn read_env_file(path: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read {path} ({e}); start the stack first: cargo run --release --bin stack"))?;
    Ok(text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned())).collect())
}

#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub scenario: String,
    pub concurrency: usize,
    pub duration_s: f64,
    pub ops: u64,
    pub throughput_rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub errors: BTreeMap<String, u64>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, i64>,
}

struct Shared {
    hist: Mutex<Histogram<u64>>,
    errors: Mutex<BTreeMap<String, u64>>,
    ops: AtomicU64,
}

/// Runs `op(worker, iteration)` on `concurrency` workers: `warmup` first
/// (not measured), then `duration` measured. A progress line goes to stderr
/// every second.
pub async fn run<F, Fut>(
    scenario: &str,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
    op: F,
) -> anyhow::Result<Report>
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), Status>> + Send,
{
    let shared = Arc::new(Shared {
        hist: Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3)?),
        errors: Mutex::new(BTreeMap::new()),
        ops: AtomicU64::new(0),
    });
    let op = Arc::new(op);
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let (shared, op) = (shared.clone(), op.clone());
        workers.push(tokio::spawn(async move {
            let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).ok();
            let mut errors: BTreeMap<String, u64> = BTreeMap::new();
            let mut i = 0u64;
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let r = op(w, i).await;
                i += 1;
                if t0 < measure_from {
                    continue;
                }
                match r {
                    Ok(()) => {
                        if let Some(h) = local.as_mut() {
                            let _ = h.record(t0.elapsed().as_micros() as u64);
                        }
                        shared.ops.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(s) => *errors.entry(format!("{:?}", s.code())).or_default() += 1,
                }
            }
            if let Some(h) = local {
                let _ = shared.hist.lock().await.add(&h);
            }
            let mut all = shared.errors.lock().await;
            for (k, v) in errors {
                *all.entry(k).or_default() += v;
            }
        }));
    }
    let progress = {
        let shared = shared.clone();
        let scenario = scenario.to_owned();
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let now = Instant::now();
                if now >= end {
                    break;
                }
                let ops = shared.ops.load(Ordering::Relaxed);
                let phase = if now < measure_from { "warm-up" } else { "measuring" };
                eprint!("\r{scenario}: {phase} t={:>3}s ops={ops} ({}/s)    ", (now - start).as_secs(), ops - last);
                last = ops;
            }
            eprintln!();
        })
    };
    for w in workers {
        w.await?;
    }
    let _ = progress.await;
    let hist = shared.hist.lock().await;
    let ops = shared.ops.load(Ordering::Relaxed);
    let secs = duration.as_secs_f64();
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    Ok(Report {
        scenario: scenario.to_owned(),
        concurrency,
        duration_s: secs,
        ops,
        throughput_rps: ops as f64 / secs,
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        max_ms: hist.max() as f64 / 1000.0,
        errors: shared.errors.lock().await.clone(),
        extra: BTreeMap::new(),
    })
}
