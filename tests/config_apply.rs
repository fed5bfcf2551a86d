//! Configuration as code, as an operator uses it: `vantage apply`, `diff`, `export` and
//! `monitors` run as processes against a real Postgres, and what they print, their exit
//! codes and the rows they leave are what is checked.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use support::cluster::{heartbeats, serve_target, Instance, InstanceOptions};
use support::eventually::eventually;
use support::pg::TestDb;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

async fn vantage(db_url: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_vantage"));
    command
        .args(args)
        .env_remove("RUST_LOG")
        .env("DATABASE_URL", db_url)
        .kill_on_drop(true);
    for (name, value) in env {
        command.env(name, value);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .unwrap_or_else(|_| panic!("vantage {args:?} did not exit"))
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A directory named `source` holding `files`.
fn config_dir(source: &str, files: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join(source);
    std::fs::create_dir(&dir).unwrap();
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
    (root, dir)
}

fn path(dir: &Path) -> &str {
    dir.to_str().unwrap()
}

async fn monitor_id(db: &TestDb, name: &str) -> i32 {
    sqlx::query_scalar("SELECT id FROM api_monitors WHERE name = $1")
        .bind(name)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

async fn names(db: &TestDb, table: &str) -> Vec<(String, Option<String>)> {
    // `table` is one of this file's literals.
    sqlx::query_as(&format!(
        "SELECT name, managed_by FROM {table} ORDER BY name"
    ))
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

fn probe_config(target: &str, path: &str) -> String {
    format!(
        "datacenters:\n  va:\n    name: Virginia\nschedules:\n  every-1s:\n    interval: 1s\n    timeout: 800ms\n\
         monitors:\n  target:\n    url: http://{target}{path}\n    schedule: every-1s\n    datacenters: [va]\n"
    )
}

#[tokio::test]
async fn apply_diff_edit_and_a_running_instance_probes_the_new_url() {
    let db = TestDb::fresh().await;
    let target = serve_target().await.to_string();
    let (_root, dir) = config_dir("prod", &[("config.yaml", &probe_config(&target, "/ok"))]);

    let applied = vantage(&db.url, &["apply", "-f", path(&dir)], &[]).await;
    assert_eq!(applied.code, 0, "{}", applied.all());
    assert_eq!(
        applied.stdout,
        "+ datacenter \"va\"\n+ schedule \"every-1s\" (every 1s)\n+ monitor \"target\" (http, 1 datacenter)\n\
         applied 3 change(s) (source \"prod\")\n"
    );
    let diff = vantage(&db.url, &["diff", "-f", path(&dir)], &[]).await;
    assert_eq!(
        (diff.code, diff.stdout.as_str()),
        (
            0,
            "no changes: the database matches the files (source \"prod\")\n"
        )
    );
    let again = vantage(&db.url, &["apply", "-f", path(&dir)], &[]).await;
    assert_eq!(again.code, 0, "{}", again.all());
    assert!(
        again.stdout.starts_with("nothing to do"),
        "{}",
        again.stdout
    );

    let monitor = monitor_id(&db, "target").await;
    let mut runner = Instance::start(InstanceOptions {
        database_url: &db.url,
        datacenter: "va",
        name: "va-a",
        // The reaction must come from the apply's NOTIFY, not the periodic reload.
        extra_env: vec![("VANTAGE_CONFIG_RELOAD_INTERVAL", "1h".to_string())],
    });
    runner
        .wait_for_log(&["leading: scheduling monitors"], Duration::from_secs(30))
        .await;
    eventually("first heartbeat", Duration::from_secs(10), || async {
        (!heartbeats(&db.pool, monitor).await.is_empty()).then_some(())
    })
    .await;

    std::fs::write(dir.join("config.yaml"), probe_config(&target, "/fail")).unwrap();
    let diff = vantage(&db.url, &["diff", "-f", path(&dir)], &[]).await;
    assert_eq!(diff.code, 1, "{}", diff.all());
    assert_eq!(
        diff.stdout,
        format!("~ monitor \"target\": url http://{target}/ok -> http://{target}/fail\n1 change(s) to apply\n")
    );
    let changed_at = chrono::Utc::now();
    let applied = vantage(&db.url, &["apply", "-f", path(&dir)], &[]).await;
    assert_eq!(applied.code, 0, "{}", applied.all());
    let failure = eventually(
        "a heartbeat of the new URL",
        Duration::from_secs(10),
        || async {
            heartbeats(&db.pool, monitor)
                .await
                .into_iter()
                .find(|b| b.http_status == Some(500))
        },
    )
    .await;
    let delay = (failure.scheduled_at - changed_at).num_milliseconds();
    assert!(
        delay <= 2_000 + 1_000,
        "new URL probed {delay} ms after the apply (≤ 2 s + one slot)"
    );
    drop(runner);
}

const TEAM_A: &str = "schedules:\n  a-every-minute:\n    interval: 1m\n\
    monitors:\n  a1:\n    url: https://a1.example.com/\n    schedule: a-every-minute\n    datacenters: all\n  \
    a2:\n    url: https://a2.example.com/\n    schedule: a-every-minute\n    datacenters: all\n";

#[tokio::test]
async fn prune_removes_only_the_managed_objects_of_that_source() {
    let db = TestDb::fresh().await;
    let (_a, team_a) = config_dir("team-a", &[("monitors.yaml", TEAM_A)]);
    let (_b, team_b) = config_dir(
        "team-b",
        &[(
            "monitors.yaml",
            "schedules:\n  b-hourly:\n    interval: 1h\nmonitors:\n  b1:\n    url: https://b1.example.com/\n    schedule: b-hourly\n    datacenters: all\n",
        )],
    );
    assert_eq!(
        vantage(&db.url, &["apply", "-f", path(&team_a)], &[])
            .await
            .code,
        0
    );
    assert_eq!(
        vantage(&db.url, &["apply", "-f", path(&team_b)], &[])
            .await
            .code,
        0
    );
    sqlx::query(
        "INSERT INTO api_monitors (name, url, schedule_id, all_datacenters) \
         SELECT 'by-hand', 'https://hand.example.com/', id, true FROM schedules WHERE name = 'a-every-minute'",
    )
    .execute(&db.pool)
    .await
    .unwrap();

    // a2 leaves team-a's files: without --prune it stays, with it it goes.
    let only_a1 = TEAM_A.split("  a2:").next().unwrap();
    std::fs::write(team_a.join("monitors.yaml"), only_a1).unwrap();
    let kept = vantage(&db.url, &["apply", "-f", path(&team_a)], &[]).await;
    assert!(kept.stdout.starts_with("nothing to do"), "{}", kept.all());
    let diff = vantage(&db.url, &["diff", "--prune", "-f", path(&team_a)], &[]).await;
    assert_eq!(
        diff.stdout,
        "- monitor \"a2\" (pruned)\n1 change(s) to apply\n"
    );
    let pruned = vantage(&db.url, &["apply", "--prune", "-f", path(&team_a)], &[]).await;
    assert_eq!(pruned.code, 0, "{}", pruned.all());
    assert_eq!(
        pruned.stdout,
        "- monitor \"a2\" (pruned)\napplied 1 change(s) (source \"team-a\")\n"
    );
    assert_eq!(
        names(&db, "api_monitors").await,
        vec![
            ("a1".to_string(), Some("team-a".to_string())),
            ("b1".to_string(), Some("team-b".to_string())),
            ("by-hand".to_string(), None),
        ]
    );

    // An object of another source is refused, not taken over.
    std::fs::write(
        team_b.join("more.yaml"),
        "monitors:\n  a1:\n    url: https://a1.example.com/\n    schedule: b-hourly\n    datacenters: all\n",
    )
    .unwrap();
    let refused = vantage(&db.url, &["apply", "--prune", "-f", path(&team_b)], &[]).await;
    assert_eq!(refused.code, 1, "{}", refused.all());
    assert!(
        refused
            .stderr
            .contains("more.yaml:2:3: monitor \"a1\" is managed by the source \"team-a\""),
        "{}",
        refused.stderr
    );
}

#[tokio::test]
async fn five_mistakes_are_all_reported_at_their_line_and_column() {
    let db = TestDb::fresh().await;
    let text = "\
datacenters:
  va: {name: Virginia}
schedules:
  fast:
    interval: 1s
    timout: 500ms
monitors:
  one:
    url: http://127.0.0.1:1/
    schedule: slow
    datacenters: [va, xx]
  two:
    url: http://127.0.0.1:1/
    schedule: fast
    datacenters: all
    max_redirects: many
  three:
    url: http://127.0.0.1:1/
    schedule: fast
    datacenters: [va]
    headers:
      Authorization: Bearer ${VANTAGE_TEST_UNSET_TOKEN}
";
    let (_root, dir) = config_dir("mistakes", &[("config.yaml", text)]);
    let file = dir.join("config.yaml");
    let run = vantage(&db.url, &["apply", "-f", file.to_str().unwrap()], &[]).await;
    assert_eq!(run.code, 1, "{}", run.all());
    let at = |line: usize, column: usize| format!("{}:{line}:{column}: ", file.display());
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(
        lines.len(),
        6,
        "five problems and a summary: {}",
        run.stderr
    );
    let expected = [
        (at(6, 5), "schedule \"fast\" field `timout`: unknown field `timout`"),
        (at(10, 5), "monitor \"one\" field `schedule`: no schedule \"slow\""),
        (at(11, 23), "monitor \"one\" field `datacenters.1`: no datacenter \"xx\""),
        (at(16, 5), "monitor \"two\" field `max_redirects`: invalid type: string \"many\""),
        (at(22, 7), "monitor \"three\" field `headers.Authorization`: the environment variable VANTAGE_TEST_UNSET_TOKEN is not set"),
    ];
    for ((prefix, message), line) in expected.iter().zip(&lines) {
        assert!(
            line.starts_with(&format!("{prefix}{message}")),
            "expected {prefix}{message}\n     got {line}"
        );
    }
    assert_eq!(lines[5], "5 problem(s); nothing was changed");
    let monitors: i64 = sqlx::query_scalar("SELECT count(*) FROM api_monitors")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(monitors, 0);
}

#[tokio::test]
async fn a_value_only_the_database_rejects_is_reported_at_its_field() {
    let db = TestDb::fresh().await;
    let text = "schedules:\n  hourly:\n    interval: 1h\nmonitors:\n  ok:\n    url: https://ok.example.com/\n    schedule: hourly\n    datacenters: all\n  \
    odd:\n    url: https://odd.example.com/\n    schedule: hourly\n    datacenters: all\n    ip_family: ipv5\n";
    let (_root, dir) = config_dir("rejected", &[("config.yaml", text)]);
    let run = vantage(&db.url, &["apply", "-f", path(&dir)], &[]).await;
    assert_eq!(run.code, 1, "{}", run.all());
    let file = dir.join("config.yaml");
    assert!(
        run.stderr.starts_with(&format!(
            "{}:13:5: monitor \"odd\" is refused by the database: api_monitors.ip_family must be 'any', 'ipv4' or 'ipv6' (got 'ipv5')",
            file.display()
        )),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn apply_is_all_or_nothing() {
    let db = TestDb::fresh().await;
    // Monitors are written in name order; the last one is refused.
    let mut text = String::from("schedules:\n  hourly:\n    interval: 1h\nmonitors:\n");
    for name in ["a", "b", "c"] {
        text.push_str(&format!("  {name}:\n    url: https://{name}.example.com/\n    schedule: hourly\n    datacenters: all\n"));
    }
    text.push_str("  zz-last:\n    url: https://z.example.com/\n    schedule: hourly\n    datacenters: all\n    expected_status_codes: 299-200\n");
    let (_root, dir) = config_dir("atomic", &[("config.yaml", &text)]);
    let run = vantage(&db.url, &["apply", "-f", path(&dir)], &[]).await;
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(
        run.stderr
            .contains("monitor \"zz-last\" is refused by the database"),
        "{}",
        run.stderr
    );
    assert_eq!(
        run.stderr.lines().count(),
        2,
        "only the refused object: {}",
        run.stderr
    );
    assert!(names(&db, "api_monitors").await.is_empty());
    assert!(names(&db, "schedules").await.is_empty());
}

#[tokio::test]
async fn export_round_trips_through_an_empty_database() {
    let db = TestDb::fresh().await;
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/config");
    let token = [("API_TOKEN", "example-token-value")];
    let applied = vantage(&db.url, &["apply", "-f", examples], &token).await;
    assert_eq!(applied.code, 0, "{}", applied.all());
    assert!(
        applied
            .stdout
            .contains("+ monitor \"dns-apex\" (dns, all datacenters)"),
        "{}",
        applied.stdout
    );
    let first = vantage(&db.url, &["export"], &[]).await;
    assert_eq!(first.code, 0, "{}", first.all());
    assert!(first.stderr.is_empty(), "no warnings: {}", first.stderr);
    assert!(
        first.stdout.contains("Authorization: Bearer ${API_TOKEN}"),
        "{}",
        first.stdout
    );

    // The export describes the same database: no changes under the same source.
    let root = tempfile::tempdir().unwrap();
    let file = root.path().join("exported.yaml");
    std::fs::write(&file, &first.stdout).unwrap();
    let same = vantage(
        &db.url,
        &["diff", "--source", "config", "-f", file.to_str().unwrap()],
        &token,
    )
    .await;
    assert_eq!(same.code, 0, "{}", same.all());

    let empty = TestDb::fresh().await;
    let applied = vantage(&empty.url, &["apply", "-f", file.to_str().unwrap()], &token).await;
    assert_eq!(applied.code, 0, "{}", applied.all());
    let second = vantage(&empty.url, &["export"], &[]).await;
    assert_eq!(second.stdout, first.stdout, "byte-identical");
    let by_source = vantage(&empty.url, &["export", "--source", "exported"], &[]).await;
    assert_eq!(by_source.stdout, first.stdout);
    let other = vantage(&empty.url, &["export", "--source", "nobody"], &[]).await;
    assert_eq!(other.stdout, "{}\n");
}

#[tokio::test]
async fn concurrent_applies_never_interleave() {
    let db = TestDb::fresh().await;
    let (_root, dir) = config_dir("team-a", &[("monitors.yaml", TEAM_A)]);

    // Two at once: one applies, the other then finds nothing to do.
    let args = ["apply", "-f", path(&dir)];
    let (one, two) = tokio::join!(vantage(&db.url, &args, &[]), vantage(&db.url, &args, &[]));
    let mut outputs = [one.stdout.clone(), two.stdout.clone()];
    outputs.sort();
    assert_eq!((one.code, two.code), (0, 0), "{}\n{}", one.all(), two.all());
    assert!(
        outputs[0].ends_with("applied 3 change(s) (source \"team-a\")\n"),
        "{outputs:?}"
    );
    assert!(outputs[1].starts_with("nothing to do"), "{outputs:?}");

    // While another holds the lock, an apply waits; past its timeout it gives up clearly.
    let mut holder = db.pool.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(vantage::config_as_code::apply::APPLY_LOCK)
        .execute(&mut *holder)
        .await
        .unwrap();
    let gave_up = vantage(
        &db.url,
        &["apply", "--lock-timeout", "500ms", "-f", path(&dir)],
        &[],
    )
    .await;
    assert_eq!(gave_up.code, 1, "{}", gave_up.all());
    assert!(
        gave_up
            .stderr
            .contains("another `vantage apply` has held the configuration lock"),
        "{}",
        gave_up.stderr
    );
    std::fs::write(
        dir.join("monitors.yaml"),
        TEAM_A.replace("a2.example.com", "a2.example.org"),
    )
    .unwrap();
    let db_url = db.url.clone();
    let dir_text = path(&dir).to_string();
    let waiting =
        tokio::spawn(async move { vantage(&db_url, &["apply", "-f", &dir_text], &[]).await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!waiting.is_finished(), "waits for the lock");
    holder.commit().await.unwrap();
    let waited = waiting.await.unwrap();
    assert_eq!(waited.code, 0, "{}", waited.all());
    assert!(
        waited.stdout.starts_with(
            "~ monitor \"a2\": url https://a2.example.com/ -> https://a2.example.org/"
        ),
        "{}",
        waited.stdout
    );
}

#[tokio::test]
async fn secrets_are_never_printed() {
    let db = TestDb::fresh().await;
    let text = "schedules:\n  hourly:\n    interval: 1h\nmonitors:\n  private-api:\n    url: https://api.example.com/\n    schedule: hourly\n    datacenters: all\n    headers:\n      Authorization: Bearer ${VANTAGE_TEST_TOKEN}\n      X-Key: {secret: env:VANTAGE_TEST_KEY}\n";
    let (_root, dir) = config_dir("secrets", &[("config.yaml", text)]);
    let first = [
        ("VANTAGE_TEST_TOKEN", "first-token-value"),
        ("VANTAGE_TEST_KEY", "first-key-value"),
    ];
    let applied = vantage(&db.url, &["apply", "-f", path(&dir)], &first).await;
    assert_eq!(applied.code, 0, "{}", applied.all());
    let (headers, secret): (serde_json::Value, Vec<String>) = sqlx::query_as(
        "SELECT headers, secret_headers FROM api_monitors WHERE name = 'private-api'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        headers["Authorization"], "Bearer first-token-value",
        "the probe sends the value"
    );
    assert_eq!(secret, vec!["Authorization", "X-Key"]);

    let second = [
        ("VANTAGE_TEST_TOKEN", "second-token-value"),
        ("VANTAGE_TEST_KEY", "first-key-value"),
    ];
    let diff = vantage(&db.url, &["diff", "-f", path(&dir)], &second).await;
    assert_eq!(diff.code, 1, "{}", diff.all());
    assert_eq!(diff.stdout, "~ monitor \"private-api\": headers.Authorization <secret> -> <secret>\n1 change(s) to apply\n");
    let applied = vantage(&db.url, &["apply", "-f", path(&dir)], &second).await;
    assert_eq!(applied.code, 0, "{}", applied.all());

    // A secret set by hand has no reference: export names a placeholder and says so.
    sqlx::query(
        "UPDATE api_monitors SET headers = headers || '{\"X-Hand\": \"hand-set-value\"}', \
         secret_headers = secret_headers || '{X-Hand}' WHERE name = 'private-api'",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let export = vantage(&db.url, &["export"], &[]).await;
    assert_eq!(export.code, 0, "{}", export.all());
    assert!(
        export
            .stdout
            .contains("Authorization: Bearer ${VANTAGE_TEST_TOKEN}"),
        "{}",
        export.stdout
    );
    assert!(
        export.stdout.contains("secret: env:VANTAGE_TEST_KEY"),
        "{}",
        export.stdout
    );
    assert!(
        export
            .stdout
            .contains("X-Hand: ${VANTAGE_SECRET_PRIVATE_API_X_HAND}"),
        "{}",
        export.stdout
    );
    assert!(
        export
            .stderr
            .contains("warning: monitor \"private-api\": the secret header X-Hand"),
        "{}",
        export.stderr
    );

    // A secret value written into a file is refused before it reaches the database.
    std::fs::write(
        dir.join("channels.yaml"),
        "notification_channels:\n  hook:\n    kind: webhook\n    config:\n      url: https://hooks.example.com/\n      secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n",
    )
    .unwrap();
    let refused = vantage(&db.url, &["apply", "-f", path(&dir)], &second).await;
    assert_eq!(refused.code, 1, "{}", refused.all());
    assert!(
        refused
            .stderr
            .contains("channels.yaml:6:7: channel \"hook\" field `config.secret`: is a secret"),
        "{}",
        refused.stderr
    );

    let printed = [applied.all(), diff.all(), export.all(), refused.all()].concat();
    for value in [
        "first-token-value",
        "second-token-value",
        "first-key-value",
        "hand-set-value",
        "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    ] {
        assert!(!printed.contains(value), "{value} was printed");
    }
}

#[tokio::test]
async fn monitors_list_pause_and_resume() {
    let db = TestDb::fresh().await;
    let text = "datacenters:\n  lon: {name: London}\n  va: {name: Virginia}\nschedules:\n  hourly:\n    interval: 1h\n\
monitors:\n  api:\n    url: https://api.example.com/\n    schedule: hourly\n    datacenters: all\n    tags: [api]\n  \
    db:\n    kind: tcp\n    url: tcp://db.example.com:5432\n    schedule: hourly\n    datacenters: [va]\n";
    let (_root, dir) = config_dir("ops", &[("config.yaml", text)]);
    assert_eq!(
        vantage(&db.url, &["apply", "-f", path(&dir)], &[])
            .await
            .code,
        0
    );
    let api = monitor_id(&db, "api").await;
    sqlx::query(
        "INSERT INTO api_heartbeats (monitor_id, datacenter_id, scheduled_at, executed_at, status, success, total_ms) \
         SELECT $1, id, now(), now(), 'down', false, 1 FROM datacenters WHERE code = 'lon'",
    )
    .bind(api)
    .execute(&db.pool)
    .await
    .unwrap();

    let list = vantage(&db.url, &["monitors", "list"], &[]).await;
    assert_eq!(
        list.stdout,
        "NAME  KIND  TARGET                     lon   va\n\
         api   http  https://api.example.com/   down  -\n\
         db    tcp   tcp://db.example.com:5432        -\n"
    );
    let tagged = vantage(
        &db.url,
        &["monitors", "list", "--tag", "api", "--datacenter", "va"],
        &[],
    )
    .await;
    assert_eq!(
        tagged.stdout,
        "NAME  KIND  TARGET                    va\napi   http  https://api.example.com/  -\n"
    );

    let unknown = vantage(&db.url, &["monitors", "pause", "api", "nope", "gone"], &[]).await;
    assert_eq!(unknown.code, 1);
    assert_eq!(
        unknown.stderr,
        "error: no monitor named \"nope\", \"gone\"; nothing was changed\n"
    );
    let paused = vantage(&db.url, &["monitors", "pause", "api"], &[]).await;
    assert_eq!(
        (paused.code, paused.stdout.as_str()),
        (0, "paused 1 monitor(s)\n")
    );
    let list = vantage(&db.url, &["monitors", "list", "--datacenter", "lon"], &[]).await;
    assert!(list.stdout.contains("api (paused)"), "{}", list.stdout);
    let diff = vantage(&db.url, &["diff", "-f", path(&dir)], &[]).await;
    assert!(
        diff.stdout
            .starts_with("~ monitor \"api\": enabled false -> (default)"),
        "{}",
        diff.stdout
    );
    let resumed = vantage(&db.url, &["monitors", "resume", "api"], &[]).await;
    assert_eq!(resumed.code, 0);
    assert_eq!(
        vantage(&db.url, &["diff", "-f", path(&dir)], &[])
            .await
            .code,
        0
    );
}

#[tokio::test]
async fn exit_codes_for_usage_and_an_unreachable_database() {
    let unreachable = "postgres://vantage@127.0.0.1:1/vantage";
    let (_root, dir) = config_dir("any", &[("config.yaml", TEAM_A)]);
    let run = vantage(unreachable, &["apply", "-f", path(&dir)], &[]).await;
    assert_eq!(run.code, 3, "{}", run.all());
    assert!(
        run.stderr.contains("cannot connect to Postgres"),
        "{}",
        run.stderr
    );
    let usage = vantage(unreachable, &["apply"], &[]).await;
    assert_eq!(usage.code, 2, "{}", usage.all());
    // An empty directory is a mistake, never "prune everything".
    let (_empty_root, empty) = config_dir("empty", &[]);
    let run = vantage(unreachable, &["apply", "--prune", "-f", path(&empty)], &[]).await;
    assert_eq!(run.code, 2, "{}", run.all());
    assert!(
        run.stderr.contains("no *.yaml or *.yml files"),
        "{}",
        run.stderr
    );
}
