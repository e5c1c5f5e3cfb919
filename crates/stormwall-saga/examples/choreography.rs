//! The seeds' order flow as choreography: four services — order, payment, inventory,
//! shipping — each with its own SQLite database (its state, its outbox, its inbox),
//! reacting to each other's events over Redis Streams. No one drives the saga; the
//! compensations are listeners too:
//!
//! ```text
//! order.created ─▶ payment ─▶ payment.completed ─▶ inventory ─▶ inventory.reserved ─▶ shipping
//!                    │                                 │                                  │
//!                    ▼                                 ▼                                  ▼
//!             payment.failed          inventory.reservation.failed ─▶ payment      shipping.scheduled
//!                    │                                                  │                 │
//!                    ▼                                                  ▼                 ▼
//!             order.cancelled  ◀──────────────────────────────── payment.refunded   order.completed
//! ```
//!
//! Order 1 goes through (the payment gateway fails once: the pipeline retries); order 2's
//! payment is declined; order 3 is paid, then out of stock: refunded, cancelled; order 4
//! is paid and reserved, but no courier takes pianos: its `inventory.reserved` event is
//! dead-lettered in shipping's group and the saga stalls there. A tracker (its own
//! consumer group on every topic) shows how far each saga got — on the live dashboard too
//! (stormwall's dashboard, with its saga panel fed by the tracker, and each consumer's
//! pipeline as a route).
//!
//! `cargo run -p stormwall-saga --features redis --example choreography [-- --serve]`
//! (starts a throwaway redis-server on a free port, or set `REDIS_URL`; prints the
//! dashboard's address; `--serve` keeps serving it after the flow until Ctrl-C).

use rusqlite::{params, Connection, Transaction};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use stormwall::circuit_breaker::CircuitBreakerOptions;
use stormwall::pipeline::Strategy;
use stormwall::retry::RetryOptions;
use stormwall::telemetry::EventListener;
use stormwall::Pipeline;
use stormwall_proxy::dashboard::Dashboard;
use stormwall_saga::choreography::{
    Consumer, ConsumerOptions, Message, RedisStreams, Relay, SagaStatus, SagaTracker, SqliteInbox,
    SqliteOutbox, SqliteOutboxSource, Subscription,
};
use tokio::sync::watch;

type Error = Box<dyn std::error::Error + Send + Sync>;
/// A service's reaction to one event of a topic.
type Handler = Arc<dyn Fn(&Message) -> Result<(), String> + Send + Sync>;

/// A service's own database: its state, its outbox (topic = the service's name) and its
/// inbox.
#[derive(Clone)]
struct Service {
    name: &'static str,
    db: Arc<Mutex<Connection>>,
}

impl Service {
    fn open(dir: &std::path::Path, name: &'static str, schema: &str) -> Result<Self, Error> {
        let db = Connection::open(dir.join(format!("{name}.db")))?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.execute_batch(schema)?;
        SqliteOutbox::install(&db)?;
        SqliteInbox::install(&db)?;
        Ok(Service {
            name,
            db: Arc::new(Mutex::new(db)),
        })
    }

