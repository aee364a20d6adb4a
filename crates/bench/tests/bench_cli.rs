//! `domsync-bench`: every scenario, briefly, against the embedded cluster through the built
//! binary; the one JSON object it prints is parsed and checked for real outcomes.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

fn run_bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_domsync-bench"))
        .args(args)
        .env_remove("DOMSYNC_SOCKET")
        .env_remove("DOMSYNC_REMOTE")
        .env_remove("DOMSYNC_NODE")
        .env("RUST_LOG", "error")
        .output()
        .expect("run domsync-bench")
}

/// Runs `domsync-bench <args> --json`, checks it succeeded and printed exactly one JSON
/// object, and returns it.
fn bench(args: &[&str]) -> Value {
    let mut all = vec![];
    all.extend_from_slice(args);
    all.push("--json");
    let out = run_bench(&all);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench {args:?} failed: {}\nstdout: {stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "exactly one JSON line: {stdout}");
    serde_json::from_str(lines[0]).expect("valid JSON")
}

fn num(v: &Value, path: &[&str]) -> f64 {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_f64()
        .unwrap_or_else(|| panic!("{path:?} is not a number in {v}"))
}

/// The fields every report has, and real outcomes: operations done, no error, positive
/// ordered latencies, a CPU figure.
fn check_common(v: &Value, scenario: &str) {
    assert_eq!(v["scenario"], scenario, "{v}");
    assert_eq!(v["target"], "embedded", "{v}");
    assert!(v["params"].is_object(), "{v}");
    assert!(num(v, &["ops"]) > 0.0, "no ops: {v}");
    assert_eq!(num(v, &["errors"]), 0.0, "errors: {v}");
    assert!(num(v, &["seconds"]) > 0.0, "{v}");
    assert!(num(v, &["ops_per_sec"]) > 0.0, "{v}");
    assert!(num(v, &["bytes_per_sec"]) >= 0.0, "{v}");
    let (p50, p90, p99, max, mean) = (
        num(v, &["latency_ms", "p50"]),
        num(v, &["latency_ms", "p90"]),
        num(v, &["latency_ms", "p99"]),
        num(v, &["latency_ms", "max"]),
        num(v, &["latency_ms", "mean"]),
    );
    assert!(p50 > 0.0, "p50 not positive: {v}");
    assert!(
        p50 <= p90 && p90 <= p99 && p99 <= max,
        "latencies out of order: {v}"
    );
    assert!(mean > 0.0 && mean <= max, "{v}");
    assert!(num(v, &["generator_cpu_percent"]) > 0.0, "{v}");
    assert!(v["notes"].is_array(), "{v}");
}

#[test]
fn write_with_standby_durability() {
    let v = bench(&[
        "write",
        "--duration",
        "1",
        "--concurrency",
        "4",
        "--durability",
        "standby",
        "--value-size",
        "200",
    ]);
    check_common(&v, "write");
    assert_eq!(v["params"]["durability"], "standby");
    assert_eq!(num(&v, &["params", "value_size"]), 200.0);
    assert!((num(&v, &["bytes_per_sec"]) - 200.0 * num(&v, &["ops_per_sec"])).abs() < 1.0);
}

#[test]
fn write_counted_ops_on_one_node_as_a_table() {
    let out = run_bench(&["write", "--ops", "25", "--nodes", "1"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ops          25"), "{stdout}");
    assert!(stdout.contains("errors       0"), "{stdout}");
    assert!(stdout.contains("generator CPU"), "{stdout}");
}

#[test]
fn read_from_a_standby() {
    let v = bench(&[
        "read",
        "--duration",
        "1",
        "--concurrency",
        "4",
        "--value-size",
        "4KiB",
    ]);
    check_common(&v, "read");
    assert_eq!(v["params"]["role"], "standby");
    // Every fetch moved the whole package.
    let per_op = num(&v, &["bytes_per_sec"]) / num(&v, &["ops_per_sec"]);
    assert!((per_op - 4096.0).abs() < 1.0, "{v}");
}

#[test]
fn lag_at_a_fixed_rate() {
    let v = bench(&["lag", "--duration", "1", "--rate", "200"]);
    check_common(&v, "lag");
    assert!(num(&v, &["ops"]) >= 150.0, "{v}");
}

#[test]
fn watch_pushes() {
    let v = bench(&["watch", "--ops", "20"]);
    check_common(&v, "watch");
    assert_eq!(num(&v, &["ops"]), 20.0);
}

#[test]
fn resync_of_a_fresh_standby() {
    let v = bench(&["resync", "--size", "3MiB"]);
    check_common(&v, "resync");
    assert!(num(&v, &["bytes"]) >= 3.0 * 1024.0 * 1024.0, "{v}");
    assert!(num(&v, &["file_bytes"]) >= num(&v, &["bytes"]), "{v}");
}

#[test]
fn failover_and_switchover() {
    let v = bench(&["failover", "--runs", "1"]);
    check_common(&v, "failover");
    assert_eq!(num(&v, &["ops"]), 1.0);
    let v = bench(&["switchover", "--runs", "2", "--concurrency", "4"]);
    check_common(&v, "switchover");
    assert_eq!(num(&v, &["ops"]), 2.0);
    assert!(num(&v, &["params", "writes"]) > 0.0, "{v}");
}

#[test]
fn unreachable_target_fails_fast_with_one_line() {
    let started = Instant::now();
    let out = run_bench(&[
        "write",
        "--socket",
        "/nonexistent/domsync-bench.sock",
        "--json",
    ]);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("cannot reach domsyncd"), "{err}");
    // Embedded-only scenarios say so against a running cluster.
    let out = run_bench(&["failover", "--socket", "/nonexistent.sock"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("embedded cluster only"));
}
