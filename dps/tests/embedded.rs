//! The service embedded in another program: bind, learn the address, serve, shut down.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use dps::client::{ClientOptions, ServiceClient};
use dps::server::{ServeOptions, Server};
use dps::wire::{AttestationMechanism, BulkMode, EnrollmentGroup, KeyText};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_serve_and_shut_down_in_process() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::bind(ServeOptions {
        data: tmp.path().join("d"),
        listen: "127.0.0.1:0".parse().unwrap(),
        mqtt_listen: None,
        link_hubs: vec![],
        ops_per_min: None,
        fail_rate: 0.0,
        latency: Duration::ZERO,
        faults: Default::default(),
    })
    .await
    .unwrap();
    let port = server.local_addr().port();
    let scope = server.id_scope().to_owned();
    assert!(scope.starts_with("0ne") && scope.len() == 11, "{scope}");
    let files = server.data_dir().clone();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run_until(async {
        let _ = stop_rx.await;
    }));

    let cs: dps::sas::ConnectionString = std::fs::read_to_string(files.connection_string())
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(cs.host_name(), format!("localhost:{port}"));
    let c = ServiceClient::new(
        cs,
        ClientOptions {
            extra_ca_file: Some(files.ca_pem()),
            ..ClientOptions::default()
        },
    )
    .unwrap();
    // Group bulk goes to /enrollmentGroups, chunked like enrollments.
    let groups: Vec<_> = (0..12)
        .map(|i| {
            EnrollmentGroup::new(
                format!("grp-{i:02}").parse().unwrap(),
                AttestationMechanism::symmetric_key(Some(KeyText::new("")), None),
            )
        })
        .collect();
    let r = c.bulk_groups(BulkMode::Create, &groups).await.unwrap();
    assert_eq!(r.len(), 12);
    assert!(r.iter().all(|i| i.outcome.is_ok()));
    let again = c.bulk_groups(BulkMode::Create, &groups[..1]).await.unwrap();
    assert_eq!(again[0].outcome.as_ref().unwrap_err().code, Some(409_001));
    assert_eq!(c.list_groups(5).await.unwrap().len(), 12);

    stop_tx.send(()).unwrap();
    task.await.unwrap();
    // After shutdown the pending operation count is on disk: three bulk calls (10 + 2,
    // then 1) and three query pages (5 + 5 + 2).
    let store = dps::server::open_store(&files.root).unwrap();
    let ops = store.read(|tx| tx.operations()).unwrap();
    assert_eq!(ops.iter().map(|(_, n)| n).sum::<u64>(), 6);
}
