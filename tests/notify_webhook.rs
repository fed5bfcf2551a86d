//! Notifications end to end against a real Postgres and a real HTTP receiver on
//! loopback: incident rows written as the evaluator writes them become signed webhooks
//! (verified with the Standard Webhooks reference library), once per routed channel and
//! in order; retries keep the event id; a wrong secret is rejected; a channel's rate
//! limit coalesces the excess into a summary and drops nothing.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sqlx::PgPool;
use support::cluster::{seed_datacenters, seed_monitor};
use support::eventually::eventually;
use support::notify::{
    open_incident, outbox, resolve_incident, webhook_channel, Received, Receiver,
};
use support::pg::TestDb;
use tokio_util::sync::CancellationToken;
use vantage::agent::{self, AgentIdentity};
use vantage::leadership::{ElectionConfig, Elector, LeadershipScope};
use vantage::metrics::Metrics;
use vantage::notify::{self, signature, Deliverer, NotifyConfig, Outcome};
use vantage::probe::Prober;

fn config() -> NotifyConfig {
    let mut config = NotifyConfig::new(Arc::new(Prober::builder().build().unwrap()));
    config.attempt_timeout = Duration::from_secs(3);
    config.backoff_base = Duration::from_millis(200);
    config.backoff_max = Duration::from_secs(1);
    config
}

/// A worker as `vantage run` starts it: elected through the evaluator's lock.
struct Worker {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    election: tokio::task::JoinHandle<()>,
    metrics: Arc<Metrics>,
}

impl Worker {
    async fn start(db: &TestDb, datacenter: i32, config: NotifyConfig) -> Worker {
        let agent_id = agent::Registration::start(
            &db.pool,
            AgentIdentity::of_this_process(datacenter, Some("evaluator-a".into())),
        )
        .await
        .unwrap()
        .id();
        let shutdown = CancellationToken::new();
        let options = db.url.parse().unwrap();
        let (elector, election) = Elector::spawn(
            ElectionConfig::new(options, LeadershipScope::Evaluator, agent_id),
            shutdown.clone(),
        );
        let metrics = Metrics::new();
        let task = notify::spawn(
            db.pool.clone(),
            elector.subscribe(),
            config,
            metrics.clone(),
            shutdown.clone(),
        );
        Worker {
            shutdown,
            task,
            election,
            metrics,
        }
    }

    async fn stop(self) -> Arc<Metrics> {
        self.shutdown.cancel();
        self.task.await.unwrap();
        self.election.await.unwrap();
        self.metrics
    }
}

/// Verifies a delivery with the Standard Webhooks reference library.
fn verify(secret: &str, request: &Received) -> bool {
    standardwebhooks::Webhook::new(secret)
        .unwrap()
        .verify(&request.body, &request.headers)
        .is_ok()
}

/// 401 unless the request verifies with the secret of its path (`/a` -> `secrets["/a"]`).
fn verifying(secrets: HashMap<String, String>) -> impl Fn(&Received) -> (u16, Duration) {
    move |request| match secrets.get(&request.path) {
        Some(secret) if verify(secret, request) => (200, Duration::ZERO),
        _ => (401, Duration::ZERO),
    }
}

async fn all_settled(pool: &PgPool) -> bool {
    sqlx::query_scalar::<_, i64>("SELECT count(*) FROM notifications WHERE status = 'pending'")
        .fetch_one(pool)
        .await
        .unwrap()
        == 0
}

