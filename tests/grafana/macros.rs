//! Grafana's Postgres-datasource macros and template variables, expanded the way
//! Grafana expands them before a query reaches the database. Shared by the dashboard
//! test (`tests/grafana_dashboards.rs`) and the benchmark (`examples/rollup_bench.rs`),
//! so both run exactly the SQL Grafana would.

// Each includer uses a different part of this.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, TimeDelta, Utc};

/// What Grafana knows when it sends a query: the time range, the interval it chose for
/// the panel's width, and the values of the template variables.
pub struct QueryContext {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub interval: TimeDelta,
    /// Variable name -> selected values (all of them for "All").
    pub vars: BTreeMap<String, Vec<String>>,
    /// Variables with multi-select or "All" enabled (Grafana quotes their values).
    pub multi: BTreeSet<String>,
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Grafana's `$__interval` text: the largest whole unit (`1h`, `30m`, `15s`, `500ms`).
pub fn interval_text(d: TimeDelta) -> String {
    let ms = d.num_milliseconds();
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms >= size && ms % size == 0 {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// The argument list of the macro call starting at `s` (just after `name(`), and
/// the rest of the text after the closing parenthesis.
fn macro_args(s: &str) -> (Vec<String>, &str) {
    let mut depth = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' if depth == 0 => {
                let args = split_args(&s[..i]);
                return (args, &s[i + 1..]);
            }
            ')' => depth -= 1,
            _ => {}
        }
    }
    panic!("unclosed macro call: {s}");
}

fn split_args(s: &str) -> Vec<String> {
    let mut args = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                args.push(s[start..i].trim().to_string());
                start = i + 1;
            }
            _ => {}
        }
    }
    if !s.trim().is_empty() {
        args.push(s[start..].trim().to_string());
    }
    args
}

/// An interval argument as Grafana accepts it: `$__interval` or `'5m'` / `5m`.
fn parse_interval(arg: &str, ctx: &QueryContext) -> TimeDelta {
    let arg = arg.trim().trim_matches('\'');
    if arg == "$__interval" {
        return ctx.interval;
    }
    let split = arg.find(|c: char| !c.is_ascii_digit()).expect("a unit");
    let n: i64 = arg[..split].parse().expect("a number");
    match &arg[split..] {
        "ms" => TimeDelta::milliseconds(n),
        "s" => TimeDelta::seconds(n),
        "m" => TimeDelta::minutes(n),
        "h" => TimeDelta::hours(n),
        "d" => TimeDelta::days(n),
        unit => panic!("unknown interval unit {unit}"),
    }
}

/// Expands the macros of Grafana's Postgres datasource (as documented and as its
/// `macros.go` writes them) and then the template variables.
pub fn expand(sql: &str, ctx: &QueryContext) -> String {
    let mut out = String::new();
    let mut rest = sql;
    while let Some(pos) = rest.find("$__") {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 3..];
        let name_len = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        let name = &after[..name_len];
        let tail = &after[name_len..];
        if let Some(call) = tail.strip_prefix('(') {
            let (args, remaining) = macro_args(call);
            let from = format!("'{}'", rfc3339(ctx.from));
            let to = format!("'{}'", rfc3339(ctx.to));
            let expanded = match name {
                "timeFilter" => format!("{} BETWEEN {from} AND {to}", args[0]),
                "timeFrom" => from,
                "timeTo" => to,
                "timeGroup" | "timeGroupAlias" => {
                    let secs = parse_interval(&args[1], ctx).num_seconds();
                    let group = format!("floor(extract(epoch from {})/{secs})*{secs}", args[0]);
                    if name == "timeGroupAlias" {
                        format!("{group} AS \"time\"")
                    } else {
                        group
                    }
                }
                "unixEpochFilter" => format!(
                    "{c} >= {} AND {c} <= {}",
                    ctx.from.timestamp(),
                    ctx.to.timestamp(),
                    c = args[0]
                ),
                other => panic!("macro $__{other}() is not supported by this test: add it"),
            };
            out.push_str(&expanded);
            rest = remaining;
        } else {
            let expanded = match name {
                "interval_ms" => ctx.interval.num_milliseconds().to_string(),
                "interval" => interval_text(ctx.interval),
                other => panic!("variable $__{other} is not supported by this test: add it"),
            };
            out.push_str(&expanded);
            rest = tail;
        }
    }
    out.push_str(rest);
    expand_variables(&out, ctx)
}

/// `${name:csv}` -> `1,2,3`; `$name` / `${name}` -> the value itself for a single-value
/// variable, or `'1','2','3'` for a multi-value one (SQL datasources quote them).
fn expand_variables(sql: &str, ctx: &QueryContext) -> String {
    let mut out = String::new();
    let mut rest = sql;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        let (name, format, remaining) = if let Some(braced) = after.strip_prefix('{') {
            let end = braced.find('}').expect("closed ${");
            let inner = &braced[..end];
            let (name, format) = inner.split_once(':').unwrap_or((inner, ""));
            (name.to_string(), format.to_string(), &braced[end + 1..])
        } else {
            let len = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            assert!(len > 0, "a lone $ in: {sql}");
            (after[..len].to_string(), String::new(), &after[len..])
        };
        let values = ctx
            .vars
            .get(&name)
            .unwrap_or_else(|| panic!("unknown variable ${name} in: {sql}"));
        let expanded = match format.as_str() {
            "csv" => values.join(","),
            "" if ctx.multi.contains(&name) => values
                .iter()
                .map(|v| format!("'{}'", v.replace('\'', "''")))
                .collect::<Vec<_>>()
                .join(","),
            "" => values.join(","),
            other => panic!("variable format :{other} is not supported by this test: add it"),
        };
        out.push_str(&expanded);
        rest = remaining;
    }
    out.push_str(rest);
    out
}
