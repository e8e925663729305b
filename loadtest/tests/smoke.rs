//! The load test's own smoke run (a few seconds, debug build), so it cannot
//! rot: tokenbridge in-process against moto, and the null service.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::process::Command;

#[test]
fn smoke_run_reports_both_targets_with_one_sts_call_per_identity() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_tokenbridge-loadtest"))
        .args([
            "run",
            "--duration",
            "1s",
            "--identities",
            "20",
            "--connections",
            "2",
            "--concurrency",
            "8",
            "--report-every",
            "400ms",
            "--json",
        ])
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("throughput tokenbridge / null"), "{stdout}");

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let results = report["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    for r in results {
        assert!(r["requests"].as_u64().unwrap() > 0, "{r}");
        assert_eq!(r["errors"], serde_json::json!({}), "{r}");
        assert!(r["latency_us"]["p50"].as_u64().unwrap() > 0, "{r}");
        // --report-every: intervals with the machine's CPU figures.
        let intervals = r["intervals"].as_array().unwrap();
        assert!(!intervals.is_empty(), "{r}");
        // Every answer is in an interval, the last (shorter) one included.
        let in_intervals: u64 = intervals
            .iter()
            .map(|i| i["requests"].as_u64().unwrap())
            .sum();
        assert_eq!(in_intervals, r["requests"].as_u64().unwrap(), "{r}");
        for i in intervals {
            let busy = i["machine_busy_percent"].as_f64().unwrap();
            let steal = i["steal_percent"].as_f64().unwrap();
            assert!((0.0..=100.0).contains(&busy), "{i}");
            assert!((0.0..=100.0).contains(&steal), "{i}");
            if r["target"] == "null" {
                // A child process: its own CPU time, a fraction of the
                // machine's cores.
                let cores = i["server_cores"].as_f64().unwrap();
                assert!(cores >= 0.0, "{i}");
            }
        }
    }
    let tb = results
        .iter()
        .find(|r| r["target"] == "tokenbridge")
        .unwrap();
    assert_eq!(tb["sts_calls"], 20, "one STS call per identity: {tb}");
    // In process the audit log goes to /dev/null, a character device: every
    // write on the blocking thread, none inline.
    let writes = &tb["audit_writes"];
    assert!(writes["blocking"].as_u64().unwrap() > 0, "{tb}");
    assert!(writes.get("inline").is_none(), "{tb}");
    assert!(report["throughput_ratio"].as_f64().unwrap() > 0.0);
}

/// `--fresh-tokens`: a pool of distinct tokens per identity and the
/// verified-token cache off; every request answered, STS still called once
/// per identity (the credentials cache is keyed by identity, not token).
#[test]
fn fresh_tokens_run_answers_every_request() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_tokenbridge-loadtest"))
        .args([
            "run",
            "--target",
            "tokenbridge",
            "--fresh-tokens",
            "--duration",
            "500ms",
            "--identities",
            "5",
            "--connections",
            "1",
            "--concurrency",
            "4",
            "--json",
        ])
        .arg(&json)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("minting 40 tokens"), "{stderr}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["args"]["fresh_tokens"], true);
    let tb = &report["results"][0];
    assert_eq!(tb["target"], "tokenbridge");
    assert!(tb["requests"].as_u64().unwrap() > 0, "{tb}");
    assert_eq!(tb["errors"], serde_json::json!({}), "{tb}");
    assert_eq!(tb["sts_calls"], 5, "{tb}");
}
