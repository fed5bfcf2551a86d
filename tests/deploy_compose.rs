//! The compose deployment as an operator gets it: `docker-compose.yml`, `.env.example`,
//! the Postgres init script and Grafana's provisioning, checked for structure (nine
//! datacenters with two instances each, ordering, health checks) and for secrets (only
//! `${VAR}` references, a read-only database user for Grafana). Where a Docker client
//! with the compose plugin is installed, `docker compose config` must accept the file
//! too; CI machines without one skip that step and say so.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

use serde_yaml_ng::Value;

const DATACENTERS: [&str; 9] = ["va", "ny", "rdn", "chi", "sf", "lon", "dam", "sto", "syd"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

fn yaml(path: &str) -> Value {
    let mut value: Value =
        serde_yaml_ng::from_str(&read(path)).unwrap_or_else(|e| panic!("parse {path}: {e}"));
    // Compose resolves `<<: *anchor` merge keys; so do we.
    value.apply_merge().expect("merge keys");
    value
}

fn compose() -> Value {
    yaml("docker-compose.yml")
}

fn services(compose: &Value) -> BTreeMap<String, Value> {
    compose["services"]
        .as_mapping()
        .expect("services")
        .iter()
        .map(|(k, v)| (k.as_str().expect("service name").to_string(), v.clone()))
        .collect()
}

fn env(service: &Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    match &service["environment"] {
        Value::Mapping(map) => {
            for (k, v) in map {
                let value = match v {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => serde_yaml_ng::to_string(other).unwrap().trim().to_string(),
                };
                out.insert(k.as_str().unwrap().to_string(), value);
            }
        }
        Value::Null => {}
        other => panic!("environment must be a mapping, got {other:?}"),
    }
    out
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// A value that is exactly one `${VAR}` / `${VAR:?message}` / `${VAR:-default}` reference.
fn is_reference(value: &str) -> bool {
    value.starts_with("${") && value.ends_with('}') && value[2..].find('}') == Some(value.len() - 3)
}

fn is_prober(service: &Value) -> bool {
    env(service).contains_key("VANTAGE_DATACENTER")
}

#[test]
fn every_datacenter_runs_two_instances_with_distinct_names() {
    let compose = compose();
    let services = services(&compose);
    let probers: Vec<(&String, &Value)> = services.iter().filter(|(_, s)| is_prober(s)).collect();
    assert_eq!(
        probers.len(),
        18,
        "two instances for each of nine datacenters"
    );

    let mut per_dc: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut names = BTreeSet::new();
    for (service_name, service) in &probers {
        let env = env(service);
        let dc = env["VANTAGE_DATACENTER"].clone();
        let instance = env
            .get("VANTAGE_INSTANCE_NAME")
            .unwrap_or_else(|| panic!("{service_name}: VANTAGE_INSTANCE_NAME"))
            .clone();
        assert!(
            instance.starts_with(&dc),
            "{service_name}: instance {instance} is named after its datacenter {dc}"
        );
        assert!(
            names.insert(instance.clone()),
            "instance name {instance} used twice"
        );
        per_dc.entry(dc).or_default().push(instance);
    }
    let expected: BTreeSet<String> = DATACENTERS.iter().map(|s| s.to_string()).collect();
    assert_eq!(per_dc.keys().cloned().collect::<BTreeSet<_>>(), expected);
    for (dc, instances) in &per_dc {
        assert_eq!(instances.len(), 2, "{dc} has two instances: {instances:?}");
    }
}

#[test]
fn probers_wait_for_migrations_log_json_and_check_their_health() {
    let compose = compose();
    let services = services(&compose);
    let migrate = &services["migrate"];
    assert_eq!(strings(&migrate["command"]), ["migrate"]);
    assert_eq!(
        migrate["depends_on"]["postgres"]["condition"].as_str(),
        Some("service_healthy")
    );
    assert!(env(migrate)["DATABASE_URL"].starts_with("postgres://"));

    for (name, service) in services.iter().filter(|(_, s)| is_prober(s)) {
        assert_eq!(
            service["depends_on"]["migrate"]["condition"].as_str(),
            Some("service_completed_successfully"),
            "{name} waits for migrate"
        );
        assert_eq!(
            strings(&service["command"]),
            ["run"],
            "{name} runs `vantage run`"
        );
        assert_eq!(
            service["image"], migrate["image"],
            "{name} runs the migrated image"
        );
        let env = env(service);
        assert_eq!(env["VANTAGE_LOG_FORMAT"], "json", "{name}");
        assert!(env["DATABASE_URL"].starts_with("postgres://"), "{name}");
        let test = strings(&service["healthcheck"]["test"]);
        assert!(
            test.iter().any(|a| a == "vantage")
                && test.iter().any(|a| a == "check")
                && test.iter().any(|a| a.ends_with("/healthz")),
            "{name}: healthcheck runs `vantage check .../healthz`, got {test:?}"
        );
        let restart = service["restart"].as_str().unwrap_or("no");
        assert!(
            ["always", "unless-stopped", "on-failure"].contains(&restart),
            "{name}: restart policy, got {restart}"
        );
    }
}

#[test]
fn postgres_keeps_its_data_in_a_named_volume_and_reports_health() {
    let compose = compose();
    let services = services(&compose);
    let pg = &services["postgres"];
    assert!(pg["image"].as_str().unwrap().starts_with("postgres:15"));
    let volumes = strings(&pg["volumes"]);
    let data = volumes
        .iter()
        .find(|v| v.ends_with(":/var/lib/postgresql/data"))
        .expect("a volume for the data directory");
    let volume_name = data.split(':').next().unwrap();
    assert!(
        compose["volumes"]
            .as_mapping()
            .unwrap()
            .contains_key(volume_name),
        "{volume_name} is a named volume"
    );
    assert!(volumes
        .iter()
        .any(|v| v.starts_with("./deploy/postgres-init:/docker-entrypoint-initdb.d")));
    assert!(!strings(&pg["healthcheck"]["test"]).is_empty());
    assert!(!strings(&services["grafana"]["healthcheck"]["test"]).is_empty());
}

#[test]
fn no_secret_is_written_in_the_compose_file() {
    let text = read("docker-compose.yml");
    let compose = compose();
    for (name, service) in services(&compose) {
        for (key, value) in env(&service) {
            let upper = key.to_ascii_uppercase();
            if upper.contains("PASSWORD") || upper.contains("SECRET") || upper.contains("TOKEN") {
                assert!(
                    is_reference(&value),
                    "{name}.{key} must be a ${{VAR}}, got {value:?}"
                );
            }
            if let Some(rest) = value.strip_prefix("postgres://") {
                let userinfo = rest.rsplit_once('@').map(|(u, _)| u).unwrap_or("");
                // The user may itself be a `${VAR:?message}`: skip past it.
                let user_end = if userinfo.starts_with("${") {
                    userinfo.find('}').map_or(0, |i| i + 1)
                } else {
                    userinfo.find(':').unwrap_or(userinfo.len())
                };
                let password = userinfo[user_end..].strip_prefix(':').unwrap_or("");
                assert!(
                    is_reference(password),
                    "{name}.{key}: the URL's password must be a ${{VAR}}, got {password:?}"
                );
            }
        }
    }
    // The example values must not have been copied into the file either.
    for line in read(".env.example").lines() {
        if let Some((key, value)) = line.split_once('=') {
            if key.contains("PASSWORD") {
                assert!(
                    !text.contains(value),
                    "{key}'s example value appears in compose"
                );
            }
        }
    }
}

#[test]
fn every_required_variable_is_in_env_example_and_env_is_ignored() {
    let text: String = read("docker-compose.yml")
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let example = read(".env.example");
    let defined: BTreeSet<&str> = example
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim()))
        .collect();
    let mut rest = text.as_str();
    let mut required = BTreeSet::new();
    while let Some(start) = rest.find("${") {
        let inner = &rest[start + 2..];
        let end = inner.find('}').expect("closed ${");
        let reference = &inner[..end];
        let name = reference.split([':', '-', '?']).next().unwrap();
        if reference.contains(":?") {
            required.insert(name.to_string());
        }
        rest = &inner[end..];
    }
    assert!(required.contains("POSTGRES_PASSWORD"));
    for name in &required {
        assert!(
            defined.contains(name.as_str()),
            "{name} is missing from .env.example"
        );
    }
    let ignored = read(".gitignore");
    assert!(ignored
        .lines()
        .any(|l| l.trim() == ".env" || l.trim() == "/.env"));
}

