//! The node's web pages (`[http] pages`): served beside smart HTTP by a real
//! node, escaped against hostile ref names, off when configured off, and
//! driven by a real headless Chromium (Debian's package, through
//! playwright-core from tests/web): the list, its search box, a repository
//! page and the live event view. Screenshots land in `target/web-pages/`.
//!
//! Missing Chromium or playwright-core fails the browser test unless
//! `KNOTD_SKIP_BROWSER=1`.

mod common;
#[path = "common/pds.rs"]
mod pds;

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use common::{TestNode, add_commit, git, make_repo, missing_precondition};
use knotd::config::Config;

const REPOS: [&str; 3] = [
    "did:plc:webauthor1/website",
    "did:plc:webauthor1/compiler",
    "did:plc:webauthor2/notes",
];
/// A branch name git accepts and a page must show as text, never as markup.
const HOSTILE_BRANCH: &str = "x<svg/onload=alert(1)>";

/// A node with smart HTTP (and, unless `pages` is false, the pages) on
/// loopback, holding the three repositories; the first has a hostile branch.
async fn node_with_repos(work: &Path, pages: bool) -> (TestNode, String) {
    let mut config = Config::local(work.join("node"));
    config.http.enabled = true;
    config.http.bind = "127.0.0.1:0".parse().unwrap();
    config.http.pages = pages;
    config.metrics.bind = Some("127.0.0.1:0".parse().unwrap());
    let node = TestNode::spawn_with(config).await;
    for (i, repo) in REPOS.iter().enumerate() {
        let src = work.join(format!("src{i}"));
        make_repo(&src);
        if i == 0 {
            git(&src, &["branch", HOSTILE_BRANCH]);
            git(&src, &["tag", "-a", "v1.0", "-m", "first"]);
        }
        node.publish(repo, &src).await;
    }
    let base = format!("http://{}", node.node.http_addr().expect("http is enabled"));
    (node, base)
}

