//! The notification schema against a real Postgres: which incident events become which
//! outbox rows (routes, mute, notify_on_resolve, datacenter incidents, event names), that
//! they commit or roll back with the event, channel configs rejected with a message
//! naming the field, and the Grafana reader role unable to read channel secrets.

mod support;

use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use support::cluster::{seed_datacenters, seed_monitor};
use support::notify::{channel, open_incident, outbox, resolve_incident, route};
use support::pg::TestDb;

const SECRET: &str = "whsec_c2VjcmV0LWtleS1vZi10aGUtdGVzdHM=";

async fn webhook(pool: &PgPool, name: &str) -> i32 {
    channel(
        pool,
        name,
        "webhook",
        json!({"url": "http://127.0.0.1:9/", "secret": SECRET}),
    )
    .await
}

async fn events(pool: &PgPool, channel: i32) -> Vec<String> {
    outbox(pool, channel)
        .await
        .into_iter()
        .map(|(event, _, _)| event)
        .collect()
}

async fn add_event(pool: &PgPool, incident: i64, kind: &str, datacenters: &[i32]) {
    sqlx::query("INSERT INTO incident_events (incident_id, kind, at, datacenters) VALUES ($1, $2, now(), $3)")
        .bind(incident)
        .bind(kind)
        .bind(datacenters)
        .execute(pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn incident_events_become_outbox_rows_for_the_routes_that_match() {
    let db = TestDb::fresh().await;
    let pool = &db.pool;
    let dcs = seed_datacenters(pool, &["va", "lon", "syd"]).await;
    let api = seed_monitor(pool, "api", "https://api.example/", 10).await;
    sqlx::query("UPDATE api_monitors SET tags = '{payments}' WHERE id = $1")
        .bind(api)
        .execute(pool)
        .await
        .unwrap();

    let everything = webhook(pool, "everything").await;
    route(pool, everything, None).await;
    let payments = webhook(pool, "payments").await;
    sqlx::query("INSERT INTO notification_routes (channel_id, tags, notify_on_resolve) VALUES ($1, '{payments}', false)")
        .bind(payments)
        .execute(pool)
        .await
        .unwrap();
    let sydney = webhook(pool, "sydney").await;
    sqlx::query("INSERT INTO notification_routes (channel_id, datacenter_ids) VALUES ($1, $2)")
        .bind(sydney)
        .bind(vec![dcs[2]])
        .execute(pool)
        .await
        .unwrap();
    let warnings = webhook(pool, "warnings").await;
    sqlx::query(
        "INSERT INTO notification_routes (channel_id, severities) VALUES ($1, '{warning}')",
    )
    .bind(warnings)
    .execute(pool)
    .await
    .unwrap();
    let unrouted = webhook(pool, "unrouted").await;
    let disabled = webhook(pool, "disabled").await;
    route(pool, disabled, None).await;
    sqlx::query("UPDATE notification_channels SET enabled = false WHERE id = $1")
        .bind(disabled)
        .execute(pool)
        .await
        .unwrap();

    // A monitor incident from va and lon: its life, event by event.
    let incident = open_incident(pool, api, &dcs[..2]).await;
    add_event(pool, incident, "datacenter_joined", &[dcs[2]]).await;
    sqlx::query("UPDATE incidents SET datacenters = datacenters || $2 WHERE id = $1")
        .bind(incident)
        .bind(dcs[2])
        .execute(pool)
        .await
        .unwrap();
    add_event(pool, incident, "acknowledged", &[]).await;
    resolve_incident(pool, incident).await;

    assert_eq!(
        events(pool, everything).await,
        [
            "incident.opened",
            "incident.updated",
            "incident.acknowledged",
            "incident.resolved"
        ]
    );
    assert_eq!(
        events(pool, payments).await,
        [
            "incident.opened",
            "incident.updated",
            "incident.acknowledged"
        ],
        "by tag; notify_on_resolve = false"
    );
    assert_eq!(
        events(pool, sydney).await,
        [
            "incident.updated",
            "incident.acknowledged",
            "incident.resolved"
        ],
        "from the moment syd joined"
    );
    assert!(
        events(pool, warnings).await.is_empty(),
        "monitor_down is critical"
    );
    assert!(events(pool, unrouted).await.is_empty());
    assert!(events(pool, disabled).await.is_empty());

    // An impaired datacenter: its own event names; monitor and tag routes skip it.
    let mut tx = pool.begin().await.unwrap();
    let impaired: i64 = sqlx::query_scalar(
        "INSERT INTO incidents (kind, severity, datacenter_id, opened_at, cause) \
         VALUES ('datacenter_impaired', 'warning', $1, now(), 'no leader') RETURNING id",
    )
    .bind(dcs[2])
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    add_event_tx(&mut tx, impaired, "opened").await;
    tx.commit().await.unwrap();
    resolve_incident(pool, impaired).await;
    assert_eq!(
        events(pool, warnings).await,
        ["datacenter.impaired", "datacenter.recovered"]
    );
    assert_eq!(
        &events(pool, sydney).await[3..],
        ["datacenter.impaired", "datacenter.recovered"]
    );
    assert_eq!(
        events(pool, payments).await,
        [
            "incident.opened",
            "incident.updated",
            "incident.acknowledged"
        ],
        "a tag route skips datacenter incidents"
    );
    let body: serde_json::Value = sqlx::query_scalar(
        "SELECT payload FROM notifications WHERE channel_id = $1 AND event = 'datacenter.impaired'",
    )
    .bind(warnings)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(body["datacenter"]["code"], "syd");
    assert_eq!(body["incident"]["cause"], "no leader");
}

async fn add_event_tx(tx: &mut sqlx::Transaction<'_, sqlx::Postgres>, incident: i64, kind: &str) {
    sqlx::query("INSERT INTO incident_events (incident_id, kind, at) VALUES ($1, $2, now())")
        .bind(incident)
        .bind(kind)
        .execute(&mut **tx)
        .await
        .unwrap();
}

#[tokio::test]
async fn muted_incidents_and_rolled_back_events_queue_nothing() {
    let db = TestDb::fresh().await;
    let pool = &db.pool;
    let dcs = seed_datacenters(pool, &["va"]).await;
    let api = seed_monitor(pool, "api", "https://api.example/", 10).await;
    let web = seed_monitor(pool, "web", "https://web.example/", 10).await;
    let everything = webhook(pool, "everything").await;
    route(pool, everything, None).await;

    // Opened while muted (the evaluator sets incidents.muted).
    let mut tx = pool.begin().await.unwrap();
    let muted: i64 = sqlx::query_scalar(
        "INSERT INTO incidents (kind, severity, monitor_id, opened_at, cause, muted) \
         VALUES ('monitor_down', 'critical', $1, now(), 'down', true) RETURNING id",
    )
    .bind(api)
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    add_event_tx(&mut tx, muted, "opened").await;
    tx.commit().await.unwrap();
    resolve_incident(pool, muted).await;
    // Muted after it opened: later events are not told either.
    let incident = open_incident(pool, web, &dcs).await;
    sqlx::query("UPDATE api_monitors SET mute_until = now() + interval '1 hour' WHERE id = $1")
        .bind(web)
        .execute(pool)
        .await
        .unwrap();
    resolve_incident(pool, incident).await;
    // The evaluator's transaction fails: no event, no notification.
    let mut tx = pool.begin().await.unwrap();
    add_event_tx(&mut tx, incident, "acknowledged").await;
    tx.rollback().await.unwrap();

    assert_eq!(events(pool, everything).await, ["incident.opened"]);
}

async fn rejected(pool: &PgPool, kind: &str, config: serde_json::Value) -> String {
    let err =
        sqlx::query("INSERT INTO notification_channels (name, kind, config) VALUES ('x', $1, $2)")
            .bind(kind)
            .bind(config)
            .execute(pool)
            .await
            .expect_err("rejected");
    err.as_database_error().unwrap().message().to_string()
}

#[tokio::test]
async fn channel_configs_are_checked_per_kind_with_a_message_naming_the_field() {
    let db = TestDb::fresh().await;
    let pool = &db.pool;
    for (kind, config, message) in [
        ("webhook", json!({"url": "http://x/"}), r#"notification_channels.config of a webhook channel needs "secret": the value, "env:NAME" or "file:/path" (got nothing)"#),
        ("webhook", json!({"url": "http://x/", "secret": "hunter2"}), "notification_channels.config of a webhook channel needs \"secret\" to be whsec_<base64 key> (Standard Webhooks)"),
        ("webhook", json!({"url": "ftp://x/", "secret": SECRET}), r#"notification_channels.config of a webhook channel needs "url" to be an http:// or https:// URL (got "ftp://x/")"#),
        ("slack", json!({"url": "env:SLACK_HOOK", "channel": "#ops"}), r#"notification_channels.config of a slack channel has an unknown field "channel"; the fields are url"#),
        ("telegram", json!({"bot_token": "file:/run/secrets/bot"}), r#"notification_channels.config of a telegram channel needs "chat_id": a number or an @channel name (got nothing)"#),
        ("pagerduty", json!({"routing_key": "k", "api_base": "events.pagerduty.com"}), r#"notification_channels.config of a pagerduty channel needs "api_base" to be an http:// or https:// URL (got "events.pagerduty.com")"#),
        ("email", json!({"host": "smtp.example", "from": "v@example.com", "to": []}), r#"notification_channels.config of an email channel needs "to": a non-empty list of addresses such as ["ops@example.com"] (got [])"#),
        ("email", json!({"host": "smtp.example", "from": "v@example.com", "to": ["a@example.com"], "tls": "none"}), r#"notification_channels.config of an email channel needs "tls" to be "starttls" (port 587) or "implicit" (port 465) (got "none")"#),
        ("email", json!({"host": "smtp.example", "from": "v@example.com", "to": ["a@example.com"], "username": "u"}), "notification_channels.config of an email channel needs both \"username\" and \"password\", or neither"),
    ] {
        assert_eq!(rejected(pool, kind, config).await, message, "{kind}");
    }
    let err = sqlx::query(
        "INSERT INTO notification_channels (name, kind, config) VALUES ('x', 'sms', '{}')",
    )
    .execute(pool)
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("notification_channels.kind must be webhook, slack, telegram, pagerduty or email (got 'sms')"),
        "{err}"
    );
    let err = sqlx::query(
        "INSERT INTO notification_routes (channel_id, incident_kinds) VALUES ($1, '{monitor_dwn}')",
    )
    .bind(webhook(pool, "ok").await)
    .execute(pool)
    .await
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("notification_routes.incident_kinds must list monitor_down"),
        "{err}"
    );

    // Good configs of every kind, secrets literal or referenced.
    for (name, kind, config) in [
        (
            "w",
            "webhook",
            json!({"url": "https://hooks.example/v", "secret": SECRET}),
        ),
        (
            "w2",
            "webhook",
            json!({"url": "https://hooks.example/v", "secret": "env:HOOK_SECRET"}),
        ),
        (
            "s",
            "slack",
            json!({"url": "https://hooks.slack.com/services/T/B/X"}),
        ),
        (
            "t",
            "telegram",
            json!({"bot_token": "123:abc", "chat_id": -100123}),
        ),
        (
            "p",
            "pagerduty",
            json!({"routing_key": "file:/run/secrets/pd"}),
        ),
        (
            "e",
            "email",
            json!({"host": "smtp.example", "port": 465, "tls": "implicit", "from": "Vantage <v@example.com>", "to": ["ops@example.com"], "username": "v", "password": "env:SMTP_PASSWORD"}),
        ),
    ] {
        channel(pool, name, kind, config).await;
    }
    let defaults: (bool, i32) = sqlx::query_as(
        "SELECT enabled, rate_limit_per_minute FROM notification_channels WHERE name = 'w'",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(defaults, (true, 20));
    let monitor = seed_monitor(pool, "api", "https://api.example/", 10).await;
    let days: Vec<i32> =
        sqlx::query_scalar("SELECT cert_expiry_days FROM api_monitors WHERE id = $1")
            .bind(monitor)
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(days, [30, 14, 7, 1]);
}

#[tokio::test]
async fn the_reader_role_sees_channels_but_not_their_secrets() {
    let db = TestDb::fresh().await;
    channel(
        &db.pool,
        "ops",
        "webhook",
        json!({"url": "https://hooks.example/", "secret": SECRET}),
    )
    .await;
    let role = format!("reader_{}", db.name);
    sqlx::raw_sql(&format!(
        "CREATE ROLE \"{role}\" LOGIN PASSWORD 'test' IN ROLE vantage_reader"
    ))
    .execute(&db.pool)
    .await
    .unwrap();
    let mut url: url::Url = db.url.parse().unwrap();
    url.set_username(&role).unwrap();
    url.set_password(Some("test")).unwrap();
    let reader = PgPoolOptions::new()
        .max_connections(1)
        .connect(url.as_str())
        .await
        .unwrap();

    let (name, kind): (String, String) =
        sqlx::query_as("SELECT name, kind FROM notification_channels")
            .fetch_one(&reader)
            .await
            .unwrap();
    assert_eq!((name.as_str(), kind.as_str()), ("ops", "webhook"));
    for query in [
        "SELECT config FROM notification_channels",
        "SELECT * FROM notification_channels",
        "SELECT config->>'secret' FROM notification_channels",
    ] {
        let err = sqlx::query(query)
            .fetch_all(&reader)
            .await
            .expect_err(query);
        assert!(
            err.to_string().contains("permission denied"),
            "{query}: {err}"
        );
    }
    // The outbox and attempts stay readable for dashboards (they hold no secrets).
    sqlx::query("SELECT count(*) FROM notifications, notification_attempts, notification_routes")
        .fetch_one(&reader)
        .await
        .unwrap();
    reader.close().await;
}

#[tokio::test]
async fn open_incidents_are_reminded_on_routes_with_repeat_every() {
    let db = TestDb::fresh().await;
    let pool = &db.pool;
    let dcs = seed_datacenters(pool, &["va"]).await;
    let api = seed_monitor(pool, "api", "https://api.example/", 10).await;
    let web = seed_monitor(pool, "web", "https://web.example/", 10).await;
    let pager = webhook(pool, "pager").await;
    sqlx::query(
        "INSERT INTO notification_routes (channel_id, repeat_every) VALUES ($1, '10 minutes')",
    )
    .bind(pager)
    .execute(pool)
    .await
    .unwrap();
    let quiet = webhook(pool, "quiet").await;
    route(pool, quiet, None).await;
    let open = open_incident(pool, api, &dcs).await;
    let acknowledged = open_incident(pool, web, &dcs).await;
    add_event(pool, acknowledged, "acknowledged", &[]).await;
    sqlx::query("UPDATE incidents SET acknowledged_at = now() WHERE id = $1")
        .bind(acknowledged)
        .execute(pool)
        .await
        .unwrap();
    let remind = || async {
        sqlx::query_scalar::<_, i32>("SELECT vantage_queue_reminders()")
            .fetch_one(pool)
            .await
            .unwrap()
    };

    assert_eq!(remind().await, 0, "nothing is due yet");
    // Eleven minutes later, as far as the outbox can tell.
    sqlx::query("UPDATE notifications SET created_at = created_at - interval '11 minutes'")
        .execute(pool)
        .await
        .unwrap();
    assert_eq!(
        remind().await,
        1,
        "one reminder: the open, unacknowledged incident, on the repeating route"
    );
    assert_eq!(
        remind().await,
        0,
        "and not again until another ten minutes pass"
    );
    let reminded: (String, Option<i64>) = sqlx::query_as(
        "SELECT event, incident_id FROM notifications WHERE channel_id = $1 ORDER BY id DESC LIMIT 1",
    )
    .bind(pager)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(reminded, ("incident.reminder".to_string(), Some(open)));
    assert!(!events(pool, quiet)
        .await
        .contains(&"incident.reminder".to_string()));
}
