//! The client's retry behaviour against the real service's test options.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use dps::client::{ClientError, ClientOptions, RetryPolicy};
use dps::wire::{AttestationMechanism, BulkMode, IndividualEnrollment};
use support::{Service, fast_retry};

fn enrollments(prefix: &str, n: usize) -> Vec<IndividualEnrollment> {
    (0..n)
        .map(|i| {
            IndividualEnrollment::new(
                format!("{prefix}-{i:03}").parse().unwrap(),
                AttestationMechanism::symmetric_key(None, None),
            )
        })
        .collect()
}

#[tokio::test]
async fn honours_retry_after_on_429() {
    // 60 ops/min: a burst of 60, then one per second.
    let svc = Service::start(&["--ops-per-min", "60"]);
    let c = svc.client_with(
        svc.connection_string(),
        ClientOptions {
            retry: RetryPolicy {
                max_attempts: 10,
                min_backoff: Duration::from_millis(10),
                max_backoff: Duration::from_millis(10),
                // Retry-After is always sent by the service; this would be too short.
                default_retry_after: Duration::from_millis(1),
            },
            ..ClientOptions::default()
        },
    );
    let http = svc.http();
    // Use up the burst with raw requests.
    let mut throttled = None;
    for _ in 0..70 {
        let r = http
            .post(svc.url("/enrollments/query?api-version=2021-10-01"))
            .header("Authorization", svc.token())
            .json(&serde_json::json!({"query": "*"}))
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            throttled = Some(r);
            break;
        }
    }
    let r = throttled.expect("the quota never answered 429");
    let after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(after >= 1);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["errorCode"], 429_001);
    // The client now waits for Retry-After instead of failing.
    let t0 = Instant::now();
    let items = enrollments("q", 3);
    let res = c.bulk_enrollments(BulkMode::Create, &items).await.unwrap();
    assert!(res.iter().all(|r| r.outcome.is_ok()));
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t0.elapsed()
    );
}

#[tokio::test]
async fn retries_injected_5xx_until_success() {
    let svc = Service::start(&["--fail-rate", "0.5"]);
    let c = svc.client();
    let items = enrollments("f", 40);
    let res = c.bulk_enrollments(BulkMode::Create, &items).await.unwrap();
    assert!(res.iter().all(|r| r.outcome.is_ok()), "{res:?}");
    // Nothing was written twice or lost: exactly the 40 exist.
    let all = c.list_enrollments(100).await.unwrap();
    assert_eq!(all.len(), 40);
}

#[tokio::test]
async fn gives_up_with_a_retryable_error_when_always_failing() {
    let svc = Service::start(&["--fail-rate", "1"]);
    let mut o = fast_retry();
    o.retry.max_attempts = 3;
    let c = svc.client_with(svc.connection_string(), o);
    let err = c.get_enrollment(&"x".parse().unwrap()).await.unwrap_err();
    assert!(
        matches!(err, ClientError::Exhausted { attempts: 3, .. }),
        "{err:?}"
    );
    assert!(err.is_retryable());
    assert_eq!(err.status(), Some(500));
}

#[tokio::test]
async fn connection_errors_are_retryable() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let svc = Service::start_in(&dir, &[]);
    let cs = svc.connection_string();
    svc.stop();
    let mut o = fast_retry();
    o.retry.max_attempts = 2;
    o.extra_ca_file = Some(dir.join("ca.pem"));
    let c = dps::client::ServiceClient::new(cs, o).unwrap();
    let err = c.get_enrollment(&"x".parse().unwrap()).await.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
}

#[tokio::test]
async fn token_bucket_paces_the_client() {
    let svc = Service::start(&[]);
    let mut o = fast_retry();
    // 600/min after a burst of 600: operations 601..=610 take about one second.
    o.ops_per_min = Some(600);
    let c = svc.client_with(svc.connection_string(), o);
    let items = enrollments("p", 6100);
    let t0 = Instant::now();
    let res = c.bulk_enrollments(BulkMode::Create, &items).await.unwrap();
    assert_eq!(res.len(), 6100);
    assert!(res.iter().all(|r| r.outcome.is_ok()));
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(900), "{took:?}");
}
