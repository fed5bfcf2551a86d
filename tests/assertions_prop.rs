//! Property tests of the assertion language (`src/assertions.rs`): any text or JSON
//! gives assertions or an error, never a panic; whatever is accepted prints to a text
//! form and a stored form that both read back equal; generated valid assertions of
//! every type are accepted.
//!
//! Cases are bounded (`CASES` per property) so the file runs in a few seconds in CI;
//! set `PROPTEST_CASES` to search longer locally.

use proptest::prelude::*;
use serde_json::{json, Value};
use vantage::assertions::Assertions;

const CASES: u32 = 256;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(CASES),
        // Failures are reported with their minimal input; nothing to persist in CI.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Accepted assertions print and store to forms that read back equal.
fn assert_round_trips(assertions: &Assertions) -> Result<(), TestCaseError> {
    let texts: Vec<String> = assertions.iter().map(|a| a.to_string()).collect();
    let reparsed = Assertions::from_texts(&texts);
    prop_assert_eq!(reparsed.as_ref(), Ok(assertions), "{:?}", texts);
    let stored = assertions.to_json();
    let restored = Assertions::from_json(&stored);
    prop_assert_eq!(restored.as_ref(), Ok(assertions), "{}", stored);
    Ok(())
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        (-1e9f64..1e9).prop_map(|n| json!(n)),
        "[ -~]{0,12}".prop_map(Value::String),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::btree_map("[a-z ]{1,5}", inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn json_path() -> impl Strategy<Value = String> {
    let name = "[a-z_][a-z0-9_]{0,8}";
    prop_oneof![
        name.prop_map(|n| format!("$.{n}")),
        (name, 0usize..5).prop_map(|(n, i)| format!("$.{n}[{i}]")),
        name.prop_map(|n| format!("$..{n}")),
        "[a-z ]{1,8}".prop_map(|n| format!("$['{n}'] .x")),
        (name, name).prop_map(|(a, b)| format!("$.items[?@.{a} == '{b} c'].{b}")),
        (name, 0usize..5).prop_map(|(n, i)| format!("/{n}/{i}")),
        "[a-z~01/]{0,10}".prop_map(|p| format!("/{}", p.replace('~', "~0"))),
    ]
}

/// One valid assertion of any type, in the text form.
fn valid_text() -> impl Strategy<Value = String> {
    let phrase = "[!-~][ -~]{0,20}";
    prop_oneof![
        (100u16..=599, 0u16..50).prop_map(|(lo, span)| format!(
            "status:{lo}-{},{}xx",
            (lo + span).min(599),
            lo / 100
        )),
        (prop_oneof![Just("contains"), Just("!contains")], phrase)
            .prop_map(|(op, text)| format!("body:{op} {text}")),
        phrase.prop_map(|text| format!("body:~ {}", regex::escape(&text))),
        (
            json_path(),
            prop_oneof![Just("=="), Just("!="), Just("contains")],
            json_value()
        )
            .prop_map(|(path, op, value)| format!("json:{path} {op} {value}")),
        (
            json_path(),
            prop_oneof![Just("<"), Just(">"), Just("<="), Just(">=")],
            -1e6f64..1e6
        )
            .prop_map(|(path, op, n)| format!("json:{path} {op} {n}")),
        (json_path(), prop_oneof![Just("exists"), Just("!exists")])
            .prop_map(|(path, op)| format!("json:{path} {op}")),
        (
            "[A-Za-z][A-Za-z0-9-]{0,15}",
            prop_oneof![Just("exists"), Just("!exists")]
        )
            .prop_map(|(name, op)| format!("header:{name} {op}")),
        ("[A-Za-z][A-Za-z0-9-]{0,15}", phrase)
            .prop_map(|(name, value)| format!("header:{name} == {value}")),
        ("[A-Za-z][A-Za-z0-9-]{0,15}", phrase)
            .prop_map(|(name, value)| format!("header:{name} ~ {}", regex::escape(&value))),
        (
            prop_oneof![Just("total"), Just("ttfb")],
            0f64..100_000.0,
            prop_oneof![Just(""), Just("ms"), Just("s")]
        )
            .prop_map(|(phase, n, unit)| format!("time:{phase} < {n}{unit}")),
        any::<u32>().prop_map(|days| format!("cert:expires > {days}d")),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_text_gives_assertions_or_an_error(
        text in prop_oneof![
            any::<String>(),
            "(status|body|json|header|time|cert):[ -~]{0,30}",
            "json:\\$[ -~]{0,12} (==|<|contains|exists) [ -~]{0,12}",
        ]
    ) {
        if let Ok(assertions) = Assertions::from_texts(&[&text]) {
            assert_round_trips(&assertions)?;
        }
    }

    #[test]
    fn valid_texts_are_accepted_and_round_trip(
        texts in prop::collection::vec(valid_text(), 1..4)
    ) {
        let assertions = Assertions::from_texts(&texts);
        prop_assert!(assertions.is_ok(), "{:?}: {:?}", texts, assertions);
        assert_round_trips(&assertions.unwrap())?;
    }

    #[test]
    fn any_json_gives_assertions_or_an_error(
        kind in prop_oneof![
            Just("status"), Just("body"), Just("json"), Just("header"),
            Just("response_time"), Just("cert_expiry"), Just("other"),
        ],
        fields in prop::collection::btree_map(
            prop_oneof![
                Just("codes"), Just("op"), Just("value"), Just("path"), Just("name"),
                Just("phase"), Just("max_ms"), Just("min_days"), Just("extra"),
            ],
            prop_oneof![
                json_value(),
                prop_oneof![
                    Just("=="), Just("<"), Just("contains"), Just("not_contains"),
                    Just("matches"), Just("exists"), Just("equals"), Just("total"),
                    Just("$.a"), Just("/a"), Just("200-299"), Just("etag"),
                ].prop_map(|s| json!(s)),
            ],
            0..5,
        )
    ) {
        let mut object: serde_json::Map<String, Value> =
            fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        object.insert("type".into(), json!(kind));
        let stored = json!([object]);
        if let Ok(assertions) = Assertions::from_json(&stored) {
            assert_round_trips(&assertions)?;
        }
    }
}
