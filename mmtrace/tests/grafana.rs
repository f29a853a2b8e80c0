//! The Grafana dashboard (deploy/grafana/mmtrace-dashboard.json) imports
//! cleanly and asks only for metrics mmtrace exports. No root needed.
use std::collections::BTreeSet;

use serde_json::Value;

/// Every metric name `/metrics` exports. Keep in step with the server's
/// metrics module (mmtrace/src/output/serve/metrics.rs): a dashboard query
/// on a name not listed here would draw an empty panel.
const METRICS: &[&str] = &[
    "mmtrace_cgroup_faults_total",
    "mmtrace_cgroup_pages_added_total",
    "mmtrace_cgroup_pages_evicted_total",
    "mmtrace_cgroup_refault_pages_total",
    "mmtrace_process_faults_total",
    "mmtrace_file_faults_total",
    "mmtrace_file_pages_added_total",
    "mmtrace_file_pages_evicted_total",
    "mmtrace_memory_pressure_stalled_seconds_total",
    "mmtrace_events_dropped_total",
    "mmtrace_lost_faults_total",
    "mmtrace_bpf_run_seconds_total",
    "mmtrace_bpf_runs_total",
    "mmtrace_file_resident_bytes",
    "mmtrace_cgroup_memory_usage_bytes",
    "mmtrace_cgroup_memory_limit_bytes",
    "mmtrace_cgroup_memory_file_bytes",
    "mmtrace_cgroup_memory_anon_bytes",
    "mmtrace_cgroup_rss_file_bytes",
    "mmtrace_cgroup_rss_anon_bytes",
    "mmtrace_sse_clients",
    "mmtrace_build_info",
    "mmtrace_write_protect_faults_total",
    "mmtrace_pages_dirtied_total",
    "mmtrace_pages_written_back_total",
    "mmtrace_writeback_waits_total",
    "mmtrace_msync_calls_total",
    "mmtrace_msync_seconds_total",
    "mmtrace_signals_total",
    "mmtrace_tlb_remote_shootdowns_total",
    "mmtrace_tlb_remote_flush_requests_total",
    "mmtrace_fault_stall_seconds_total",
];

fn dashboard() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/grafana/mmtrace-dashboard.json"
    );
    let text = std::fs::read_to_string(path).expect("reading the dashboard");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// Panels, including those nested in collapsed rows.
fn panels(d: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        out.push(p);
        if let Some(inner) = p["panels"].as_array() {
            out.extend(inner);
        }
    }
    out
}

/// `expr` without its string literals (label values such as "major").
fn without_strings(expr: &str) -> String {
    let mut out = String::new();
    let mut quoted = false;
    let mut escaped = false;
    for c in expr.chars() {
        match (quoted, escaped, c) {
            (true, true, _) => escaped = false,
            (true, false, '\\') => escaped = true,
            (_, false, '"') => quoted = !quoted,
            (true, ..) => {}
            (false, ..) => out.push(c),
        }
    }
    out
}

/// The identifiers of a PromQL expression (metric names, functions, labels).
fn identifiers(expr: &str) -> BTreeSet<String> {
    without_strings(expr)
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':' || c == '$'))
        .filter(|w| w.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_'))
        .map(str::to_string)
        .collect()
}

#[test]
fn imports_with_a_datasource_input_and_the_variables() {
    let d = dashboard();
    assert!(d["schemaVersion"].as_u64().unwrap() >= 39);
    let inputs = d["__inputs"].as_array().expect("__inputs");
    assert!(
        inputs
            .iter()
            .any(|i| i["name"] == "DS_PROMETHEUS" && i["type"] == "datasource")
    );
    let vars: Vec<&str> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    for v in ["datasource", "instance", "cgroup"] {
        assert!(vars.contains(&v), "template variable {v} missing: {vars:?}");
    }
    assert!(!d["title"].as_str().unwrap().is_empty());
}

#[test]
fn every_panel_has_a_title_a_description_and_queries() {
    let d = dashboard();
    let mut ids = BTreeSet::new();
    for p in panels(&d) {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "duplicate id: {p}");
        let title = p["title"].as_str().unwrap_or_default();
        assert!(!title.is_empty(), "a panel without a title: {p}");
        if p["type"] == "row" {
            continue;
        }
        let desc = p["description"].as_str().unwrap_or_default();
        assert!(desc.len() >= 40, "{title}: no real description");
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no queries");
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or_default();
            assert!(!expr.is_empty(), "{title}: a query without expr");
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
        }
    }
}

#[test]
fn queries_use_only_exported_metrics_and_grafana_ranges() {
    let d = dashboard();
    let known: BTreeSet<&str> = METRICS.iter().copied().collect();
    let mut used = BTreeSet::new();
    let mut exprs: Vec<(String, String)> = Vec::new();
    for p in panels(&d) {
        for t in p["targets"].as_array().into_iter().flatten() {
            exprs.push((p["title"].to_string(), t["expr"].as_str().unwrap().into()));
        }
    }
    for v in d["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["definition"].as_str() {
            exprs.push((v["name"].to_string(), q.into()));
        }
    }
    for (title, expr) in &exprs {
        let names: Vec<String> = identifiers(expr)
            .into_iter()
            .filter(|w| w.starts_with("mmtrace_"))
            .collect();
        assert!(!names.is_empty(), "{title}: no mmtrace metric in {expr}");
        for n in names {
            assert!(known.contains(n.as_str()), "{title}: unknown metric {n}");
            used.insert(n);
        }
        // Range selectors follow the dashboard: rates over Grafana's
        // $__rate_interval, totals over the time range.
        for part in without_strings(expr).split('[').skip(1) {
            let range = part.split(']').next().unwrap();
            assert!(
                range == "$__rate_interval" || range == "$__range",
                "{title}: range [{range}] in {expr}"
            );
        }
        if expr.contains("rate(") {
            assert!(expr.contains("[$__rate_interval]"), "{title}: {expr}");
        }
    }
    // The views the dashboard promises.
    for n in [
        "mmtrace_cgroup_faults_total",
        "mmtrace_cgroup_pages_evicted_total",
        "mmtrace_cgroup_refault_pages_total",
        "mmtrace_cgroup_memory_limit_bytes",
        "mmtrace_memory_pressure_stalled_seconds_total",
        "mmtrace_file_resident_bytes",
        "mmtrace_process_faults_total",
        "mmtrace_lost_faults_total",
    ] {
        assert!(used.contains(n), "no panel shows {n}");
    }
}

#[test]
fn identifiers_skip_label_values() {
    let ids = identifiers(
        r#"sum by (kind) (rate(mmtrace_x_total{kind="mmtrace_\"y"}[$__rate_interval]))"#,
    );
    assert!(ids.contains("mmtrace_x_total"));
    assert!(
        !ids.iter()
            .any(|i| i.contains('y') && i.starts_with("mmtrace_"))
    );
}
