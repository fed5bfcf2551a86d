//! What `apply` would change: the files' objects against the database's, per kind.
//!
//! [`State::read`] loads every configurable row in one snapshot; [`Plan::build`]
//! compares, checks that every name a file refers to exists (in the files or the
//! database), refuses objects another source manages, and lists the changes both as
//! lines for people and as rows for [`super::apply`]. Secrets are compared by value
//! but only ever shown as `<secret>`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use serde::Serialize;
use serde_json::Value;
use sqlx::types::Json;
use sqlx::PgConnection;

use super::load::{Diagnostic, Loaded, Section};
use super::model::{ConfigFile, Placement};
use super::objects::{
    Channels, Cx, Datacenters, Kind, Monitors, Regions, Routes, Schedules, Statements, Windows,
};

/// Every configurable row of the database, as JSON, with its managed_by.
#[derive(Debug, Default)]
pub struct State {
    rows: HashMap<Section, Vec<(Value, Option<String>)>>,
}

impl State {
    /// Reads every kind; `conn` is in a transaction (the setting below is local to it).
    pub async fn read(conn: &mut PgConnection) -> Result<State, sqlx::Error> {
        crate::storage::jit_off(&mut *conn).await?;
        let mut rows = HashMap::new();
        for section in Section::ALL {
            let found: Vec<(Json<Value>, Option<String>)> =
                sqlx::query_as(Statements::of(section).select)
                    .fetch_all(&mut *conn)
                    .await?;
            rows.insert(
                section,
                found.into_iter().map(|(row, by)| (row.0, by)).collect(),
            );
        }
        Ok(State { rows })
    }

    /// The rows of one kind by key, with managed_by.
    pub fn of<K: Kind>(&self) -> BTreeMap<String, (K::Row, Option<String>)> {
        self.rows
            .get(&K::SECTION)
            .into_iter()
            .flatten()
            .filter_map(|(row, by)| {
                // A row the conversion cannot read (a column of an unexpected shape)
                // is left out rather than guessed at.
                let row: K::Row = serde_json::from_value(row.clone()).ok()?;
                Some((K::key(&row).to_string(), (row, by.clone())))
            })
            .collect()
    }

    fn names(&self, section: Section) -> BTreeSet<String> {
        let key = match section {
            Section::Regions | Section::Datacenters => "code",
            _ => "name",
        };
        self.rows
            .get(&section)
            .into_iter()
            .flatten()
            .filter_map(|(row, _)| row.get(key)?.as_str().map(str::to_string))
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Create,
    Update,
    Delete,
}

/// One line of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub op: Op,
    pub section: Section,
    pub name: String,
    pub detail: String,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = match self.op {
            Op::Create => '+',
            Op::Update => '~',
            Op::Delete => '-',
        };
        write!(
            f,
            "{sign} {} \"{}\"{}",
            self.section.noun(),
            self.name,
            self.detail
        )
    }
}

/// What to write for one kind: rows to insert or update, keys to delete.
#[derive(Debug, Default)]
pub struct Writes {
    pub upserts: Vec<(String, Value)>,
    pub deletes: Vec<String>,
}

#[derive(Debug, Default)]
pub struct Plan {
    pub changes: Vec<Change>,
    pub writes: HashMap<Section, Writes>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// Compares the files with the database; every mistake found, or the plan.
    pub fn build(
        loaded: &Loaded,
        state: &State,
        source: &str,
        prune: bool,
    ) -> Result<Plan, Vec<Diagnostic>> {
        let mut plan = Plan::default();
        let mut errors = loaded.errors.clone();
        errors.extend(check_references(loaded, state));
        let mut planner = Planner {
            loaded,
            state,
            source,
            prune,
            plan: &mut plan,
            errors: &mut errors,
        };
        planner.kind::<Regions>();
        planner.kind::<Datacenters>();
        planner.kind::<Schedules>();
        planner.kind::<Channels>();
        planner.kind::<Monitors>();
        planner.kind::<Routes>();
        planner.kind::<Windows>();
        if errors.is_empty() {
            Ok(plan)
        } else {
            errors.sort();
            errors.dedup();
            Err(errors)
        }
    }
}

struct Planner<'a> {
    loaded: &'a Loaded,
    state: &'a State,
    source: &'a str,
    prune: bool,
    plan: &'a mut Plan,
    errors: &'a mut Vec<Diagnostic>,
}

impl Planner<'_> {
    fn kind<K: Kind>(&mut self) {
        let current = self.state.of::<K>();
        let desired = K::models(&self.loaded.config);
        let mut writes = Writes::default();
        for (name, model) in desired {
            let mut cx = Cx::new(Some(self.loaded), K::SECTION, name);
            let mut row = K::to_row(name, model, &mut cx);
            self.errors.append(&mut cx.errors);
            let noun = K::SECTION.noun();
            let (op, detail) = match current.get(name) {
                None => (Op::Create, K::summary(model)),
                Some((_, Some(other))) if other != self.source => {
                    self.errors.push(Diagnostic::at(
                        self.loaded.object(K::SECTION, name),
                        format!(
                            "{noun} \"{name}\" is managed by the source \"{other}\"; remove it \
                             from one of the two sources (or apply these files with --source {other})"
                        ),
                    ));
                    continue;
                }
                Some((existing, managed_by)) => {
                    K::keep_unset(&mut row, existing);
                    if row == *existing && managed_by.is_some() {
                        continue;
                    }
                    let mut cx = Cx::new(None, K::SECTION, name);
                    let mut fields =
                        field_changes(&K::to_model(&row, &mut cx), &K::to_model(existing, &mut cx));
                    fields.extend(
                        K::changed_secrets(&row, existing)
                            .into_iter()
                            .map(|field| format!("{field} <secret> -> <secret>")),
                    );
                    if managed_by.is_none() {
                        fields.push(format!("adopted (now managed by \"{}\")", self.source));
                    }
                    (Op::Update, format!(": {}", fields.join(", ")))
                }
            };
            self.plan.changes.push(Change {
                op,
                section: K::SECTION,
                name: name.clone(),
                detail,
            });
            writes.upserts.push((
                name.clone(),
                serde_json::to_value(&row).expect("rows serialize"),
            ));
        }
        if self.prune {
            for (name, (_, managed_by)) in &current {
                if managed_by.as_deref() == Some(self.source) && !desired.contains_key(name) {
                    self.plan.changes.push(Change {
                        op: Op::Delete,
                        section: K::SECTION,
                        name: name.clone(),
                        detail: " (pruned)".to_string(),
                    });
                    writes.deletes.push(name.clone());
                }
            }
        }
        self.plan.writes.insert(K::SECTION, writes);
    }
}

