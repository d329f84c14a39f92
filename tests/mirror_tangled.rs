//! Mirroring Tangled repositories: `sh.tangled.repo` records of two
//! accounts on the reference PDS, a stand-in knot serving them with the
//! real `git http-backend` and publishing push events on `/events`, a
//! knotd that mirrors both and a second knotd that replicates them from
//! the mirror alone.

mod common;
#[path = "common/knot.rs"]
mod knot;
#[path = "common/pds.rs"]
mod pds;

use std::time::{Duration, Instant};

use common::{TestNode, add_commit, eventually, fingerprint, git, make_repo, rid};
use knot::StandInKnot;
use knotd::config::Config;
use serde_json::json;

/// Seconds between two polls of the mirror: longer than a push event may
/// take to be acted on, short enough to test polling when events are off.
const POLL_SECS: u64 = 6;

/// A working repository pushed to the stand-in knot as `<did>/<name>`.
fn upstream(
    knot: &StandInKnot,
    tmp: &std::path::Path,
    did: &str,
    name: &str,
) -> std::path::PathBuf {
    let work = tmp.join(format!("work-{name}"));
    make_repo(&work);
    let bare = knot.repo_dir(did, name);
    std::fs::create_dir_all(bare.parent().unwrap()).unwrap();
    git(
        tmp,
        &["init", "-q", "--bare", "-b", "main", bare.to_str().unwrap()],
    );
    git(&work, &["push", "-q", "--mirror", bare.to_str().unwrap()]);
    work
}

