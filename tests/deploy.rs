//! What `deploy/` ships: the systemd unit, its sysusers file, the example
//! config and the container image agree with each other and are accepted
//! by the tools that install them.
//!
//! The systemd checks need `systemd-analyze` and `systemd-sysusers` (Debian
//! package `systemd`, which `.ci/run` installs); without them they fail
//! unless `KNOTD_SKIP_SYSTEMD=1` says to skip. The image is built when a
//! container tool with a running engine is present, and skipped with the
//! reason printed otherwise.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use knotd::config::Config;

fn deploy(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(name)
}

fn read(name: &str) -> String {
    std::fs::read_to_string(deploy(name)).unwrap()
}

/// The value of `key=` in the unit, one line.
fn unit_value(unit: &str, key: &str) -> Option<String> {
    unit.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::to_string)
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn systemd_or_skip(tool: &str) -> bool {
    if have(tool) {
        return true;
    }
    if std::env::var("KNOTD_SKIP_SYSTEMD").as_deref() == Ok("1") {
        eprintln!("KNOTD_SKIP_SYSTEMD=1: skipping a check that needs {tool}");
        return false;
    }
    panic!(
        "{tool} is missing: install Debian's systemd package, or set KNOTD_SKIP_SYSTEMD=1 to skip"
    );
}

#[test]
fn unit_and_example_config_put_the_socket_where_the_group_can_reach_it() {
    let unit = read("knotd.service");
    let config =
        Config::from_toml(&read("knotd.example.toml"), Path::new("knotd.example.toml")).unwrap();
    assert!(
        unit_value(&unit, "DynamicUser").is_none(),
        "a dynamic user's group cannot have members"
    );
    let group = unit_value(&unit, "Group").expect("Group=");
    assert_eq!(unit_value(&unit, "User").as_deref(), Some("knotd"));
    assert_eq!(config.admin_socket_group.as_deref(), Some(group.as_str()));
    let runtime = unit_value(&unit, "RuntimeDirectory").expect("RuntimeDirectory=");
    let socket = config.admin_socket.clone().expect("admin_socket set");
    assert_eq!(
        socket.parent(),
        Some(Path::new("/run").join(&runtime).as_path())
    );
    assert_eq!(socket, Path::new(knotd::admin::SYSTEM_SOCKET));
    assert_eq!(
        unit_value(&unit, "RuntimeDirectoryMode").as_deref(),
        Some("0750")
    );
    let data_dir = unit_value(&unit, "StateDirectory").expect("StateDirectory=");
    assert_eq!(config.data_dir, Path::new("/var/lib").join(data_dir));
    assert_eq!(
        unit_value(&unit, "StateDirectoryMode").as_deref(),
        Some("0700")
    );
    assert_eq!(unit_value(&unit, "ProtectHome").as_deref(), Some("yes"));
}

#[test]
fn sysusers_creates_the_service_user_and_its_group() {
    if !systemd_or_skip("systemd-sysusers") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("etc")).unwrap();
    let out = Command::new("systemd-sysusers")
        .arg(format!("--root={}", root.path().display()))
        .arg(deploy("knotd.sysusers"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let passwd = std::fs::read_to_string(root.path().join("etc/passwd")).unwrap();
    let group = std::fs::read_to_string(root.path().join("etc/group")).unwrap();
    let user: Vec<&str> = passwd
        .lines()
        .find(|l| l.starts_with("knotd:"))
        .expect("user knotd")
        .split(':')
        .collect();
    let knotd_group: Vec<&str> = group
        .lines()
        .find(|l| l.starts_with("knotd:"))
        .expect("group knotd")
        .split(':')
        .collect();
    assert_eq!(user[3], knotd_group[2], "knotd's primary group is knotd");
    assert_eq!(user[5], "/var/lib/knotd");
}

#[test]
fn systemd_accepts_the_unit() {
    if !systemd_or_skip("systemd-analyze") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let unit = read("knotd.service").replace("/usr/local/bin/knotd", env!("CARGO_BIN_EXE_knotd"));
    let path = dir.path().join("knotd.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stderr.contains("knotd.service:"),
        "systemd warns about the unit: {stderr}"
    );
}

/// A container tool whose engine answers, or why there is none.
fn container_tool() -> Result<&'static str, String> {
    let mut reasons = Vec::new();
    for tool in ["podman", "docker"] {
        match Command::new(tool).arg("info").output() {
            Ok(out) if out.status.success() => return Ok(tool),
            Ok(out) => reasons.push(format!(
                "{tool} info failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(e) => reasons.push(format!("{tool}: {e}")),
        }
    }
    Err(reasons.join("; "))
}

#[test]
fn the_container_image_builds_and_runs() {
    let tool = match container_tool() {
        Ok(tool) => tool,
        Err(why) => {
            eprintln!("skipping the container image build: no container engine ({why})");
            return;
        }
    };
    // The base images come from a registry this machine may not reach.
    for image in [
        "docker.io/library/rust:1-bookworm",
        "docker.io/library/debian:bookworm-slim",
    ] {
        let pulled = Command::new(tool)
            .args(["pull", "-q", image])
            .output()
            .unwrap();
        if !pulled.status.success() {
            eprintln!(
                "skipping the container image build: {tool} cannot pull {image}: {}",
                String::from_utf8_lossy(&pulled.stderr).trim()
            );
            return;
        }
    }
    let tag = format!("knotd-test:{}", std::process::id());
    let out = Command::new(tool)
        .args(["build", "-f", "deploy/Containerfile", "-t", &tag, "."])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{tool} build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(tool)
        .args(["run", "--rm", &tag, "--version"])
        .output()
        .unwrap();
    let _ = Command::new(tool).args(["rmi", "-f", &tag]).output();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}
