//! `knotd-bench --smoke`: every scenario runs once at minimum size, writes a
//! JSON result with numeric figures and prints a table.

use std::process::Command;

const SCENARIOS: &[&str] = &["full", "incremental", "gossip", "scale", "admin", "real"];

#[test]
fn smoke_run_writes_every_scenario() {
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_knotd-bench"))
        .args(["--smoke", "--out"])
        .arg(out.path())
        .env_remove("RUST_LOG")
        .output()
        .expect("knotd-bench runs");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "knotd-bench --smoke failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        run.status
    );

    // A table with a header and one row per figure of every scenario.
    assert!(stdout.contains("| scenario"), "no table header:\n{stdout}");
    for scenario in SCENARIOS {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(&format!("| {scenario} "))),
            "no table row for {scenario}:\n{stdout}"
        );
    }

    let files: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "one result file: {files:?}");
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.ends_with("-smoke.json"), "{name}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&files[0]).unwrap()).unwrap();

    let machine = &json["machine"];
    assert!(machine["nproc"].as_u64().unwrap() >= 1);
    for key in ["kernel", "git_version", "knotd_version", "date_utc"] {
        assert!(
            machine[key].as_str().is_some_and(|s| !s.is_empty()),
            "machine.{key} missing: {machine}"
        );
    }

    for scenario in SCENARIOS {
        let s = &json["scenarios"][scenario];
        assert!(s["error"].is_null(), "{scenario} failed: {}", s["error"]);
        let figures = s["figures"]
            .as_array()
            .unwrap_or_else(|| panic!("{scenario} has no figures: {s}"));
        assert!(!figures.is_empty(), "{scenario} has no figures");
        for f in figures {
            let value = f["value"]
                .as_f64()
                .unwrap_or_else(|| panic!("{scenario}: figure {f} is not numeric"));
            assert!(value.is_finite(), "{scenario}: {f}");
        }
    }
    let figure = |scenario: &str, name: &str| -> f64 {
        json["scenarios"][scenario]["figures"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == name)
            .unwrap_or_else(|| panic!("{scenario}.{name} missing"))["value"]
            .as_f64()
            .unwrap()
    };
    assert!(figure("full", "knotd_ms") > 0.0);
    assert!(figure("full", "git_daemon_ms") > 0.0);
    assert!(figure("incremental", "knotd_bytes") > 0.0);
    assert!(figure("incremental", "git_fetch_wire_bytes") > 0.0);
    assert_eq!(figure("gossip", "n3_missed"), 0.0);
    assert!(figure("scale", "r50_rss_mib") > 0.0);
    assert!(figure("scale", "c10_rss_mib") > 0.0);
    assert!(figure("scale", "c10_startup_ms") > 0.0);
    assert!(figure("admin", "status_p99_ms") > 0.0);
    assert_eq!(json["scenarios"]["full"]["params"]["deterministic"], true);
    // The real-shaped repository: many refs, replicated, pushed and cloned.
    assert!(figure("real", "refs") >= 100.0);
    assert!(figure("real", "full_knotd_ms") > 0.0);
    assert!(figure("real", "push_knotd_ms") > 0.0);
    assert!(figure("real", "publish_git_push_mirror_ms") > 0.0);
    assert!(figure("real", "publish_ratio") > 0.0);
    assert!(figure("real", "clone_helper_ms") > 0.0);
    assert!(figure("real", "clone_http_ms") > 0.0);
    assert!(figure("real", "follower_hwm_mib") > 0.0);
    assert_eq!(json["scenarios"]["real"]["params"]["deterministic"], true);
}
