//! The compatibility modes, data-driven: `compatibility.json` holds one pair of schemas
//! per schema-resolution rule, with what each direction must report (the rule's kind
//! and field path). Every mode is checked against every pair: a mode refuses exactly
//! the directions it includes. The transitive cases hold version histories where only
//! an earlier version breaks the rule.

use apache_avro::Schema;
use datarun_schema::compat::{self, Compatibility, Direction};
use serde_json::Value;

fn cases() -> Value {
    serde_json::from_str(include_str!("compatibility.json")).expect("compatibility.json parses")
}

fn schema(json: &Value) -> Schema {
    Schema::parse_str(&json.to_string()).unwrap_or_else(|e| panic!("{json} is not Avro: {e}"))
}

/// (kind, path) pairs, sorted.
fn expected(list: &Value) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = list
        .as_array()
        .expect("a list of expected refusals")
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_owned(),
                e["path"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    pairs.sort();
    pairs
}

#[test]
fn every_mode_applies_every_rule_in_the_directions_it_includes() {
    let cases = cases();
    let pairs = cases["pairs"].as_array().unwrap();
    assert!(pairs.len() >= 30, "one case per rule");
    for case in pairs {
        let rule = case["rule"].as_str().unwrap();
        let (old, new) = (schema(&case["old"]), schema(&case["new"]));
        let backward = expected(&case["backward"]);
        let forward = expected(&case["forward"]);
        for mode in Compatibility::ALL {
            let refusals = compat::check(mode, &new, &[(1, &old)]);
            let found = |direction| {
                let mut pairs: Vec<(String, String)> = refusals
                    .iter()
                    .filter(|r| r.direction == direction)
                    .map(|r| {
                        assert_eq!(r.version, 1);
                        (
                            r.incompatibility.kind.code().to_owned(),
                            r.incompatibility.path.clone(),
                        )
                    })
                    .collect();
                pairs.sort();
                pairs
            };
            let includes_backward = matches!(
                mode,
                Compatibility::Backward
                    | Compatibility::BackwardTransitive
                    | Compatibility::Full
                    | Compatibility::FullTransitive
            );
            let includes_forward = matches!(
                mode,
                Compatibility::Forward
                    | Compatibility::ForwardTransitive
                    | Compatibility::Full
                    | Compatibility::FullTransitive
            );
            let want_backward = if includes_backward {
                backward.clone()
            } else {
                vec![]
            };
            let want_forward = if includes_forward {
                forward.clone()
            } else {
                vec![]
            };
            assert_eq!(
                found(Direction::NewReadsOld),
                want_backward,
                "{rule}: {mode}, the new schema reading old data"
            );
            assert_eq!(
                found(Direction::OldReadsNew),
                want_forward,
                "{rule}: {mode}, the old schema reading new data"
            );
            for refusal in &refusals {
                let text = refusal.to_string();
                assert!(
                    text.contains("version 1")
                        && text.contains(refusal.incompatibility.kind.code()),
                    "{rule}: the refusal says what and against which version: {text}"
                );
                if !refusal.incompatibility.path.is_empty() {
                    assert!(
                        text.contains(&refusal.incompatibility.path),
                        "{rule}: the refusal names the field path: {text}"
                    );
                }
            }
        }
    }
}

#[test]
fn transitive_modes_check_every_earlier_version() {
    let cases = cases();
    for case in cases["transitive"].as_array().unwrap() {
        let rule = case["rule"].as_str().unwrap();
        let versions: Vec<Schema> = case["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(schema)
            .collect();
        let history: Vec<(u32, &Schema)> = versions
            .iter()
            .enumerate()
            .map(|(i, s)| (i as u32 + 1, s))
            .collect();
        let new = schema(&case["new"]);
        let refused_by: Vec<&str> = case["refused_by"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_str().unwrap())
            .collect();
        for mode in Compatibility::ALL {
            let refusals = compat::check(mode, &new, &history);
            if refused_by.contains(&mode.as_str()) {
                assert!(!refusals.is_empty(), "{rule}: {mode} must refuse");
                for refusal in &refusals {
                    assert_eq!(refusal.version, case["version"].as_u64().unwrap() as u32);
                    assert_eq!(refusal.incompatibility.path, case["path"].as_str().unwrap());
                }
            } else {
                assert!(
                    refusals.is_empty(),
                    "{rule}: {mode} must accept: {refusals:?}"
                );
            }
        }
    }
}

#[test]
fn modes_have_confluent_names() {
    for mode in Compatibility::ALL {
        assert_eq!(Compatibility::parse(mode.as_str()), Some(mode));
    }
    assert_eq!(Compatibility::default(), Compatibility::Backward);
    assert_eq!(Compatibility::parse("backward"), None);
    assert_eq!(Compatibility::parse("FULLY"), None);
}

#[test]
fn a_first_version_is_compatible_under_every_mode() {
    let first = schema(&cases()["pairs"][0]["new"]);
    for mode in Compatibility::ALL {
        assert!(compat::check(mode, &first, &[]).is_empty());
    }
}

/// A record type referenced twice by each of 28 nested types (about as deep as a schema
/// can be: JSON parsing stops at 128 levels): re-checked at every reference, the check
/// would take 2^28 steps (it did not finish in a minute). Each named type is checked
/// once, and a broken field deep inside it is still reported, once.
#[test]
fn named_types_referenced_many_times_are_checked_once() {
    fn nested(levels: usize, leaf_fields: Value) -> Schema {
        let mut types = vec![serde_json::json!({
            "type": "record", "name": "L0", "fields": leaf_fields
        })];
        for level in 1..=levels {
            let inner = format!("L{}", level - 1);
            types.push(serde_json::json!({
                "type": "record", "name": format!("L{level}"),
                "fields": [{"name": "a", "type": inner}, {"name": "b", "type": inner}]
            }));
        }
        // Each type is defined at its first use: the outermost holds the whole chain.
        let mut schema = types[0].clone();
        for mut outer in types.into_iter().skip(1) {
            outer["fields"][0]["type"] = schema;
            schema = outer;
        }
        Schema::parse_str(&schema.to_string()).unwrap()
    }
    let old = nested(28, serde_json::json!([{"name": "x", "type": "int"}]));
    let same = nested(28, serde_json::json!([{"name": "x", "type": "int"}]));
    assert!(compat::can_read(&same, &old).is_empty());
    let wider = nested(
        28,
        serde_json::json!([{"name": "x", "type": "int"}, {"name": "y", "type": "string"}]),
    );
    let refusals = compat::can_read(&wider, &old);
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    assert_eq!(
        refusals[0].kind,
        compat::IncompatibilityKind::ReaderFieldMissingDefaultValue
    );
    assert!(refusals[0].path.ends_with("a.a.y"), "{}", refusals[0].path);
}
