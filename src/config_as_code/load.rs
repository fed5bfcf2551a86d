//! Reading configuration files: YAML text -> [`ConfigFile`], remembering where every
//! object and field was written so that each mistake is reported as `file:line:column`.
//!
//! saphyr-parser's events carry positions; they are assembled here into a JSON value
//! (YAML 1.2 core schema: `yes` is a string, `1.0` a number) plus a map from JSON
//! pointer to position. Each object is then deserialized on its own, so one run reports
//! the first mistake of every object, not only the first of the file.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::model::ConfigFile;

/// Where something was written: 1-based line and column.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pos {
    pub file: Arc<str>,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// One mistake, where it was made.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Diagnostic {
    pub pos: Option<Pos>,
    pub message: String,
}

impl Diagnostic {
    pub fn at(pos: Option<Pos>, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            pos,
            message: message.into(),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.pos {
            Some(pos) => write!(f, "{pos}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// The sections of a file, in the order objects are written to the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Section {
    Regions,
    Datacenters,
    Schedules,
    NotificationChannels,
    Monitors,
    NotificationRoutes,
    MaintenanceWindows,
}

impl Section {
    pub const ALL: [Section; 7] = [
        Section::Regions,
        Section::Datacenters,
        Section::Schedules,
        Section::NotificationChannels,
        Section::Monitors,
        Section::NotificationRoutes,
        Section::MaintenanceWindows,
    ];

    /// The section's key in a file.
    pub fn key(self) -> &'static str {
        match self {
            Section::Regions => "regions",
            Section::Datacenters => "datacenters",
            Section::Schedules => "schedules",
            Section::NotificationChannels => "notification_channels",
            Section::Monitors => "monitors",
            Section::NotificationRoutes => "notification_routes",
            Section::MaintenanceWindows => "maintenance_windows",
        }
    }

    /// One object of the section, as messages name it.
    pub fn noun(self) -> &'static str {
        match self {
            Section::Regions => "region",
            Section::Datacenters => "datacenter",
            Section::Schedules => "schedule",
            Section::NotificationChannels => "channel",
            Section::Monitors => "monitor",
            Section::NotificationRoutes => "route",
            Section::MaintenanceWindows => "maintenance window",
        }
    }
}

/// Files read and merged, with where each thing was written and what was wrong.
#[derive(Debug, Default)]
pub struct Loaded {
    pub config: ConfigFile,
    /// Every mistake found in the files, sorted by position. Reading goes on past
    /// them, so that references can still be checked and all are reported at once.
    pub errors: Vec<Diagnostic>,
    /// Objects written but not understood: they exist as far as references go, so a
    /// mistake in one is not reported again at every object naming it.
    broken: BTreeSet<(Section, String)>,
    /// JSON pointer (`/monitors/api/url`) -> position of its key.
    positions: HashMap<String, Pos>,
}

impl Loaded {
    /// Names of the section's objects that were written but not understood.
    pub fn broken(&self, section: Section) -> impl Iterator<Item = &String> {
        self.broken
            .iter()
            .filter(move |(s, _)| *s == section)
            .map(|(_, name)| name)
    }

    /// Where an object was written.
    pub fn object(&self, section: Section, name: &str) -> Option<Pos> {
        self.positions
            .get(&pointer(&[section.key(), name]))
            .cloned()
    }

    /// Where a field of an object was written, else where the object was.
    pub fn field(&self, section: Section, name: &str, path: &[&str]) -> Option<Pos> {
        let mut segments = vec![section.key(), name];
        segments.extend_from_slice(path);
        while segments.len() > 2 {
            if let Some(pos) = self.positions.get(&pointer(&segments)) {
                return Some(pos.clone());
            }
            segments.pop();
        }
        self.object(section, name)
    }
}

/// The YAML files among `paths` (directories: their `*.yaml` / `*.yml`, sorted).
pub fn expand_paths(paths: &[PathBuf]) -> Result<Vec<PathBuf>, Diagnostic> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let entries = std::fs::read_dir(path).map_err(|err| {
                Diagnostic::at(None, format!("cannot read {}: {err}", path.display()))
            })?;
            let mut found: Vec<PathBuf> = entries
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|p| {
                    p.is_file()
                        && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
                })
                .collect();
            // An empty directory is a mistake (a wrong mount, a typo), not "no objects":
            // with --prune it would delete everything the source manages.
            if found.is_empty() {
                return Err(Diagnostic::at(
                    None,
                    format!(
                        "{}: no *.yaml or *.yml files in this directory",
                        path.display()
                    ),
                ));
            }
            found.sort();
            files.extend(found);
        } else if path.is_file() {
            files.push(path.clone());
        } else {
            return Err(Diagnostic::at(
                None,
                format!("{}: no such file or directory", path.display()),
            ));
        }
    }
    Ok(files)
}