#[tokio::test]
async fn an_incident_opened_and_resolved_reaches_each_routed_channel_twice_in_order() {
    let db = TestDb::fresh().await;
    let dcs = seed_datacenters(&db.pool, &["va", "lon"]).await;
    let checkout = seed_monitor(&db.pool, "checkout", "https://shop.example/health", 10).await;
    let blog = seed_monitor(&db.pool, "blog", "https://blog.example/", 10).await;
    let receiver = Receiver::start().await;
    let secrets: HashMap<String, String> = ["/all", "/checkout", "/blog"]
        .into_iter()
        .map(|p| (p.to_string(), signature::new_secret()))
        .collect();
    receiver.respond_with(verifying(secrets.clone()));
    let all = webhook_channel(
        &db.pool,
        "ops",
        &receiver.url("/all"),
        &secrets["/all"],
        None,
    )
    .await;
    let shop = webhook_channel(
        &db.pool,
        "shop-team",
        &receiver.url("/checkout"),
        &secrets["/checkout"],
        Some(checkout),
    )
    .await;
    let blog_only = webhook_channel(
        &db.pool,
        "blog-team",
        &receiver.url("/blog"),
        &secrets["/blog"],
        Some(blog),
    )
    .await;
    let worker = Worker::start(&db, dcs[0], config()).await;

    let incident = open_incident(&db.pool, checkout, &dcs).await;
    resolve_incident(&db.pool, incident).await;

    receiver
        .wait_until("four deliveries", Duration::from_secs(20), |r| r.len() >= 4)
        .await;
    eventually(
        "every notification recorded",
        Duration::from_secs(10),
        || async { all_settled(&db.pool).await.then_some(()) },
    )
    .await;
    let received = receiver.received();
    assert_eq!(received.len(), 4, "exactly two events per routed channel");
    for path in ["/all", "/checkout"] {
        let got: Vec<&Received> = received.iter().filter(|r| r.path == path).collect();
        let events: Vec<String> = got
            .iter()
            .map(|r| r.json()["event"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(events, ["incident.opened", "incident.resolved"], "{path}");
        for request in &got {
            assert_eq!(request.method, "POST");
            assert_eq!(request.header("content-type"), "application/json");
            assert!(
                verify(&secrets[path], request),
                "{path}: signature verifies"
            );
            let body = request.json();
            assert_eq!(
                body["id"],
                request.header("webhook-id"),
                "the body carries the event id"
            );
            assert_eq!(body["incident"]["id"], incident);
            assert_eq!(body["monitor"]["name"], "checkout");
            assert_eq!(body["links"]["monitor_url"], "https://shop.example/health");
            let codes: Vec<&str> = body["incident"]["datacenters"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["code"].as_str().unwrap())
                .collect();
            assert_eq!(codes, ["va", "lon"]);
        }
        assert_eq!(
            got[0].json()["change"]["sample_error"],
            "connection refused"
        );
        // The resolved event saw the incident as the evaluator left it at commit.
        assert!(got[1].json()["incident"]["resolved_at"].is_string());
        assert!(got[1].json()["incident"]["duration_seconds"].is_number());
        assert_ne!(got[0].header("webhook-id"), got[1].header("webhook-id"));
    }
    let ids: BTreeSet<&str> = received.iter().map(|r| r.header("webhook-id")).collect();
    assert_eq!(ids.len(), 4, "one event id per (event, channel)");
    assert!(
        outbox(&db.pool, blog_only).await.is_empty(),
        "the blog route matches nothing here"
    );
    for channel in [all, shop] {
        assert_eq!(
            outbox(&db.pool, channel).await,
            [
                ("incident.opened".to_string(), "sent".to_string(), 1),
                ("incident.resolved".to_string(), "sent".to_string(), 1)
            ]
        );
    }
    let metrics = worker.stop().await.render();
    assert!(
        metrics.contains(
            r#"vantage_notification_attempts_total{channel_kind="webhook",result="sent"} 4"#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_receiver_down_for_a_while_gets_the_event_later_with_the_same_id() {
    let db = TestDb::fresh().await;
    let dcs = seed_datacenters(&db.pool, &["va"]).await;
    let monitor = seed_monitor(&db.pool, "api", "https://api.example/", 10).await;
    let receiver = Receiver::start().await;
    let secret = signature::new_secret();
    let channel = webhook_channel(&db.pool, "ops", &receiver.url("/hook"), &secret, None).await;
    // Down (500) for two seconds from the first attempt, then up.
    let first_seen = std::sync::Mutex::new(None::<std::time::Instant>);
    receiver.respond_with(move |_| {
        let first = *first_seen
            .lock()
            .unwrap()
            .get_or_insert_with(std::time::Instant::now);
        if first.elapsed() < Duration::from_secs(2) {
            (500, Duration::ZERO)
        } else {
            (200, Duration::ZERO)
        }
    });
    let worker = Worker::start(&db, dcs[0], config()).await;

    open_incident(&db.pool, monitor, &dcs).await;

    eventually("the event delivered", Duration::from_secs(20), || async {
        (outbox(&db.pool, channel).await.first().map(|r| r.1.clone()) == Some("sent".into()))
            .then_some(())
    })
    .await;
    worker.stop().await;
    let received = receiver.received();
    assert!(
        received.len() >= 3,
        "retried while down: {} requests",
        received.len()
    );
    let ids: BTreeSet<&str> = received.iter().map(|r| r.header("webhook-id")).collect();
    assert_eq!(ids.len(), 1, "every attempt carries the same event id");
    assert!(
        received.iter().all(|r| verify(&secret, r)),
        "every attempt is signed anew and verifies"
    );
    let attempts: Vec<(i32, Option<i32>, Option<String>)> = sqlx::query_as(
        "SELECT attempt, status_code, error FROM notification_attempts WHERE channel_id = $1 ORDER BY attempt",
    )
    .bind(channel)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(attempts.len(), received.len(), "every attempt is recorded");
    let (last, failed) = attempts.split_last().unwrap();
    assert_eq!(last.1, Some(200));
    assert_eq!(last.2, None);
    for (_, code, error) in failed {
        assert_eq!(*code, Some(500));
        assert_eq!(error.as_deref(), Some("HTTP 500: receiver says 500"));
    }
    assert_eq!(outbox(&db.pool, channel).await[0].2, received.len() as i32);
}

#[tokio::test]
async fn a_wrong_secret_is_rejected_by_a_verifying_receiver() {
    let db = TestDb::fresh().await;
    let dcs = seed_datacenters(&db.pool, &["va"]).await;
    let monitor = seed_monitor(&db.pool, "api", "https://api.example/", 10).await;
    let receiver = Receiver::start().await;
    let expected = signature::new_secret();
    let configured = signature::new_secret();
    receiver.respond_with(verifying(HashMap::from([
        ("/right".to_string(), expected.clone()),
        ("/wrong".to_string(), expected.clone()),
    ])));
    let wrong = webhook_channel(
        &db.pool,
        "wrong",
        &receiver.url("/wrong"),
        &configured,
        None,
    )
    .await;
    let right = webhook_channel(&db.pool, "right", &receiver.url("/right"), &expected, None).await;
    open_incident(&db.pool, monitor, &dcs).await;

    let deliverer = Deliverer::new(db.pool.clone(), config(), None);
    let outcomes = deliverer.deliver_due().await.unwrap();

    assert_eq!(outcomes.len(), 2);
    assert!(outcomes.contains(&Outcome::Sent {
        status_code: Some(200)
    }));
    assert!(outcomes.iter().any(|o| matches!(o,
        Outcome::Failed { status_code: Some(401), error, final_attempt: false, .. }
            if error == "HTTP 401: receiver says 401")));
    assert_eq!(outbox(&db.pool, right).await[0].1, "sent");
    let (status, attempts, error): (String, i32, Option<String>) = sqlx::query_as(
        "SELECT status, attempts, last_error FROM notifications WHERE channel_id = $1",
    )
    .bind(wrong)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        (status.as_str(), attempts),
        ("pending", 1),
        "retried later, not marked sent"
    );
    assert_eq!(error.as_deref(), Some("HTTP 401: receiver says 401"));
}

#[tokio::test]
async fn over_the_rate_limit_the_excess_is_coalesced_into_a_summary_and_nothing_is_dropped() {
    let db = TestDb::fresh().await;
    let dcs = seed_datacenters(&db.pool, &["va"]).await;
    let schedule: i32 = sqlx::query_scalar("INSERT INTO schedules (name, interval_seconds, timeout_ms) VALUES ('10s', 10, 5000) RETURNING id")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let monitors: Vec<i32> = sqlx::query_scalar(
        "INSERT INTO api_monitors (name, url, schedule_id, all_datacenters) \
         SELECT 'm' || g, 'https://m' || g || '.example/', $1, true FROM generate_series(1, 100) g RETURNING id",
    )
    .bind(schedule)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let receiver = Receiver::start().await;
    let secret = signature::new_secret();
    let channel = webhook_channel(&db.pool, "ops", &receiver.url("/hook"), &secret, None).await;
    let limit: i64 = sqlx::query_scalar(
        "SELECT rate_limit_per_minute::bigint FROM notification_channels WHERE id = $1",
    )
    .bind(channel)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(limit, 20, "the default limit");
    // The limit is per minute; a window of 5 s shows it sliding within the test.
    let window = Duration::from_secs(5);
    let mut config = config();
    config.rate_window = window;
    let worker = Worker::start(&db, dcs[0], config).await;

    // 100 incidents within a few seconds, each in its own transaction as the evaluator does.
    for monitor in &monitors {
        open_incident(&db.pool, *monitor, &dcs).await;
    }

    eventually(
        "every notification sent or coalesced",
        Duration::from_secs(30),
        || async { all_settled(&db.pool).await.then_some(()) },
    )
    .await;
    worker.stop().await;
    let received = receiver.received();
    let busiest: i64 = sqlx::query_scalar(
        "SELECT max((SELECT count(*) FROM notification_attempts b \
                     WHERE b.channel_id = a.channel_id AND b.started_at > a.started_at - $2 \
                       AND b.started_at <= a.started_at)) \
         FROM notification_attempts a WHERE a.channel_id = $1",
    )
    .bind(channel)
    .bind(notify::outbox::interval(window))
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(busiest <= limit, "{busiest} messages within one window");
    let attempts: i64 =
        sqlx::query_scalar("SELECT count(*) FROM notification_attempts WHERE channel_id = $1")
            .bind(channel)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        attempts,
        received.len() as i64,
        "every message received is an attempt counted"
    );
    assert!(
        received.len() < 100,
        "{} messages for 100 events",
        received.len()
    );
    let summaries: Vec<&Received> = received
        .iter()
        .filter(|r| r.json()["event"] == "notifications.coalesced")
        .collect();
    assert!(!summaries.is_empty(), "the excess went into a summary");
    let mut delivered: BTreeSet<String> = BTreeSet::new();
    for request in &received {
        assert!(verify(&secret, request));
        let body = request.json();
        if body["event"] == "notifications.coalesced" {
            let events = body["events"].as_array().unwrap();
            assert_eq!(body["count"], events.len());
            delivered.extend(events.iter().map(|e| e["id"].as_str().unwrap().to_string()));
        } else {
            delivered.insert(body["id"].as_str().unwrap().to_string());
        }
    }
    let queued: BTreeSet<String> = sqlx::query_scalar(
        "SELECT event_id::text FROM notifications WHERE channel_id = $1 AND event = 'incident.opened'",
    )
    .bind(channel)
    .fetch_all(&db.pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    assert_eq!(queued.len(), 100);
    assert_eq!(
        delivered, queued,
        "every event reached the receiver, alone or in a summary"
    );
    let unaccounted: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM notifications n WHERE channel_id = $1 AND NOT ( \
             status = 'sent' OR (status = 'coalesced' AND EXISTS ( \
                 SELECT 1 FROM notifications s WHERE s.id = n.coalesced_into AND s.status = 'sent')))",
    )
    .bind(channel)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        unaccounted, 0,
        "each row is sent or names the summary that was sent"
    );
}

#[tokio::test]
async fn a_certificate_is_announced_once_per_threshold_whatever_the_datacenters_and_probes() {
    let db = TestDb::fresh().await;
    let dcs = seed_datacenters(&db.pool, &["va", "lon"]).await;
    let monitor = seed_monitor(&db.pool, "shop", "https://shop.example/", 10).await;
    let receiver = Receiver::start().await;
    let channel = webhook_channel(
        &db.pool,
        "ops",
        &receiver.url("/hook"),
        &signature::new_secret(),
        None,
    )
    .await;
    sqlx::query("SELECT vantage_ensure_heartbeat_partition(current_date)")
        .execute(&db.pool)
        .await
        .unwrap();
    // Both datacenters, several probes each, see the same certificate: 10 days left,
    // past the 30- and 14-day thresholds.
    sqlx::query(
        "INSERT INTO api_heartbeats (monitor_id, datacenter_id, scheduled_at, executed_at, status, success, total_ms, tls_cert_expires_at) \
         SELECT $1, dc, now() - make_interval(secs => s * 10), now(), 'up', true, 10, date_trunc('second', now()) + interval '10 days' \
         FROM unnest($2::int[]) dc, generate_series(0, 4) s",
    )
    .bind(monitor)
    .bind(&dcs)
    .execute(&db.pool)
    .await
    .unwrap();
    let sweep = || async {
        sqlx::query_scalar::<_, i32>("SELECT vantage_queue_certificate_notices()")
            .fetch_one(&db.pool)
            .await
            .unwrap()
    };

    assert_eq!(
        sweep().await,
        1,
        "one notice for the certificate, at the 14-day threshold"
    );
    assert_eq!(sweep().await, 0, "and not again");
    // A new threshold the certificate has now crossed speaks once more.
    sqlx::query("UPDATE api_monitors SET cert_expiry_days = '{30,14,12,7,1}' WHERE id = $1")
        .bind(monitor)
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(sweep().await, 1);
    assert_eq!(sweep().await, 0);

    let deliverer = Deliverer::new(db.pool.clone(), config(), None);
    assert_eq!(deliverer.deliver_due().await.unwrap().len(), 2);
    let thresholds: Vec<Value> = receiver
        .received()
        .iter()
        .map(|r| {
            let body = r.json();
            assert_eq!(body["event"], "certificate.expiring");
            assert_eq!(body["monitor"]["name"], "shop");
            assert!((body["certificate"]["days_left"].as_f64().unwrap() - 10.0).abs() < 0.1);
            body["certificate"]["threshold_days"].clone()
        })
        .collect();
    assert_eq!(thresholds, [14, 12]);
    assert_eq!(outbox(&db.pool, channel).await.len(), 2);
}

#[tokio::test]
async fn a_notification_still_failing_at_the_give_up_age_fails_for_good_and_is_counted() {
    let db = TestDb::fresh().await;
    let dcs = seed_datacenters(&db.pool, &["va"]).await;
    let monitor = seed_monitor(&db.pool, "api", "https://api.example/", 10).await;
    let receiver = Receiver::start().await;
    receiver.respond_with(|_| (503, Duration::ZERO));
    let channel = webhook_channel(
        &db.pool,
        "ops",
        &receiver.url("/hook"),
        &signature::new_secret(),
        None,
    )
    .await;
    let mut config = config();
    config.give_up_after = Duration::from_secs(2);
    let worker = Worker::start(&db, dcs[0], config).await;

    open_incident(&db.pool, monitor, &dcs).await;

    eventually(
        "the notification given up",
        Duration::from_secs(20),
        || async { (outbox(&db.pool, channel).await[0].1 == "failed").then_some(()) },
    )
    .await;
    let metrics = worker.stop().await.render();
    let (attempts, error): (i32, Option<String>) =
        sqlx::query_as("SELECT attempts, last_error FROM notifications WHERE channel_id = $1")
            .bind(channel)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(attempts >= 2, "retried before giving up: {attempts}");
    assert_eq!(receiver.received().len(), attempts as usize);
    assert_eq!(error.as_deref(), Some("HTTP 503: receiver says 503"));
    assert!(
        metrics.contains(
            r#"vantage_notification_attempts_total{channel_kind="webhook",result="failed"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            r#"vantage_notification_attempts_total{{channel_kind="webhook",result="retry"}} {}"#,
            attempts - 1
        )),
        "{metrics}"
    );
}
