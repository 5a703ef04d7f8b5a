//! The `loadgen` benchmark: drives a running stack over real gRPC with N
//! concurrent workers for a fixed time, after a warm-up, and reports
//! throughput, latency percentiles (hdrhistogram) and errors by status.
pub mod acks;
pub mod events;
pub mod scenarios;

use std::{
    collections::BTreeMap,
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use hdrhistogram::Histogram;
use tokio::sync::Mutex;
use tonic::Status;

use crate::loadgen::scenarios::Timing;

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
    /// CPU seconds spent during the measured window by each watched process
    /// tree (see [`watch_cpu`]) and by loadgen itself.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub cpu_s: BTreeMap<String, f64>,
    /// Operations that succeeded in the warm-up and the measured window
    /// together: the work the database must show afterwards.
    #[serde(skip)]
    pub ok_total: u64,
}

/// The measured windows of the runs so far, in wall-clock time (what event
/// times are compared with, see [`events`]).
static WINDOWS: std::sync::Mutex<Vec<(SystemTime, SystemTime)>> = std::sync::Mutex::new(Vec::new());

/// The measured windows of every run so far (warm-ups excluded).
pub fn measured_windows() -> Vec<(SystemTime, SystemTime)> {
    WINDOWS.lock().map(|w| w.clone()).unwrap_or_default()
}

/// Set by [`stop`]: the measured windows end now.
static STOPPED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Ends the measured window of the running (and any later) run early, as
/// if its duration were over: its checks and report still follow (loadgen
/// calls this on SIGINT or SIGTERM).
pub fn stop() {
    STOPPED.store(true, Ordering::Relaxed);
}

fn stopped() -> bool {
    STOPPED.load(Ordering::Relaxed)
}

type Watched = (String, u32, Option<String>);
static WATCHED: std::sync::OnceLock<Vec<Watched>> = std::sync::OnceLock::new();

/// Process trees whose CPU time every run reports over its measured window
/// (`name=pid`: the pid, its descendants and the children it has reaped,
/// e.g. the PostgreSQL postmaster with every backend; `name=pid:db`: only
/// the postmaster's backends of database `db`). Linux /proc only.
pub fn watch_cpu(watched: Vec<Watched>) {
    let _ = WATCHED.set(watched);
}

/// One process: (pid, ppid, utime + stime, cutime + cstime) in ticks, and
/// its title (a PostgreSQL backend's names its database).
struct Proc {
    pid: u32,
    ppid: u32,
    own: u64,
    reaped: u64,
    title: String,
}

fn proc_table() -> Vec<Proc> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| {
        let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name, which is in parentheses.
        let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let n = |i: usize| rest.get(i).and_then(|v| v.parse::<u64>().ok());
        let title = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default().replace('\0', " ");
        Some(Proc { pid, ppid: n(1)? as u32, own: n(11)? + n(12)?, reaped: n(13)? + n(14)?, title })
    })
    .collect()
}

/// CPU ticks used so far by `root`, its live descendants and the
/// descendants it has reaped; with `db`, only the PostgreSQL backends (the
/// postmaster's children) whose title names that database, so other
/// databases on a shared server do not count.
fn tree_ticks(table: &[Proc], root: u32, db: Option<&str>) -> u64 {
    if let Some(db) = db {
        let needle = format!(" {db} ");
        return table.iter().filter(|p| p.ppid == root && p.title.contains(&needle)).map(|p| p.own).sum();
    }
    let mut total = 0;
    let mut stack = vec![root];
    while let Some(pid) = stack.pop() {
        for p in table {
            if p.pid == pid {
                total += p.own + if pid == root { p.reaped } else { 0 };
            } else if p.ppid == pid {
                stack.push(p.pid);
            }
        }
    }
    total
}

fn cpu_sample() -> BTreeMap<String, u64> {
    let table = proc_table();
    let mut out: BTreeMap<String, u64> = WATCHED
        .get()
        .into_iter()
        .flatten()
        .map(|(name, pid, db)| (name.clone(), tree_ticks(&table, *pid, db.as_deref())))
        .collect();
    out.insert("loadgen".into(), tree_ticks(&table, std::process::id(), None));
    out
}

