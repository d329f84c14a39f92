//! Figures, statistics, machine information and the result file.

use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Result;
use serde::Serialize;

/// One measured figure.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    /// Short machine-readable name.
    pub name: String,
    /// The value.
    pub value: f64,
    /// Unit of the value.
    pub unit: &'static str,
    /// The target it is compared against, if any (informational).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// The figures of one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    /// Scenario name.
    pub scenario: &'static str,
    /// Measured figures, in print order.
    pub figures: Vec<Figure>,
    /// Parameters and context.
    pub params: serde_json::Map<String, serde_json::Value>,
}

impl ScenarioReport {
    /// An empty report.
    pub fn new(scenario: &'static str) -> Self {
        ScenarioReport {
            scenario,
            figures: Vec::new(),
            params: serde_json::Map::new(),
        }
    }

    /// Add a figure.
    pub fn fig(&mut self, name: impl Into<String>, value: f64, unit: &'static str) {
        self.figures.push(Figure {
            name: name.into(),
            value,
            unit,
            target: None,
        });
    }

    /// Add a figure with a target.
    pub fn fig_target(
        &mut self,
        name: impl Into<String>,
        value: f64,
        unit: &'static str,
        target: &str,
    ) {
        self.figures.push(Figure {
            name: name.into(),
            value,
            unit,
            target: Some(target.to_string()),
        });
    }

    /// Record a parameter.
    pub fn param(&mut self, name: &str, value: impl Into<serde_json::Value>) {
        self.params.insert(name.to_string(), value.into());
    }
}

/// Milliseconds of a duration.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Nearest-rank percentile `p` (0..=100) of `samples`.
pub fn percentile(samples: &[f64], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Median of `samples`.
pub fn median(samples: &[f64]) -> f64 {
    percentile(samples, 50.0)
}

/// Largest of `samples`.
pub fn max(samples: &[f64]) -> f64 {
    samples.iter().copied().fold(f64::NAN, f64::max)
}

/// Round to three significant decimals for display and storage.
pub fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// The machine the benchmark ran on.
#[derive(Debug, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub mem_total_kib: u64,
    pub kernel: String,
    pub git_version: String,
    pub knotd_version: String,
    pub date_utc: String,
}

impl Machine {
    /// Collect machine information.
    pub fn collect() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default();
        let mem_total_kib = std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
            .unwrap_or(0);
        let git_version = std::process::Command::new("git")
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        Machine {
            nproc: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            cpu_model,
            mem_total_kib,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
            git_version,
            knotd_version: env!("CARGO_PKG_VERSION").to_string(),
            date_utc: utc_timestamp(SystemTime::now(), true),
        }
    }
}

/// A UTC timestamp, `2026-11-25T10:15:00Z` (`pretty`) or `20261125T101500Z`.
pub fn utc_timestamp(t: SystemTime, pretty: bool) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    if pretty {
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}Z")
    } else {
        format!("{y:04}{mo:02}{d:02}T{h:02}{m:02}{s:02}Z")
    }
}

/// Everything one run produced.
#[derive(Debug, Serialize)]
pub struct RunReport {
    pub machine: Machine,
    pub scenario_set: String,
    pub size: String,
    pub seed: u64,
    pub smoke: bool,
    pub iterations: usize,
    pub total_secs: f64,
    pub scenarios: serde_json::Map<String, serde_json::Value>,
}

/// Write the run report as `<out>/<timestamp>-<set>.json`.
pub fn write_json(out: &Path, report: &RunReport) -> Result<PathBuf> {
    std::fs::create_dir_all(out)?;
    let name = format!(
        "{}-{}.json",
        utc_timestamp(SystemTime::now(), false),
        report.scenario_set
    );
    let path = out.join(name);
    std::fs::write(&path, serde_json::to_string_pretty(report)? + "\n")?;
    Ok(path)
}

/// Format a value for the table.
fn display(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".into();
    }
    if v.abs() >= 1000.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// Print one scenario's figures as table rows.
pub fn print_rows(report: &ScenarioReport) {
    for f in &report.figures {
        println!(
            "| {:<11} | {:<28} | {:>12} | {:<7} | {:<14} |",
            report.scenario,
            f.name,
            display(f.value),
            f.unit,
            f.target.as_deref().unwrap_or("")
        );
    }
}

/// Print the table header.
pub fn print_header() {
    println!(
        "| {:<11} | {:<28} | {:>12} | {:<7} | {:<14} |",
        "scenario", "figure", "value", "unit", "target"
    );
    println!(
        "|{}|{}|{}|{}|{}|",
        "-".repeat(13),
        "-".repeat(30),
        "-".repeat(14),
        "-".repeat(9),
        "-".repeat(16)
    );
}