/// `field old -> new` for every top-level field that differs, in the file's words.
fn field_changes<M: Serialize>(desired: &M, current: &M) -> Vec<String> {
    let as_map = |model: &M| match serde_json::to_value(model) {
        Ok(Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    let (desired, current) = (as_map(desired), as_map(current));
    let keys: BTreeSet<&String> = desired.keys().chain(current.keys()).collect();
    keys.into_iter()
        .filter(|key| desired.get(*key) != current.get(*key))
        .map(|key| {
            let show = |value: Option<&Value>| match value {
                None => "(default)".to_string(),
                Some(Value::String(text)) => text.clone(),
                Some(other) => other.to_string(),
            };
            format!(
                "{key} {} -> {}",
                show(current.get(key)),
                show(desired.get(key))
            )
        })
        .collect()
}

/// Every name a file refers to must exist in the files or in the database.
fn check_references(loaded: &Loaded, state: &State) -> Vec<Diagnostic> {
    let config: &ConfigFile = &loaded.config;
    let known = |section: Section, desired: BTreeSet<&String>| -> BTreeSet<String> {
        let mut names = state.names(section);
        names.extend(desired.into_iter().cloned());
        names.extend(loaded.broken(section).cloned());
        names
    };
    let regions = known(Section::Regions, config.regions.keys().collect());
    let datacenters = known(Section::Datacenters, config.datacenters.keys().collect());
    let schedules = known(Section::Schedules, config.schedules.keys().collect());
    let monitors = known(Section::Monitors, config.monitors.keys().collect());
    let channels = known(
        Section::NotificationChannels,
        config.notification_channels.keys().collect(),
    );
    let mut errors = Vec::new();
    let mut check = |section: Section,
                     name: &str,
                     path: &[&str],
                     value: &str,
                     within: &BTreeSet<String>,
                     target: Section| {
        if !within.contains(value) {
            let choices: Vec<&str> = within.iter().map(String::as_str).take(12).collect();
            errors.push(Diagnostic::at(
                loaded.field(section, name, path),
                format!(
                    "{} \"{name}\" field `{}`: no {} \"{value}\" in the files or the database \
                     (known: {})",
                    section.noun(),
                    path.join("."),
                    target.noun(),
                    if choices.is_empty() {
                        "none".to_string()
                    } else {
                        choices.join(", ")
                    }
                ),
            ));
        }
    };
    let list = |items: &[String]| -> Vec<(String, String)> {
        items
            .iter()
            .enumerate()
            .map(|(i, item)| (i.to_string(), item.clone()))
            .collect()
    };
    for (name, dc) in &config.datacenters {
        if let Some(region) = &dc.region {
            check(
                Section::Datacenters,
                name,
                &["region"],
                region,
                &regions,
                Section::Regions,
            );
        }
    }
    for (name, monitor) in &config.monitors {
        check(
            Section::Monitors,
            name,
            &["schedule"],
            &monitor.schedule,
            &schedules,
            Section::Schedules,
        );
        if let Placement::Only(codes) = &monitor.datacenters {
            for (i, code) in list(codes) {
                check(
                    Section::Monitors,
                    name,
                    &["datacenters", &i],
                    &code,
                    &datacenters,
                    Section::Datacenters,
                );
            }
        }
    }
    for (name, route) in &config.notification_routes {
        check(
            Section::NotificationRoutes,
            name,
            &["channel"],
            &route.channel,
            &channels,
            Section::NotificationChannels,
        );
        for (i, monitor) in list(route.monitors.as_deref().unwrap_or_default()) {
            check(
                Section::NotificationRoutes,
                name,
                &["monitors", &i],
                &monitor,
                &monitors,
                Section::Monitors,
            );
        }
        for (i, code) in list(route.datacenters.as_deref().unwrap_or_default()) {
            check(
                Section::NotificationRoutes,
                name,
                &["datacenters", &i],
                &code,
                &datacenters,
                Section::Datacenters,
            );
        }
    }
    for (name, window) in &config.maintenance_windows {
        for (i, monitor) in list(&window.monitors) {
            check(
                Section::MaintenanceWindows,
                name,
                &["monitors", &i],
                &monitor,
                &monitors,
                Section::Monitors,
            );
        }
        for (i, code) in list(&window.datacenters) {
            check(
                Section::MaintenanceWindows,
                name,
                &["datacenters", &i],
                &code,
                &datacenters,
                Section::Datacenters,
            );
        }
    }
    errors
}