/// Reads and merges `files`.
pub fn load_files(files: &[PathBuf]) -> Loaded {
    let mut loaded = Loaded::default();
    for file in files {
        match std::fs::read_to_string(file) {
            Ok(text) => load_text(&mut loaded, &file.display().to_string(), &text),
            Err(err) => loaded.errors.push(Diagnostic::at(
                None,
                format!("cannot read {}: {err}", file.display()),
            )),
        }
    }
    loaded.errors.sort();
    loaded
}

/// Adds one file's objects to `loaded`.
pub fn load_text(loaded: &mut Loaded, file: &str, text: &str) {
    let mut errors = Vec::new();
    read_text(loaded, file, text, &mut errors);
    loaded.errors.append(&mut errors);
}

fn read_text(loaded: &mut Loaded, file: &str, text: &str, errors: &mut Vec<Diagnostic>) {
    let file: Arc<str> = Arc::from(file);
    let mut tree = Tree {
        file: file.clone(),
        positions: HashMap::new(),
        anchors: HashMap::new(),
        errors: Vec::new(),
    };
    let root = match tree.document(Parser::new_from_str(text)) {
        Ok(root) => root,
        Err(err) => {
            errors.push(err);
            return;
        }
    };
    errors.append(&mut tree.errors);
    let root = match root {
        Value::Null => return,
        Value::Object(map) => map,
        _ => {
            errors.push(Diagnostic::at(
                Some(Pos {
                    file,
                    line: 1,
                    column: 1,
                }),
                "a configuration file is a mapping of sections such as `monitors:`",
            ));
            return;
        }
    };
    for (key, value) in root {
        let key_pos = tree.positions.get(&pointer(&[&key])).cloned();
        let Some(section) = Section::ALL.into_iter().find(|s| s.key() == key) else {
            let known: Vec<&str> = Section::ALL.iter().map(|s| s.key()).collect();
            errors.push(Diagnostic::at(
                key_pos,
                format!(
                    "unknown section `{key}`; the sections are {}",
                    known.join(", ")
                ),
            ));
            continue;
        };
        let entries = match value {
            Value::Null => continue,
            Value::Object(entries) => entries,
            _ => {
                errors.push(Diagnostic::at(
                    key_pos,
                    format!("`{key}` must be a mapping from each object's name to the object"),
                ));
                continue;
            }
        };
        let config = &mut loaded.config;
        for (name, value) in entries {
            let context = Entry {
                section,
                name: &name,
                tree: &tree,
                loaded_positions: &loaded.positions,
            };
            let added = match section {
                Section::Regions => context.insert(&mut config.regions, value),
                Section::Datacenters => context.insert(&mut config.datacenters, value),
                Section::Schedules => context.insert(&mut config.schedules, value),
                Section::Monitors => context.insert(&mut config.monitors, value),
                Section::NotificationChannels => {
                    context.insert(&mut config.notification_channels, value)
                }
                Section::NotificationRoutes => {
                    context.insert(&mut config.notification_routes, value)
                }
                Section::MaintenanceWindows => {
                    context.insert(&mut config.maintenance_windows, value)
                }
            };
            if let Err(err) = added {
                errors.push(err);
                loaded.broken.insert((section, name));
            }
        }
    }
    for (pointer, pos) in tree.positions {
        loaded.positions.entry(pointer).or_insert(pos);
    }
}

/// One object of a section being added.
struct Entry<'a> {
    section: Section,
    name: &'a str,
    tree: &'a Tree,
    loaded_positions: &'a HashMap<String, Pos>,
}