    /// Handles `event` once (the inbox): `react` changes the state and returns the events
    /// to publish, all in one transaction.
    fn react(
        &self,
        event: &Message,
        react: impl FnOnce(&Transaction<'_>) -> Result<Vec<Message>, Error>,
    ) -> Result<(), String> {
        let mut db = self.db.lock().unwrap();
        let tx = db.transaction().map_err(|e| e.to_string())?;
        if SqliteInbox::first_time(&tx, self.name, event).map_err(|e| e.to_string())? {
            for out in react(&tx).map_err(|e| e.to_string())? {
                println!("  {:<10} {:<28} -> {}", self.name, event.kind, out.kind);
                SqliteOutbox::append(&tx, &out).map_err(|e| e.to_string())?;
            }
        }
        tx.commit().map_err(|e| e.to_string())
    }
}

/// Every handler runs through this: a timeout per attempt, three retries, a breaker;
/// shown on the dashboard as route `name`.
fn pipeline(name: String, dashboard: &Arc<Dashboard>) -> Pipeline<impl Strategy<(), String>> {
    Pipeline::builder()
        .name(name)
        .listener(Arc::clone(dashboard) as Arc<dyn EventListener>)
        .retry(RetryOptions::exponential(Duration::from_millis(20)).max_retries(3))
        .circuit_breaker(CircuitBreakerOptions::consecutive(20))
        .timeout(Duration::from_secs(2))
        .build()
        .expect("a valid pipeline")
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Order {
    id: String,
    sku: String,
    amount: i64,
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let _redis; // a throwaway server unless REDIS_URL is given
    let url = match std::env::var("REDIS_URL") {
        Ok(url) => url,
        Err(_) => {
            let server = stormwall_testkit::RedisServer::start();
            let url = server.url();
            _redis = server;
            url
        }
    };
    let dir = std::env::temp_dir().join(format!("stormwall-choreography-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let run = format!("{}", std::process::id()); // topics of this run
    let topic = |service: &str| format!("{service}-{run}");

    let order = Service::open(
        &dir,
        "order",
        "CREATE TABLE orders (id TEXT PRIMARY KEY, status TEXT)",
    )?;
    let payment = Service::open(
        &dir,
        "payment",
        "CREATE TABLE charges (order_id TEXT PRIMARY KEY, amount INTEGER, refunded INTEGER)",
    )?;
    let inventory = Service::open(
        &dir,
        "inventory",
        "CREATE TABLE stock (sku TEXT PRIMARY KEY, available INTEGER);
        INSERT INTO stock VALUES ('lamp', 5), ('sofa', 0), ('piano', 1)",
    )?;
    let shipping = Service::open(
        &dir,
        "shipping",
        "CREATE TABLE shipments (order_id TEXT PRIMARY KEY)",
    )?;
    let services = [&order, &payment, &inventory, &shipping];

    // The dashboard: each consumer's pipeline as a route, the sagas as the tracker sees
    // them (a stalled saga after a second without news).
    let dashboard = Dashboard::new();
    let listener = stormwall_proxy::dashboard::bind(0).await?;
    println!("dashboard: http://{}/dashboard", listener.local_addr()?);
    let router = dashboard.router();
    tokio::spawn(async move { axum::serve(listener, router).await });
    let tracker = SagaTracker::open(
        dir.join("tracker.db"),
        ["order.completed", "order.cancelled"],
    )?
    .stalled_after(Duration::from_secs(1));
    let reader = tracker.clone();
    dashboard.feed_sagas(Duration::from_millis(250), move || {
        let tracker = reader.clone();
        async move { tracker.overview(50).await }
    });

    let (stop, stopped) = watch::channel(false);
    let shutdown = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        }
    };
    let mut tasks = Vec::new();

    // One relay per service: its outbox to its topic.
    for service in services {
        let relay = Relay::new(
            SqliteOutboxSource::open(dir.join(format!("{}.db", service.name)))?,
            RedisStreams::new(&url, topic(service.name))?,
            Pipeline::builder()
                .retry(RetryOptions::exponential(Duration::from_millis(20)).max_retries(5))
                .build()?,
        );
        let shutdown = shutdown();
        tasks.push(tokio::spawn(async move { relay.run(shutdown).await }));
    }

    // The consumers: (service, topic it listens to, handler). An event whose handler
    // fails twice (each time after the pipeline's retries) goes to the dead letters.
    let options = ConsumerOptions {
        max_attempts: 2,
        ..Default::default()
    };
    let consume = |group: &str, from: &str, handler: Handler| {
        let (pipeline, options) = (
            pipeline(format!("{group} ← {from}"), &dashboard),
            options.clone(),
        );
        let subscription =
            RedisStreams::new(&url, topic(from)).map(|s| s.subscribe(group, format!("{group}-1")));
        let shutdown = shutdown();
        tokio::spawn(async move {
            let mut consumer = Consumer::new(subscription?, pipeline, options);
            consumer
                .run(
                    move |m: Message| {
                        let handler = handler.clone();
                        async move { handler(&m) }
                    },
                    shutdown,
                )
                .await;
            Ok::<(), stormwall_saga::SagaError>(())
        })
    };
    let mut consumers = Vec::new();

    // Payment: charges orders (the gateway fails once; it declines over 1000), refunds
    // orders that could not be reserved.
    let gateway_calls = Arc::new(AtomicU32::new(0));
    let p = payment.clone();
    let calls = gateway_calls.clone();
    consumers.push(consume(
        payment.name,
        "order",
        Arc::new(move |e: &Message| {
            if e.kind != "order.created" {
                return Ok(());
            }
            if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                return Err("payment gateway timed out".into()); // retried by the pipeline
            }
            let o: Order = e.payload().map_err(|e| e.to_string())?;
            p.react(e, |tx| {
                if o.amount > 1000 {
                    return Ok(vec![Message::reacting_to(e, "payment.failed", &o.id, &o)?]);
                }
                tx.execute(
                    "INSERT INTO charges VALUES (?1, ?2, 0)",
                    params![o.id, o.amount],
                )?;
                Ok(vec![Message::reacting_to(
                    e,
                    "payment.completed",
                    &o.id,
                    &o,
                )?])
            })
        }),
    ));
    let p = payment.clone();
    consumers.push(consume(
        payment.name,
        "inventory",
        Arc::new(move |e: &Message| {
            if e.kind != "inventory.reservation.failed" {
                return Ok(());
            }
            let o: Order = e.payload().map_err(|e| e.to_string())?;
            p.react(e, |tx| {
                tx.execute(
                    "UPDATE charges SET refunded = 1 WHERE order_id = ?1",
                    params![o.id],
                )?;
                Ok(vec![Message::reacting_to(
                    e,
                    "payment.refunded",
                    &o.id,
                    &o,
                )?])
            })
        }),
    ));
    // Inventory: reserves stock for paid orders.
    let i = inventory.clone();
    consumers.push(consume(
        inventory.name,
        "payment",
        Arc::new(move |e: &Message| {
            if e.kind != "payment.completed" {
                return Ok(());
            }
            let o: Order = e.payload().map_err(|e| e.to_string())?;
            i.react(e, |tx| {
                let reserved = tx.execute(
                    "UPDATE stock SET available = available - 1 WHERE sku = ?1 AND available > 0",
                    params![o.sku],
                )?;
                let kind = if reserved == 1 {
                    "inventory.reserved"
                } else {
                    "inventory.reservation.failed"
                };
                Ok(vec![Message::reacting_to(e, kind, &o.id, &o)?])
            })
        }),
    ));
    // Shipping: schedules reserved orders.
    let s = shipping.clone();
    consumers.push(consume(
        shipping.name,
        "inventory",
        Arc::new(move |e: &Message| {
            if e.kind != "inventory.reserved" {
                return Ok(());
            }
            let o: Order = e.payload().map_err(|e| e.to_string())?;
            if o.sku == "piano" {
                return Err("no courier takes pianos".into()); // dead-lettered: the saga stalls
            }
            s.react(e, |tx| {
                tx.execute("INSERT INTO shipments VALUES (?1)", params![o.id])?;
                Ok(vec![Message::reacting_to(
                    e,
                    "shipping.scheduled",
                    &o.id,
                    &o,
                )?])
            })
        }),
    ));
    // Order: completes shipped orders, cancels declined or refunded ones.
    for from in ["payment", "shipping"] {
        let o = order.clone();
        consumers.push(consume(
            order.name,
            from,
            Arc::new(move |e: &Message| {
                let (status, kind) = match e.kind.as_str() {
                    "shipping.scheduled" => ("completed", "order.completed"),
                    "payment.failed" | "payment.refunded" => ("cancelled", "order.cancelled"),
                    _ => return Ok(()),
                };
                let order: Order = e.payload().map_err(|e| e.to_string())?;
                o.react(e, |tx| {
                    tx.execute(
                        "UPDATE orders SET status = ?2 WHERE id = ?1",
                        params![order.id, status],
                    )?;
                    Ok(vec![Message::reacting_to(e, kind, &order.id, &order)?])
                })
            }),
        ));
    }
    // The tracker: a group of its own on every topic.
    for service in services {
        let subscription =
            RedisStreams::new(&url, topic(service.name))?.subscribe("tracker", "tracker-1");
        let (tracker, shutdown) = (tracker.clone(), shutdown());
        let pipeline = pipeline(format!("tracker ← {}", service.name), &dashboard);
        consumers.push(tokio::spawn(async move {
            let mut consumer = Consumer::new(subscription, pipeline, ConsumerOptions::default());
            let record = move |m: Message| {
                let tracker = tracker.clone();
                async move {
                    tracker
                        .record(&m)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                }
            };
            consumer.run(record, shutdown).await;
            Ok(())
        }));
    }

    // Four orders, each committed with its event.
    let mut sagas = Vec::new();
    for (id, sku, amount) in [
        ("order-1", "lamp", 40),
        ("order-2", "lamp", 5000),
        ("order-3", "sofa", 900),
        ("order-4", "piano", 700),
    ] {
        let o = Order {
            id: id.into(),
            sku: sku.into(),
            amount,
        };
        let created = Message::new("order.created", id, &o)?;
        let mut db = order.db.lock().unwrap();
        let tx = db.transaction()?;
        tx.execute("INSERT INTO orders VALUES (?1, 'pending')", params![id])?;
        SqliteOutbox::append(&tx, &created)?;
        tx.commit()?;
        println!(
            "  {:<10} {:<28} -> order.created",
            "order",
            format!("(new {id}: {amount} for a {sku})")
        );
        sagas.push((id, created.correlation_id));
    }

    // Until the tracker has seen three sagas finish and order 4 stall, its event in
    // shipping's dead letters.
    let mut shipping_group =
        RedisStreams::new(&url, topic("inventory"))?.subscribe("shipping", "inspector");
    let started = Instant::now();
    loop {
        let all = tracker.all().await?;
        let finished = all.iter().filter(|p| p.finished()).count();
        let stalled = all.iter().any(|p| {
            p.correlation_id == sagas[3].1
                && p.status == SagaStatus::Stalled
                && p.last_kind() == "inventory.reserved"
        });
        if finished == 3 && stalled && !shipping_group.dead_letters().await?.is_empty() {
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            return Err(format!("sagas not where expected after 60 s: {all:#?}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop.send(true);
    for task in tasks {
        task.await?;
    }
    for consumer in consumers {
        consumer.await??;
    }

    println!("\nsagas, as the tracker saw them:");
    let mut outcome = Vec::new();
    for (id, correlation) in &sagas {
        let progress = tracker
            .progress(correlation)
            .await?
            .ok_or("untracked saga")?;
        println!("  {id}: {}", progress.kinds().join(" → "));
        outcome.push(progress.outcome().unwrap_or_default().to_owned());
    }
    let status = |id: &str| -> Result<String, Error> {
        Ok(order.db.lock().unwrap().query_row(
            "SELECT status FROM orders WHERE id = ?1",
            [id],
            |r| r.get(0),
        )?)
    };
    assert_eq!(
        outcome,
        ["order.completed", "order.cancelled", "order.cancelled", ""]
    );
    let stalled = tracker.stalled().await?;
    assert_eq!(stalled.len(), 1);
    assert_eq!(stalled[0].last_kind(), "inventory.reserved");
    println!(
        "stalled: {} after {} (shipping's dead letter: {})",
        sagas[3].0,
        stalled[0].last_kind(),
        shipping_group.dead_letters().await?[0].reason
    );
    assert_eq!(status("order-1")?, "completed");
    assert_eq!(status("order-3")?, "cancelled");
    let refunded: i64 = payment.db.lock().unwrap().query_row(
        "SELECT refunded FROM charges WHERE order_id = 'order-3'",
        [],
        |r| r.get(0),
    )?;
    assert_eq!(refunded, 1, "order 3 was refunded");
    println!(
        "gateway calls: {} (one failure retried)",
        gateway_calls.load(Ordering::SeqCst)
    );
    if std::env::args().any(|a| a == "--serve") {
        println!("serving the dashboard until Ctrl-C");
        tokio::signal::ctrl_c().await?;
    }
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}
