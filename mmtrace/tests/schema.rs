//! The stream's contract, without root: `mmtrace schema` prints the JSON
//! Schema generated from the record types, and docs/json-schema.md names
//! every field and record type in it (so the two cannot drift).
use std::{collections::BTreeSet, path::Path, process::Command};

use serde_json::Value;

fn schema() -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_mmtrace"))
        .arg("schema")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("`mmtrace schema` prints JSON")
}

/// Every property name anywhere in the schema.
fn properties(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::Object(p)) = m.get("properties") {
                out.extend(p.keys().cloned());
            }
            m.values().for_each(|x| properties(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| properties(x, out)),
        _ => {}
    }
}

/// The record types (`type` constants).
fn record_types(v: &Value) -> BTreeSet<String> {
    v["oneOf"]
        .as_array()
        .expect("the schema is a oneOf of record types")
        .iter()
        .filter_map(|r| r["properties"]["type"]["const"].as_str().map(String::from))
        .collect()
}

/// Words inside backticks in the doc, split at `.` (for `scope.pids`).
fn documented() -> BTreeSet<String> {
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/json-schema.md"),
    )
    .unwrap();
    doc.split('`')
        .skip(1)
        .step_by(2)
        .flat_map(|t| t.split(['.', ' ', ',']))
        .map(|w| w.trim_matches('"').to_string())
        .collect()
}

#[test]
fn the_doc_names_every_field_and_record_type() {
    let s = schema();
    let mut fields = BTreeSet::new();
    properties(&s, &mut fields);
    let doc = documented();
    let missing: Vec<_> = fields.iter().filter(|f| !doc.contains(*f)).collect();
    assert!(
        missing.is_empty(),
        "docs/json-schema.md does not name these fields of `mmtrace schema`: {missing:?}"
    );
    let types = record_types(&s);
    assert!(types.len() >= 6, "{types:?}");
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/json-schema.md"),
    )
    .unwrap();
    for t in &types {
        assert!(
            text.contains(&format!("## `{t}`")),
            "docs/json-schema.md has no section `## `{t}``"
        );
    }
}

#[test]
fn the_schema_is_draft_2020_12_and_closed_over_its_definitions() {
    let s = schema();
    assert!(
        s["$schema"].as_str().is_some_and(|u| u.contains("2020-12")),
        "{}",
        s["$schema"]
    );
    // Every $ref points at a definition that exists.
    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.push(r.clone());
                }
                m.values().for_each(|x| refs(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    refs(&s, &mut all);
    assert!(!all.is_empty());
    for r in all {
        let name = r.strip_prefix("#/$defs/").expect("local refs only");
        assert!(s["$defs"].get(name).is_some(), "dangling {r}");
    }
}