async fn get(url: &str) -> (u16, reqwest::header::HeaderMap, String) {
    let response = reqwest::Client::new()
        .get(url)
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pages_list_repositories_and_escape_what_peers_control() {
    let work = tempfile::tempdir().unwrap();
    let (node, base) = node_with_repos(work.path(), true).await;

    let (status, headers, index) = get(&format!("{base}/")).await;
    assert_eq!(status, 200);
    assert!(
        headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("script-src 'self'")
    );
    for repo in REPOS {
        assert!(
            index.contains(&format!("git clone knot://{repo}")),
            "{index}"
        );
        assert!(
            index.contains(&format!("git clone {base}/{repo}")),
            "{index}"
        );
    }
    assert!(index.len() < 50 * 1024, "first page {} bytes", index.len());

    // Filtering on the server (what the search box asks for as you type).
    let (_, _, rows) = get(&format!("{base}/?rows=1&q=NOTES")).await;
    assert!(rows.contains("did:plc:webauthor2/notes"), "{rows}");
    assert!(!rows.contains("did:plc:webauthor1/website"), "{rows}");
    assert!(!rows.contains("<html"), "rows only: {rows}");

    // A repository page: branches and tags, the hostile branch as text.
    let (status, _, page) = get(&format!("{base}/{}", REPOS[0])).await;
    assert_eq!(status, 200);
    assert!(page.contains("x&lt;svg/onload=alert(1)&gt;"), "{page}");
    assert!(!page.contains("<svg"), "{page}");
    assert!(page.contains("v1.0"), "{page}");
    // The annotated tag is shown with its commit, not the tag object.
    let src0 = work.path().join("src0");
    let commit = git(&src0, &["rev-parse", "v1.0^{commit}"]);
    let tag = git(&src0, &["rev-parse", "v1.0"]);
    assert_ne!(commit.trim(), tag.trim());
    assert!(page.contains(&commit.trim()[..12]), "{page}");
    assert!(!page.contains(&tag.trim()[..12]), "{page}");
    assert!(page.contains("<td>main</td>"), "the main branch: {page}");
    // The same with `.git`, as a clone URL is often written.
    assert_eq!(get(&format!("{base}/{}.git", REPOS[0])).await.0, 200);

    // Git still gets git at the same addresses.
    let (status, _, _) = get(&format!(
        "{base}/{}/info/refs?service=git-upload-pack",
        REPOS[0]
    ))
    .await;
    assert_eq!(status, 200);

    // Unknown and malformed repositories: a page saying so, no traversal.
    assert_eq!(get(&format!("{base}/did:plc:nobody/nothing")).await.0, 404);
    assert_eq!(get(&format!("{base}/..%2f..%2fetc/passwd")).await.0, 404);

    let (status, _, status_page) = get(&format!("{base}/status")).await;
    assert_eq!(status, 200);
    assert!(
        status_page.contains(&node.node.endpoint().id().to_string()),
        "{status_page}"
    );
    assert!(status_page.contains("3: 3 in sync"), "{status_page}");
    assert!(
        status_page.contains("published"),
        "recent events: {status_page}"
    );
    // The same series the Prometheus endpoint exports.
    assert!(
        status_page.contains("# TYPE knotd_publishes counter"),
        "{status_page}"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_off_leaves_git_over_http_on() {
    let work = tempfile::tempdir().unwrap();
    let (node, base) = node_with_repos(work.path(), false).await;
    assert_eq!(get(&format!("{base}/")).await.0, 404);
    assert_eq!(get(&format!("{base}/status")).await.0, 404);
    assert_eq!(get(&format!("{base}/{}", REPOS[0])).await.0, 404);
    let url = format!("{base}/{}", REPOS[0]);
    let clone = work.path().join("clone");
    let clone_str = clone.to_str().unwrap().to_string();
    let dir = work.path().to_path_buf();
    tokio::task::spawn_blocking(move || git(&dir, &["clone", "-q", &url, &clone_str]))
        .await
        .unwrap();
    assert!(clone.join(".git").exists());
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owners_handle_is_shown_once_verified_through_the_real_pds() {
    let Some(pds) = tokio::task::spawn_blocking(pds::TestPds::start)
        .await
        .unwrap()
    else {
        return;
    };
    let (did, _) = pds.create_account("webowner").await;
    let work = tempfile::tempdir().unwrap();
    let mut config = Config::local(work.path().join("node"));
    config.http.enabled = true;
    config.http.bind = "127.0.0.1:0".parse().unwrap();
    config.atproto.plc_directory = pds.plc.clone();
    config.atproto.handle_resolver = pds.pds.clone();
    config.atproto.allow_insecure_http = true;
    let node = TestNode::spawn_with(config).await;
    let src = work.path().join("src");
    make_repo(&src);
    let repo = format!("{did}/site");
    node.publish(&repo, &src).await;
    let base = format!("http://{}", node.node.http_addr().unwrap());
    // The first page shows the DID and asks for the handle in the
    // background; a later page shows it.
    common::eventually(30, "the owner's handle on the list", || async {
        get(&format!("{base}/"))
            .await
            .2
            .contains(&format!("@webowner.test ({did})"))
    })
    .await;
    let (_, _, page) = get(&format!("{base}/{repo}")).await;
    assert!(page.contains("by @webowner.test"), "{page}");
    node.stop().await;
}

/// Where the browser test's screenshots are kept.
fn screenshots_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/web-pages");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Facts the browser script reported, by step.
fn fact<'a>(facts: &'a [serde_json::Value], step: &str) -> &'a serde_json::Value {
    facts
        .iter()
        .find(|f| f["step"] == step)
        .unwrap_or_else(|| panic!("the browser never reached {step}: {facts:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_browser_sees_the_list_searches_and_watches_a_publish_live() {
    let chromium = std::env::var("KNOTD_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/web");
    if !Path::new(&chromium).exists() {
        return missing_precondition(
            &format!(
                "Chromium not found at {chromium} (apt-get install chromium, or set KNOTD_CHROMIUM)"
            ),
            "KNOTD_SKIP_BROWSER",
        );
    }
    if !web.join("node_modules/playwright-core").exists() {
        return missing_precondition(
            "playwright-core is not installed (run tests/web/install.sh)",
            "KNOTD_SKIP_BROWSER",
        );
    }
    let work = tempfile::tempdir().unwrap();
    let (node, base) = node_with_repos(work.path(), true).await;
    // A second knot replicates the first repository: its page lists a peer
    // and the path to it.
    let follower = TestNode::spawn().await;
    follower.follow(REPOS[0], vec![node.ticket().await]).await;
    common::eventually(
        60,
        "the follower to hold the repository and be known",
        || async {
            follower.materialized(REPOS[0]).await.is_some()
                && node
                    .summary(REPOS[0])
                    .await
                    .is_some_and(|s| s.peers_connected > 0)
        },
    )
    .await;
    let follower_id = follower.node.endpoint().id().to_string();
    let out = screenshots_dir();
    let mut browser = Command::new("node")
        .arg(web.join("browse.mjs"))
        .args([base.as_str(), REPOS[0], "compil", out.to_str().unwrap()])
        .env("KNOTD_CHROMIUM", &chromium)
        .stdout(Stdio::piped())
        .spawn()
        .expect("node runs");
    let stdout = BufReader::new(browser.stdout.take().unwrap());
    let (lines_tx, mut lines_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let mut facts = Vec::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(180);
    while let Ok(Some(line)) = tokio::time::timeout_at(deadline, lines_rx.recv()).await {
        let fact: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("browser script printed {line:?}: {e}"));
        if fact["step"] == "live-ready" {
            // Publish while the live view is open.
            let src = work.path().join("src0");
            add_commit(&src, "live.txt");
            node.publish(REPOS[0], &src).await;
        }
        facts.push(fact);
    }
    let status = browser.wait().unwrap();
    assert!(status.success(), "browser script failed: {facts:?}");

    let index = fact(&facts, "index");
    for repo in REPOS {
        assert!(index["text"].as_str().unwrap().contains(repo), "{index}");
    }
    assert_eq!(index["rows"], 3);
    assert_eq!(
        index["copy_buttons"], 6,
        "two clone commands a row: {index}"
    );
    assert!(index["bytes"].as_u64().unwrap() < 50 * 1024, "{index}");

    let phone = fact(&facts, "phone");
    assert!(
        phone["scroll_width"].as_u64().unwrap() <= 390,
        "the list is wider than a phone's screen: {phone}"
    );

    let search = fact(&facts, "search");
    assert_eq!(search["ids"], serde_json::json!([REPOS[1]]), "{search}");

    let repo = fact(&facts, "repo");
    assert!(
        repo["text"].as_str().unwrap().contains(HOSTILE_BRANCH),
        "{repo}"
    );
    assert_eq!(repo["injected"], 0, "markup from a ref name ran: {repo}");
    let repo_text = repo["text"].as_str().unwrap();
    assert!(
        repo_text.contains(&follower_id[..16]),
        "the follower as a peer: {repo}"
    );
    assert!(repo_text.contains("direct"), "the path to it: {repo}");

    let live = fact(&facts, "live");
    let lines = live["lines"]
        .as_array()
        .unwrap_or_else(|| panic!("no live line: {live}"));
    assert!(
        lines.iter().any(|l| {
            let l = l.as_str().unwrap();
            l.contains(REPOS[0]) && l.contains("published")
        }),
        "{live}"
    );
    assert_eq!(fact(&facts, "done")["script_errors"], serde_json::json!([]));
    for shot in ["index.png", "index-phone.png", "repo.png", "status.png"] {
        let size = std::fs::metadata(out.join(shot)).unwrap().len();
        assert!(size > 1000, "{shot}: {size} bytes");
    }
    follower.stop().await;
    node.stop().await;
}