impl Entry<'_> {
    fn insert<T: DeserializeOwned>(
        &self,
        into: &mut BTreeMap<String, T>,
        value: Value,
    ) -> Result<(), Diagnostic> {
        let here = pointer(&[self.section.key(), self.name]);
        let pos = self.tree.positions.get(&here).cloned();
        let noun = self.section.noun();
        if let Some(first) = self.loaded_positions.get(&here) {
            return Err(Diagnostic::at(
                pos,
                format!(
                    "{noun} \"{}\" is also defined at {first}; names must be unique",
                    self.name
                ),
            ));
        }
        if self.name.trim().is_empty() {
            return Err(Diagnostic::at(pos, format!("a {noun} needs a name")));
        }
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(object) => {
                into.insert(self.name.to_string(), object);
                Ok(())
            }
            Err(err) => {
                let mut segments = vec![self.section.key().to_string(), self.name.to_string()];
                let mut field = Vec::new();
                for segment in err.path().iter() {
                    use serde_path_to_error::Segment;
                    let text = match segment {
                        Segment::Map { key } => key.clone(),
                        Segment::Seq { index } => index.to_string(),
                        Segment::Enum { variant } => variant.clone(),
                        Segment::Unknown => continue,
                    };
                    field.push(text.clone());
                    segments.push(text);
                }
                let inner = err.into_inner().to_string();
                // An unknown field's path ends at its object; point at the field itself.
                if let Some(unknown) = inner
                    .strip_prefix("unknown field `")
                    .and_then(|rest| rest.split('`').next())
                {
                    segments.push(unknown.to_string());
                }
                let mut at = None;
                while at.is_none() && segments.len() >= 2 {
                    let refs: Vec<&str> = segments.iter().map(String::as_str).collect();
                    at = self.tree.positions.get(&pointer(&refs)).cloned();
                    segments.pop();
                }
                let what = if field.is_empty() {
                    String::new()
                } else {
                    format!(" field `{}`", field.join("."))
                };
                Err(Diagnostic::at(
                    at,
                    format!("{noun} \"{}\"{what}: {}", self.name, explain(&inner)),
                ))
            }
        }
    }
}

/// serde's messages, with the fix spelled out where it is not obvious.
fn explain(message: &str) -> String {
    if message.starts_with("missing field") {
        format!("{message}; add it")
    } else if message.starts_with("unknown field") {
        format!("{message}; check the spelling")
    } else {
        message.to_string()
    }
}

/// A JSON pointer (RFC 6901) from its segments.
fn pointer(segments: &[&str]) -> String {
    segments.iter().fold(String::new(), |mut out, segment| {
        out.push('/');
        out.push_str(&segment.replace('~', "~0").replace('/', "~1"));
        out
    })
}

/// Builds a JSON value from parser events, remembering positions.
struct Tree {
    file: Arc<str>,
    positions: HashMap<String, Pos>,
    anchors: HashMap<usize, Value>,
    errors: Vec<Diagnostic>,
}

type Events<'a> = Parser<'a, saphyr_parser::StrInput<'a>>;

impl Tree {
    fn pos(&self, span: &Span) -> Pos {
        Pos {
            file: self.file.clone(),
            line: span.start.line(),
            column: span.start.col() + 1,
        }
    }

    fn next<'a>(&self, events: &mut Events<'a>) -> Result<(Event<'a>, Span), Diagnostic> {
        match events.next() {
            Some(Ok(event)) => Ok(event),
            Some(Err(err)) => Err(Diagnostic::at(
                Some(Pos {
                    file: self.file.clone(),
                    line: err.marker().line(),
                    column: err.marker().col() + 1,
                }),
                format!("not valid YAML: {}", err.info()),
            )),
            None => Err(Diagnostic::at(
                None,
                format!("{}: unexpected end", self.file),
            )),
        }
    }

    fn document(&mut self, mut events: Events<'_>) -> Result<Value, Diagnostic> {
        let mut root = Value::Null;
        let mut documents = 0;
        loop {
            let (event, span) = self.next(&mut events)?;
            match event {
                Event::StreamStart | Event::DocumentEnd | Event::Nothing => {}
                Event::StreamEnd => return Ok(root),
                Event::DocumentStart(_) => {
                    documents += 1;
                    if documents > 1 {
                        return Err(Diagnostic::at(
                            Some(self.pos(&span)),
                            "one YAML document per file: split this one at `---` into two files",
                        ));
                    }
                    let (event, span) = self.next(&mut events)?;
                    root = self.node(&mut events, event, span, &[])?;
                }
                _ => root = self.node(&mut events, event, span, &[])?,
            }
        }
    }

    fn node(
        &mut self,
        events: &mut Events<'_>,
        event: Event<'_>,
        span: Span,
        path: &[String],
    ) -> Result<Value, Diagnostic> {
        let (value, anchor) = match event {
            Event::Scalar(text, style, anchor, _) => (scalar(&text, style), anchor),
            Event::Alias(id) => (self.anchors.get(&id).cloned().unwrap_or(Value::Null), 0),
            Event::SequenceStart(anchor, _) => {
                let mut items = Vec::new();
                loop {
                    let (event, span) = self.next(events)?;
                    if matches!(event, Event::SequenceEnd) {
                        break;
                    }
                    let mut item_path = path.to_vec();
                    item_path.push(items.len().to_string());
                    self.remember(&item_path, &span);
                    items.push(self.node(events, event, span, &item_path)?);
                }
                (Value::Array(items), anchor)
            }
            Event::MappingStart(anchor, _) => {
                let mut map = Map::new();
                loop {
                    let (event, key_span) = self.next(events)?;
                    let key = match event {
                        Event::MappingEnd => break,
                        Event::Scalar(text, _, _, _) => text.into_owned(),
                        other => {
                            // Consume the complex key, then refuse it.
                            self.node(events, other, key_span, path)?;
                            self.errors.push(Diagnostic::at(
                                Some(self.pos(&key_span)),
                                "keys must be plain text",
                            ));
                            String::new()
                        }
                    };
                    let mut key_path = path.to_vec();
                    key_path.push(key.clone());
                    if map.contains_key(&key) {
                        self.errors.push(Diagnostic::at(
                            Some(self.pos(&key_span)),
                            format!("`{key}` appears twice here; keep one"),
                        ));
                    } else {
                        self.remember(&key_path, &key_span);
                    }
                    let (event, span) = self.next(events)?;
                    let value = self.node(events, event, span, &key_path)?;
                    map.entry(key).or_insert(value);
                }
                (Value::Object(map), anchor)
            }
            _ => {
                return Err(Diagnostic::at(
                    Some(self.pos(&span)),
                    "unexpected YAML structure",
                ))
            }
        };
        if anchor > 0 {
            self.anchors.insert(anchor, value.clone());
        }
        Ok(value)
    }

    fn remember(&mut self, path: &[String], span: &Span) {
        let refs: Vec<&str> = path.iter().map(String::as_str).collect();
        let pos = self.pos(span);
        self.positions.entry(pointer(&refs)).or_insert(pos);
    }
}

