//! Load driver for `scripts/bench.d/dps`: uploads enrollments with the service client to a
//! running local service and prints measured figures as `key=value` pairs.
//!
//! ```text
//! dps-bench bulk  --data DIR --count N --concurrency C
//! dps-bench get   --data DIR --seconds S --concurrency C
//! dps-bench quota --data DIR --ops-per-min Q --warmup-secs W --measure-secs M --concurrency C
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dps::client::{ClientOptions, ServiceClient};
use dps::sas::ConnectionString;
use dps::wire::{AttestationMechanism, BulkMode, IndividualEnrollment};

type Error = Box<dyn std::error::Error + Send + Sync>;

fn arg(args: &[String], name: &str) -> Result<String, Error> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .ok_or_else(|| format!("missing {name}").into())
}

fn num(args: &[String], name: &str) -> Result<u64, Error> {
    Ok(arg(args, name)?.parse()?)
}

fn client(data: &std::path::Path, ops_per_min: Option<u32>) -> Result<ServiceClient, Error> {
    let cs: ConnectionString = std::fs::read_to_string(data.join("connection-string"))?.parse()?;
    let opts = ClientOptions {
        extra_ca_file: Some(data.join("ca.pem")),
        ops_per_min,
        ..ClientOptions::default()
    };
    Ok(ServiceClient::new(cs, opts)?)
}

fn enrollment(prefix: &str, n: u64) -> Result<IndividualEnrollment, Error> {
    // A realistic symmetric-key enrollment with an initial twin.
    let mut e = IndividualEnrollment::new(
        format!("{prefix}-{n:08}").parse()?,
        AttestationMechanism::symmetric_key(None, None),
    );
    e.initial_twin = Some(serde_json::from_value(serde_json::json!({
        "tags": {"lot": "L-2031", "line": "3"},
        "properties": {"desired": {"fw": "1.2.3"}}
    }))?);
    Ok(e)
}

async fn bulk(args: &[String]) -> Result<(), Error> {
    let data = PathBuf::from(arg(args, "--data")?);
    let count = num(args, "--count")?;
    let conc = num(args, "--concurrency")?;
    let c = client(&data, None)?;
    let next = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (c, next, failed) = (c.clone(), next.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let start = next.fetch_add(10, Ordering::Relaxed);
                if start >= count {
                    return Ok::<_, Error>(());
                }
                let items = (start..(start + 10).min(count))
                    .map(|i| enrollment("bulk", i))
                    .collect::<Result<Vec<_>, _>>()?;
                let r = c.bulk_enrollments(BulkMode::Create, &items).await?;
                let bad = r.iter().filter(|i| i.outcome.is_err()).count() as u64;
                failed.fetch_add(bad, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "bulk_enrollments={count} seconds={secs:.3} bulk_enrollments_per_s={:.0} failed={}",
        count as f64 / secs,
        failed.load(Ordering::Relaxed)
    );
    Ok(())
}

async fn get_loop(args: &[String]) -> Result<(), Error> {
    let data = PathBuf::from(arg(args, "--data")?);
    let secs = num(args, "--seconds")?;
    let conc = num(args, "--concurrency")?;
    let c = client(&data, None)?;
    let target = enrollment("get", 0)?;
    c.create_or_update_enrollment(&target, None).await?;
    let id = target.registration_id.clone();
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (c, done, stop, id) = (c.clone(), done.clone(), stop.clone(), id.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                c.get_enrollment(&id).await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, Error>(())
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await??;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    println!(
        "get_requests_per_s={:.0}",
        done.load(Ordering::Relaxed) as f64 / elapsed
    );
    Ok(())
}

async fn quota(args: &[String]) -> Result<(), Error> {
    let data = PathBuf::from(arg(args, "--data")?);
    let quota = u32::try_from(num(args, "--ops-per-min")?)?;
    let warmup = Duration::from_secs(num(args, "--warmup-secs")?);
    let measure = Duration::from_secs(num(args, "--measure-secs")?);
    let conc = num(args, "--concurrency")?;
    // The client paces itself at the service's quota and relies on Retry-After beyond it.
    let c = client(&data, Some(quota))?;
    let t0 = Instant::now();
    let (win_start, win_end) = (t0 + warmup, t0 + warmup + measure);
    let next = Arc::new(AtomicU64::new(0));
    let in_window = Arc::new(AtomicU64::new(0));
    let total_ops = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (c, next, in_window, total_ops, failed) = (
            c.clone(),
            next.clone(),
            in_window.clone(),
            total_ops.clone(),
            failed.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while Instant::now() < win_end {
                let start = next.fetch_add(10, Ordering::Relaxed);
                let items = (start..start + 10)
                    .map(|i| enrollment("quota", i))
                    .collect::<Result<Vec<_>, _>>()?;
                let r = c.bulk_enrollments(BulkMode::Create, &items).await?;
                let bad = r.iter().filter(|i| i.outcome.is_err()).count() as u64;
                failed.fetch_add(bad, Ordering::Relaxed);
                if bad == 0 {
                    total_ops.fetch_add(1, Ordering::Relaxed);
                    let now = Instant::now();
                    if now >= win_start && now < win_end {
                        in_window.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Ok::<_, Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let ops = in_window.load(Ordering::Relaxed) as f64;
    let per_min = ops / measure.as_secs_f64() * 60.0;
    println!(
        "quota_ops_per_min={quota} window_secs={} window_ops={ops:.0} achieved_ops_per_min={per_min:.1} quota_use={:.3} total_ops={} failed={}",
        measure.as_secs(),
        per_min / f64::from(quota),
        total_ops.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("bulk") => bulk(&args).await,
        Some("get") => get_loop(&args).await,
        Some("quota") => quota(&args).await,
        _ => Err("usage: dps-bench bulk|get|quota ...".into()),
    }
}
