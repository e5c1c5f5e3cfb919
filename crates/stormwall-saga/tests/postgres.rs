//! The saga crate's suite on a real PostgreSQL server (started here on a free loopback
//! port), plus two replicas racing, and bad input.

use stormwall_saga::{EventStore, ExpectedVersion, PostgresStore, SagaError};
use stormwall_testkit::PostgresServer;

mod common;

async fn connect(url: &str) -> PostgresStore {
    PostgresStore::connect(url, 8).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_suite_passes_on_postgres() {
    let server = PostgresServer::start();
    common::idempotency_keys(connect(&server.database("idempotency")).await).await;
    common::keys_are_scoped_per_client(connect(&server.database("scoped")).await).await;
    common::a_response_too_large_to_keep_runs_once(connect(&server.database("too_large")).await)
        .await;
    common::event_store(connect(&server.database("events")).await).await;
    common::sagas(connect(&server.database("sagas")).await).await;
    common::parked_sagas(connect(&server.database("parked")).await).await;
    common::resume_after_interruption(connect(&server.database("resume")).await).await;
    let purge = server.database("purge");
    common::expired_keys_are_purged(connect(&purge).await, || {
        server
            .psql("purge", "SELECT COUNT(*) FROM stormwall_idempotency")
            .trim()
            .parse()
            .unwrap()
    })
    .await;
}

/// The child of the claim crash test (a no-op when the harness runs it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_child() {
    let (Ok(url), Ok(log)) = (
        std::env::var("STORMWALL_CLAIM_URL"),
        std::env::var("STORMWALL_CLAIM_LOG"),
    ) else {
        return;
    };
    common::hang_inside_the_handler(connect(&url).await, log.into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_whose_holder_died_is_taken_over() {
    let server = PostgresServer::start();
    let url = server.database("claim_crash");
    let log = server.dir().join("claim-crash.entered");
    common::a_claim_whose_holder_died_is_taken_over(connect(&url).await, log.clone(), || {
        std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "claim_child", "--nocapture", "--test-threads=1"])
            .env("STORMWALL_CLAIM_URL", &url)
            .env("STORMWALL_CLAIM_LOG", &log)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_racing_on_one_stream_win_one_version_each() {
    let server = PostgresServer::start();
    let url = server.database("race");
    // Two replicas, each with its own pool and migrating at the same time.
    let (a, b) = tokio::join!(connect(&url), connect(&url));
    let (a, b) = (EventStore::new(a), EventStore::new(b));
    for round in 0..50i64 {
        let (x, y) = tokio::join!(
            a.append(
                "s",
                ExpectedVersion::Exact(round),
                &[common::AccountEvent::Deposited(1)]
            ),
            b.append(
                "s",
                ExpectedVersion::Exact(round),
                &[common::AccountEvent::Withdrew(1)]
            ),
        );
        assert_eq!(
            [&x, &y].iter().filter(|r| r.is_ok()).count(),
            1,
            "{x:?} {y:?}"
        );
    }
    assert_eq!(
        a.read::<common::AccountEvent>("s", 0).await.unwrap().len(),
        50
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_typed_error() {
    let server = PostgresServer::start();
    let url = server.database("bad");
    connect(&url).await;
    assert!(matches!(
        PostgresStore::connect("postgres://x:-1/", 1).await,
        Err(SagaError::InvalidUrl { .. })
    ));
    let nobody = format!(
        "postgres://postgres@127.0.0.1:{}/x",
        stormwall_testkit::free_port()
    );
    assert!(matches!(
        PostgresStore::connect(&nobody, 1).await,
        Err(SagaError::Unreachable(_))
    ));
    server.psql(
        "bad",
        "UPDATE stormwall_saga_meta SET value = '9' WHERE key = 'schema_version'",
    );
    assert!(matches!(
        PostgresStore::connect(&url, 1).await,
        Err(SagaError::NewerSchema { found: 9, .. })
    ));
}

/// The idempotency layer on a database that stops answering: requests get 503 naming the
/// timeout within the configured bound, not a hang; connecting to a server that never
/// answers fails within `connect`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_database_answers_503_within_the_statement_timeout() {
    use axum::body::Body;
    use http_body_util::BodyExt;
    use std::time::{Duration, Instant};
    use stormwall_durable::{StorageTimeouts, TimedOut};
    use stormwall_saga::{IdempotencyLayer, IdempotencyOptions};
    use tower::ServiceExt;
    let timeouts = StorageTimeouts {
        connect: Duration::from_secs(1),
        wait: Duration::from_millis(400),
        statement: Duration::from_secs(2),
    };
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let started = Instant::now();
    let connected = PostgresStore::connect_with_timeouts(
        &format!("postgres://postgres@{silent_addr}/x"),
        2,
        timeouts,
    )
    .await;
    let elapsed = started.elapsed();
    assert!(
        matches!(
            connected,
            Err(SagaError::Timeout {
                what: TimedOut::Connect,
                ..
            })
        ),
        "{connected:?}"
    );
    assert!(
        elapsed >= timeouts.connect && elapsed < timeouts.connect + Duration::from_millis(1500),
        "{elapsed:?}"
    );

    let server = PostgresServer::start();
    let chaos = stormwall_chaos::ChaosServer::new();
    let proxy = chaos
        .create(stormwall_chaos::ProxySpec::new(
            "postgres",
            format!("127.0.0.1:{}", server.port()),
        ))
        .await
        .unwrap();
    server.database("blackholed");
    let url = format!("postgres://postgres@{}/blackholed", proxy.listen);
    let store = PostgresStore::connect_with_timeouts(&url, 2, timeouts)
        .await
        .unwrap();
    let app = axum::Router::new()
        .route("/orders", axum::routing::post(|| async { "created" }))
        .layer(IdempotencyLayer::new(store, IdempotencyOptions::default()));
    let send = || {
        let request = http::Request::post("/orders")
            .header("idempotency-key", "k-1")
            .header("authorization", "Bearer a")
            .body(Body::from("x"))
            .unwrap();
        app.clone().oneshot(request)
    };
    assert_eq!(send().await.unwrap().status(), http::StatusCode::OK);
    chaos
        .add_toxic(
            "postgres",
            stormwall_chaos::Toxic::new(stormwall_chaos::ToxicKind::Timeout { timeout: 0 }),
        )
        .unwrap();
    let started = Instant::now();
    let response = send().await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(response.status(), http::StatusCode::SERVICE_UNAVAILABLE);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("no statement within 2s"), "{body}");
    assert!(
        elapsed >= timeouts.statement && elapsed < timeouts.statement + Duration::from_millis(1500),
        "{elapsed:?}"
    );
}