#[test]
fn grafana_reads_through_the_read_only_role() {
    let compose = compose();
    let services = services(&compose);
    let grafana = &services["grafana"];
    assert!(grafana["image"]
        .as_str()
        .unwrap()
        .contains("grafana/grafana-oss"));
    let env = env(grafana);
    assert!(is_reference(&env["GF_SECURITY_ADMIN_PASSWORD"]));
    assert!(is_reference(&env["GRAFANA_DB_PASSWORD"]));
    let volumes = strings(&grafana["volumes"]);
    assert!(volumes.contains(&"./grafana/provisioning:/etc/grafana/provisioning:ro".to_string()));
    let dashboards_mount = volumes
        .iter()
        .find(|v| v.starts_with("./grafana/dashboards:"))
        .expect("dashboards mounted");
    let dashboards_dir = dashboards_mount.split(':').nth(1).unwrap();

    let datasources = yaml("grafana/provisioning/datasources/vantage.yml");
    let ds = &datasources["datasources"][0];
    assert_eq!(ds["type"].as_str(), Some("grafana-postgresql-datasource"));
    assert_eq!(ds["user"].as_str(), Some("grafana"));
    assert_eq!(
        ds["secureJsonData"]["password"].as_str(),
        Some("$GRAFANA_DB_PASSWORD")
    );
    assert_eq!(ds["url"].as_str(), Some("postgres:5432"));

    let providers = yaml("grafana/provisioning/dashboards/vantage.yml");
    assert_eq!(
        providers["providers"][0]["options"]["path"].as_str(),
        Some(dashboards_dir)
    );

    // The login Grafana uses is created as a member of the read-only role, whose
    // privileges the migration defines.
    let init = read("deploy/postgres-init/10-grafana-reader.sh");
    assert!(init.contains("GRANT vantage_reader TO grafana"));
    assert!(init.contains("default_transaction_read_only = on"));
    assert!(
        !init.contains("PASSWORD '"),
        "no literal password in the init script"
    );
    let migration = read("sql/migrations/20261125000100_grafana_reader.sql");
    assert!(migration.contains("CREATE ROLE vantage_reader NOLOGIN"));
    assert!(services["postgres"]["environment"]["GRAFANA_DB_PASSWORD"].is_string());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(root().join("deploy/postgres-init/10-grafana-reader.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert!(mode & 0o111 != 0, "the init script is executable");
    }
}

/// `docker compose config -q` with the example environment, when a compose client is
/// installed. It only parses and validates; no Docker engine is needed.
#[test]
fn docker_compose_config_accepts_the_file_when_available() {
    let candidates: [&[&str]; 2] = [&["docker", "compose"], &["docker-compose"]];
    for candidate in candidates {
        let probe = Command::new(candidate[0])
            .args(&candidate[1..])
            .arg("version")
            .output();
        if !matches!(probe, Ok(ref out) if out.status.success()) {
            continue;
        }
        let out = Command::new(candidate[0])
            .args(&candidate[1..])
            .args([
                "--env-file",
                ".env.example",
                "-f",
                "docker-compose.yml",
                "config",
                "-q",
            ])
            .current_dir(root())
            .output()
            .expect("run compose");
        assert!(
            out.status.success(),
            "{} config rejected the file: {}",
            candidate.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        // And without the variables it refuses to start, naming what is missing.
        let empty = tempfile::NamedTempFile::new().expect("empty env file");
        let out = Command::new(candidate[0])
            .args(&candidate[1..])
            .arg("--env-file")
            .arg(empty.path())
            .args(["-f", "docker-compose.yml", "config", "-q"])
            .current_dir(root())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .output()
            .expect("run compose");
        assert!(
            !out.status.success(),
            "compose must require the .env variables"
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains("in .env"));
        return;
    }
    eprintln!("docker compose is not installed: skipped `docker compose config` (the YAML checks above still ran)");
}

/// The image as the Dockerfile builds it: dependencies in their own layer (which must
/// parse the real manifest, so every declared bench target gets a placeholder file),
/// a non-root user, a health check by the binary itself, `run` by default, no secrets.
#[test]
fn the_dockerfile_caches_dependencies_runs_as_non_root_and_checks_its_health() {
    let dockerfile = read("Dockerfile");
    let manifest = read("Cargo.toml");
    let benches: Vec<&str> = manifest
        .split("[[bench]]")
        .skip(1)
        .filter_map(|table| table.lines().find_map(|l| l.trim().strip_prefix("name = ")))
        .map(|name| name.trim_matches('"'))
        .collect();
    assert!(!benches.is_empty(), "Cargo.toml declares bench targets");
    let placeholder_loop = dockerfile
        .lines()
        .find(|l| l.contains("for bench in"))
        .expect("the dependency layer writes placeholder bench files");
    for bench in benches {
        assert!(
            placeholder_loop
                .split_whitespace()
                .any(|w| w.trim_end_matches(';') == bench),
            "bench {bench:?} from Cargo.toml has no placeholder in the Dockerfile's dependency layer"
        );
    }
    let deps = dockerfile.find("COPY Cargo.toml Cargo.lock").unwrap();
    let sources = dockerfile.find("COPY src src").unwrap();
    assert!(
        deps < sources,
        "dependencies are built before the sources are copied"
    );
    let user = dockerfile
        .lines()
        .rev()
        .find(|l| l.starts_with("USER "))
        .expect("a USER line");
    assert!(!user.contains("root") && !user.ends_with(" 0"), "{user}");
    assert!(dockerfile.contains("HEALTHCHECK") && dockerfile.contains("\"vantage\", \"check\""));
    assert!(dockerfile.contains("CMD [\"run\"]"));
    for secret in ["DATABASE_URL", "PASSWORD"] {
        assert!(!dockerfile.contains(secret), "the image bakes in {secret}");
    }
}
