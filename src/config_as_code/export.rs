//! `vantage export`: the database's configuration as a file `apply` accepts.
//!
//! Deterministic: sections and objects are sorted by name, fields keep the model's
//! order, defaults are left out. Secrets are written as the references they were
//! applied from; a secret the database holds as a value (set by hand) is written as a
//! `VANTAGE_SECRET_...` placeholder reference, with a warning, never as the value.

use super::model::ConfigFile;
use super::objects::{
    Channels, Cx, Datacenters, Kind, Monitors, Regions, Routes, Schedules, Windows,
};
use super::plan::State;

/// The configuration (of one source, or all of it) and the warnings about secrets that
/// could not be written as they are.
pub fn export(state: &State, source: Option<&str>) -> (ConfigFile, Vec<String>) {
    let mut config = ConfigFile::default();
    let mut warnings = Vec::new();
    collect::<Regions>(state, source, &mut config, &mut warnings);
    collect::<Datacenters>(state, source, &mut config, &mut warnings);
    collect::<Schedules>(state, source, &mut config, &mut warnings);
    collect::<Channels>(state, source, &mut config, &mut warnings);
    collect::<Monitors>(state, source, &mut config, &mut warnings);
    collect::<Routes>(state, source, &mut config, &mut warnings);
    collect::<Windows>(state, source, &mut config, &mut warnings);
    (config, warnings)
}

fn collect<K: Kind>(
    state: &State,
    source: Option<&str>,
    config: &mut ConfigFile,
    warnings: &mut Vec<String>,
) {
    for (name, (row, managed_by)) in state.of::<K>() {
        if source.is_some_and(|source| managed_by.as_deref() != Some(source)) {
            continue;
        }
        let mut cx = Cx::new(None, K::SECTION, &name);
        let model = K::to_model(&row, &mut cx);
        warnings.append(&mut cx.warnings);
        K::models_mut(config).insert(name, model);
    }
}

/// The YAML text of a configuration.
pub fn to_yaml(config: &ConfigFile) -> Result<String, serde_yaml_ng::Error> {
    serde_yaml_ng::to_string(config)
}

/// The JSON Schema of the file format, as shipped in docs/vantage-config.schema.json.
pub fn schema() -> String {
    let schema = schemars::schema_for!(ConfigFile);
    let mut text = serde_json::to_string_pretty(&schema).expect("schemas serialize");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    /// The shipped schema is the one the types derive; regenerate it with
    /// `vantage export --schema > docs/vantage-config.schema.json`.
    #[test]
    fn shipped_schema_is_current() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/docs/vantage-config.schema.json"
        );
        let shipped = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            shipped == super::schema(),
            "{path} is stale: run `vantage export --schema > docs/vantage-config.schema.json`"
        );
    }
}