/// `git clone knot://<repo>` through the node listening on `socket`, with
/// the built remote helper.
fn clone_knot(socket: &std::path::Path, repo: &str, dest: &std::path::Path) {
    let helper = std::path::PathBuf::from(env!("CARGO_BIN_EXE_git-remote-knot"));
    let mut paths = vec![helper.parent().unwrap().to_path_buf()];
    paths.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    let out = std::process::Command::new("git")
        .args(["clone", "-q", &format!("knot://{repo}")])
        .arg(dest)
        .env("PATH", std::env::join_paths(paths).unwrap())
        .env("KNOT_SOCKET", socket)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env_remove("KNOTD_CONFIG")
        .env_remove("KNOTD_DATA_DIR")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git clone knot://{repo}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn push(work: &std::path::Path, knot: &StandInKnot, did: &str, name: &str) -> String {
    add_commit(work, &format!("c{}", rand::random::<u32>()));
    let bare = knot.repo_dir(did, name);
    git(work, &["push", "-q", "--mirror", bare.to_str().unwrap()]);
    git(work, &["rev-parse", "HEAD"]).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn tangled_repositories_are_mirrored_from_their_records_and_follow_pushes() {
    let Some(pds) = pds::TestPds::start() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let knot = StandInKnot::start(&tmp.path().join("knot")).await;
    let (alice, alice_pw) = pds.create_account("alice").await;
    let (bob, bob_pw) = pds.create_account("bob").await;
    let alice_work = upstream(&knot, tmp.path(), &alice, "website");
    let bob_work = upstream(&knot, tmp.path(), &bob, "tools");
    let record = |name: &str| {
        json!({
            "$type": "sh.tangled.repo",
            "name": name,
            "knot": knot.host,
            "createdAt": "2026-12-06T00:00:00.000Z",
        })
    };
    pds.put_record(
        &alice,
        &alice_pw,
        "sh.tangled.repo",
        "3kwebsite",
        record("website"),
    )
    .await;
    pds.put_record(&bob, &bob_pw, "sh.tangled.repo", "3ktools", record("tools"))
        .await;

    let data = tempfile::tempdir().unwrap();
    let mut config = Config::local(data.path());
    config.atproto.plc_directory = pds.plc.clone();
    config.atproto.handle_resolver = pds.pds.clone();
    config.atproto.allow_insecure_http = true;
    config.mirror.poll_interval_secs = POLL_SECS;
    config.mirror.poll_jitter = 0.0;
    config.mirror.retry_secs = 1;
    let mirror = TestNode::spawn_with(config.clone()).await;
    let client = mirror.client();

    // One by the record's AT URI, one by `<handle>/<name>`.
    let website = format!("{alice}/website");
    let tools = format!("{bob}/tools");
    let added = client
        .mirror(&format!("at://{alice}/sh.tangled.repo/3kwebsite"), None)
        .await
        .unwrap();
    assert_eq!(added.repo_id, website);
    assert_eq!(
        added.source,
        format!("http://{}/{alice}/website", knot.host)
    );
    let added = client.mirror("bob.test/tools", None).await.unwrap();
    assert_eq!(added.repo_id, tools);
    let missing = client.mirror("bob.test/nothing", None).await.unwrap_err();
    assert!(
        missing.to_string().contains("no sh.tangled.repo record"),
        "{missing}"
    );

    for (repo, did, name) in [(&website, &alice, "website"), (&tools, &bob, "tools")] {
        let view = client.mirror_sync(&rid(repo)).await.unwrap();
        assert!(view.error.is_none(), "{view:?}");
        assert_eq!(
            fingerprint(&mirror.repo_path(repo)),
            fingerprint(&knot.repo_dir(did, name)),
        );
    }

    // A second knot, told only the mirror's ticket, replicates both.
    let data2 = tempfile::tempdir().unwrap();
    let mut config2 = Config::local(data2.path());
    config2.http.enabled = true;
    config2.http.bind = "127.0.0.1:0".parse().unwrap();
    let follower = TestNode::spawn_with(config2).await;
    let ticket = mirror.ticket().await;
    for repo in [&website, &tools] {
        follower.follow(repo, vec![ticket.clone()]).await;
        let manifest = mirror.mirror_row(repo).await.manifest.unwrap();
        eventually(30, "the follower to replicate the mirror", || async {
            follower.materialized(repo).await.as_deref() == Some(&*manifest)
        })
        .await;
    }

    // A push announced on the knot's event stream reaches both knots well
    // within the poll interval: just after a fetch, the next poll is
    // POLL_SECS away.
    client.mirror_sync(&rid(&website)).await.unwrap();
    let head = push(&alice_work, &knot, &alice, "website");
    let pushed_at = Instant::now();
    knot.push_event(&alice, "website", &head);
    let before = mirror.mirror_row(&website).await.manifest;
    eventually(POLL_SECS, "the push event to be acted on", || async {
        mirror.mirror_row(&website).await.manifest != before
    })
    .await;
    let took = pushed_at.elapsed();
    assert!(
        took < Duration::from_secs(POLL_SECS / 2),
        "a push event makes the mirror fetch at once, not at its next poll ({took:?})"
    );
    let manifest = mirror.mirror_row(&website).await.manifest.unwrap();
    eventually(30, "the follower to take the pushed state", || async {
        follower.materialized(&website).await.as_deref() == Some(&*manifest)
    })
    .await;

    // With the event stream down, a push still arrives by polling.
    knot.set_events(false);
    let head = push(&bob_work, &knot, &bob, "tools");
    eventually(POLL_SECS * 3, "polling to bring the push", || async {
        follower
            .summary(&tools)
            .await
            .and_then(|s| s.head)
            .as_deref()
            == Some(&*head)
    })
    .await;

    // The stream comes back; after a restart the mirror resumes it from
    // the last event it saw, not from now and not from the beginning.
    knot.set_events(true);
    let last = knot.last_created().unwrap();
    let mirror = mirror.restart_with(config).await;
    eventually(30, "the mirror to listen again", || async {
        knot.cursors().len() >= 2
    })
    .await;
    assert_eq!(*knot.cursors().last().unwrap(), last);

    // The knot goes away: both knots still serve both repositories, to
    // `git clone knot://` and (the follower) over smart HTTP.
    drop(knot);
    let http = follower.node.http_addr().unwrap();
    for (repo, work) in [(&website, &alice_work), (&tools, &bob_work)] {
        let view = mirror.client().mirror_sync(&rid(repo)).await.unwrap();
        assert_eq!(view.error.unwrap().class, "unreachable");
        let clone = tmp.path().join(format!("clone-{}", rid(repo).name()));
        git(
            tmp.path(),
            &[
                "clone",
                "-q",
                &format!("http://{http}/{repo}"),
                clone.to_str().unwrap(),
            ],
        );
        assert_eq!(
            git(&clone, &["rev-parse", "HEAD"]),
            git(work, &["rev-parse", "HEAD"])
        );
        for node in [&mirror, &follower] {
            let clone = tmp.path().join(format!(
                "knot-clone-{}-{}",
                rid(repo).name(),
                node.node.id().fmt_short()
            ));
            clone_knot(node.node.admin_socket(), repo, &clone);
            assert_eq!(
                git(&clone, &["rev-parse", "HEAD"]),
                git(work, &["rev-parse", "HEAD"])
            );
        }
    }

    // The owner moves the website to another knot, pushes there and says
    // so in the record: the mirror, failing against the old knot, reads
    // the record again, follows it, and the push reaches both knots.
    let moved = StandInKnot::start(&tmp.path().join("moved")).await;
    let bare = moved.repo_dir(&alice, "website");
    std::fs::create_dir_all(bare.parent().unwrap()).unwrap();
    git(
        tmp.path(),
        &["init", "-q", "--bare", "-b", "main", bare.to_str().unwrap()],
    );
    let head = push(&alice_work, &moved, &alice, "website");
    let record = json!({
        "$type": "sh.tangled.repo",
        "name": "website",
        "knot": moved.host,
        "createdAt": "2026-12-06T00:00:00.000Z",
    });
    pds.put_record(&alice, &alice_pw, "sh.tangled.repo", "3kwebsite", record)
        .await;
    eventually(
        60,
        "the push on the new knot to reach the follower",
        || async {
            follower
                .summary(&website)
                .await
                .and_then(|s| s.head)
                .as_deref()
                == Some(&*head)
        },
    )
    .await;
    let view = mirror.mirror_row(&website).await;
    assert_eq!(
        view.source,
        format!("http://{}/{alice}/website", moved.host)
    );
    assert!(view.error.is_none(), "{view:?}");
    let tools_view = mirror.mirror_row(&tools).await;
    assert!(
        tools_view.source.contains(&format!("/{bob}/tools"))
            && !tools_view.source.contains(&moved.host),
        "a record that did not change keeps its source: {tools_view:?}"
    );
}