fn ticks_per_second() -> f64 {
    // sysconf(_SC_CLK_TCK) is 100 on every Linux this runs on.
    100.0
}

struct Shared {
    hist: Mutex<Histogram<u64>>,
    errors: Mutex<BTreeMap<String, u64>>,
    ops: AtomicU64,
    ok_total: AtomicU64,
}

/// Runs `op(worker, iteration)` on `timing.concurrency` workers: `warmup`
/// first (not measured), then `duration` measured; with a `rate`, the
/// workers together start at most that many operations a second (a worker
/// that fell behind, e.g. retrying through a failover, does not catch up in
/// a burst). [`stop`] ends the measured window early. A progress line
/// goes to stderr every second.
pub async fn run<F, Fut>(scenario: &str, timing: &Timing, op: F) -> anyhow::Result<Report>
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), Status>> + Send,
{
    let shared = Arc::new(Shared {
        hist: Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3)?),
        errors: Mutex::new(BTreeMap::new()),
        ops: AtomicU64::new(0),
        ok_total: AtomicU64::new(0),
    });
    let Timing { concurrency, warmup, duration, rate } = *timing;
    // Each worker's share of the rate: one start every `pace`.
    let pace = (rate > 0.0).then(|| Duration::from_secs_f64(concurrency as f64 / rate));
    let op = Arc::new(op);
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let wall = SystemTime::now() + warmup;
    if let Ok(mut w) = WINDOWS.lock() {
        w.push((wall, wall + duration));
    }
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let (shared, op) = (shared.clone(), op.clone());
        workers.push(tokio::spawn(async move {
            let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).ok();
            let mut errors: BTreeMap<String, u64> = BTreeMap::new();
            let mut i = 0u64;
            let mut next = pace.map(|p| start + p.mul_f64(w as f64 / concurrency as f64));
            loop {
                if let (Some(at), Some(p)) = (next, pace) {
                    tokio::time::sleep_until(at.into()).await;
                    next = Some((at + p).max(Instant::now()));
                }
                let t0 = Instant::now();
                if t0 >= end || stopped() {
                    break;
                }
                let r = op(w, i).await;
                i += 1;
                if r.is_ok() {
                    shared.ok_total.fetch_add(1, Ordering::Relaxed);
                }
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
                if now >= end || stopped() {
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
    let cpu_start = tokio::spawn(async move {
        tokio::time::sleep_until(tokio::time::Instant::from_std(measure_from)).await;
        cpu_sample()
    });
    for w in workers {
        w.await?;
    }
    let cpu_end = cpu_sample();
    let cpu_start = cpu_start.await?;
    let cpu_s = cpu_end
        .iter()
        // A process that appeared in the window counts from zero.
        .map(|(k, v)| (k.clone(), v.saturating_sub(cpu_start.get(k).copied().unwrap_or(0)) as f64 / ticks_per_second()))
        .collect();
    let _ = progress.await;
    let hist = shared.hist.lock().await;
    let ops = shared.ops.load(Ordering::Relaxed);
    // Shorter than `duration` when stopped early.
    let secs = Instant::now().min(end).saturating_duration_since(measure_from).as_secs_f64().max(0.001);
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
        cpu_s,
        ok_total: shared.ok_total.load(Ordering::Relaxed),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_rate_caps_the_operations_started() {
        let timing = |rate| Timing { concurrency: 2, warmup: Duration::ZERO, duration: Duration::from_millis(300), rate };
        let paced = run("paced", &timing(50.0), |_, _| async { Ok(()) }).await.map(|r| r.ok_total).ok();
        // 50/s for 0.3 s: 15 starts, and one more per worker at the edges.
        assert!(paced.is_some_and(|n| n <= 17), "{paced:?} operations");
        let free = run("free", &timing(0.0), |_, _| async { Ok(()) }).await.map(|r| r.ok_total).ok();
        assert!(free.is_some_and(|n| n > 17), "{free:?} operations without a rate");
    }
}