/// A scalar under the YAML 1.2 core schema: only plain (unquoted) scalars can be
/// null, booleans or numbers.
fn scalar(text: &str, style: ScalarStyle) -> Value {
    if style != ScalarStyle::Plain {
        return Value::String(text.to_string());
    }
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    let numeric = text.bytes().any(|b| b.is_ascii_digit())
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'));
    if numeric {
        if let Ok(int) = text.parse::<i64>() {
            return Value::from(int);
        }
        if let Some(number) = text
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
        {
            return Value::Number(number);
        }
    }
    Value::String(text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Loaded, Vec<Diagnostic>> {
        let mut loaded = Loaded::default();
        load_text(&mut loaded, "f.yaml", text);
        loaded.errors.sort();
        if loaded.errors.is_empty() {
            Ok(loaded)
        } else {
            Err(loaded.errors)
        }
    }

    #[test]
    fn scalars_follow_the_core_schema() {
        assert_eq!(scalar("yes", ScalarStyle::Plain), Value::from("yes"));
        assert_eq!(scalar("30", ScalarStyle::Plain), Value::from(30));
        assert_eq!(scalar("30", ScalarStyle::DoubleQuoted), Value::from("30"));
        assert_eq!(scalar("1.5", ScalarStyle::Plain), Value::from(1.5));
        assert_eq!(scalar("inf", ScalarStyle::Plain), Value::from("inf"));
        assert_eq!(scalar("~", ScalarStyle::Plain), Value::Null);
        assert_eq!(
            scalar("200-399", ScalarStyle::Plain),
            Value::from("200-399")
        );
    }

    #[test]
    fn a_mistake_is_reported_at_its_field() {
        let errors = load(
            "schedules:\n  fast:\n    interval: 30s\n  slow:\n    intervall: 1m\nmonitors:\n  a:\n    url: 5\n",
        )
        .unwrap_err();
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 2, "{text:?}");
        assert!(
            text[0].starts_with("f.yaml:5:5: schedule \"slow\""),
            "{text:?}"
        );
        assert!(text[0].contains("intervall"), "{text:?}");
        assert!(
            text[1].starts_with("f.yaml:8:5: monitor \"a\" field `url`"),
            "{text:?}"
        );
    }

    #[test]
    fn positions_of_objects_and_fields() {
        let loaded = load("schedules:\n  fast:\n    interval: 30s\n").unwrap();
        let pos = loaded.object(Section::Schedules, "fast").unwrap();
        assert_eq!((pos.line, pos.column), (2, 3));
        let pos = loaded
            .field(Section::Schedules, "fast", &["interval"])
            .unwrap();
        assert_eq!((pos.line, pos.column), (3, 5));
    }
}
