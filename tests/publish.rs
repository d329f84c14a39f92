//! Publishing through a node: incremental packs, consolidation, forks,
//! corruption and bad input, with real git repositories.

mod common;

use common::{TestNode, add_commit, fingerprint, git, make_repo, rid};
use knotd::{
    admin::Command,
    config::Config,
    content::{self, ContentError},
    materialize::MaterializeError,
    record::parse_hash_hex,
};

const REPO: &str = "did:plc:author1/website";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_publishes_add_one_pack_each_and_consolidate() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_repo(&src);
    let data = tempfile::tempdir().unwrap();
    let mut config = Config::local(data.path());
    config.max_packs = 3;
    let node = TestNode::spawn_with(config).await;

    let first = node.publish(REPO, &src).await;
    assert_eq!(first.pack_count, 1);
    assert!(!first.unchanged);
    let again = node.publish(REPO, &src).await;
    assert!(again.unchanged, "publishing the same state changes nothing");
    assert_eq!(again.manifest, first.manifest);

    let mut sizes = Vec::new();
    for (i, name) in ["c3", "c4"].iter().enumerate() {
        add_commit(&src, name);
        let report = node.publish(REPO, &src).await;
        assert_eq!(
            report.pack_count,
            i + 2,
            "each update adds exactly one pack"
        );
        assert!(!report.consolidated);
        sizes.push(report.bytes_added);
        assert_eq!(
            fingerprint(&node.repo_path(REPO)),
            fingerprint(&src.join(".git"))
        );
    }
    // Each incremental pack carries a commit, a tree and a blob: a few hundred bytes,
    // not a copy of the 64 KiB binary.
    for s in &sizes {
        assert!(*s < 2048, "incremental pack of {s} bytes is too large");
    }
    println!(
        "incremental pack sizes: {sizes:?} (first pack {} bytes)",
        first.bytes_added
    );

    // A follower holds the three packs ...
    let follower = TestNode::spawn().await;
    follower.follow(REPO, vec![node.ticket().await]).await;
    let held = node.materialized(REPO).await;
    common::eventually(30, "the follower holds three packs", || async {
        follower.materialized(REPO).await == held
    })
    .await;
    assert_eq!(pack_files(&follower.repo_path(REPO)).len(), 3);

    // A fourth pack would exceed max_packs = 3: everything becomes one pack.
    add_commit(&src, "c5");
    let consolidated = node.publish(REPO, &src).await;
    assert!(consolidated.consolidated);
    assert_eq!(consolidated.pack_count, 1);
    let summary = node.summary(REPO).await.unwrap();
    assert_eq!(summary.pack_count, 1);
    assert_eq!(
        pack_files(&node.repo_path(REPO)).len(),
        1,
        "the packs the consolidated one replaced are gone from the repository"
    );
    // ... and, once it has the consolidated state, only that one pack.
    let held = node.materialized(REPO).await;
    common::eventually(30, "the follower takes the consolidated state", || async {
        follower.materialized(REPO).await == held
    })
    .await;
    assert_eq!(pack_files(&follower.repo_path(REPO)).len(), 1);
    assert_replica_of(&follower, &src);
    follower.stop().await;
    assert_eq!(
        fingerprint(&node.repo_path(REPO)),
        fingerprint(&src.join(".git"))
    );
    git(&node.repo_path(REPO), &["fsck", "--full", "--no-progress"]);

    // A fresh node materializes the consolidated state from scratch.
    let clone = work.path().join("clone");
    git(
        work.path(),
        &[
            "clone",
            "-q",
            node.repo_path(REPO).to_str().unwrap(),
            clone.to_str().unwrap(),
        ],
    );
    assert_eq!(
        git(&clone, &["ls-tree", "-r", "HEAD"]),
        git(&src, &["ls-tree", "-r", "HEAD"])
    );
    node.stop().await;
}

#[tokio::test]
async fn forks_share_blobs_and_unpin_independently() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_repo(&src);
    let node = TestNode::spawn().await;
    let original = node.publish(REPO, &src).await;
    let fork = node.publish("did:plc:forker/website", &src).await;
    assert_ne!(
        original.manifest, fork.manifest,
        "manifests name their repo"
    );
    let blobs = node.node.blobs();
    let m1 = content::load_manifest(
        blobs,
        parse_hash_hex(&original.manifest).unwrap(),
        &rid(REPO),
    )
    .await
    .unwrap();
    let m2 = content::load_manifest(
        blobs,
        parse_hash_hex(&fork.manifest).unwrap(),
        &rid("did:plc:forker/website"),
    )
    .await
    .unwrap();
    assert_eq!(m1.packs, m2.packs, "identical content is stored once");

    node.admin(Command::RemoveRepo { repo_id: rid(REPO) })
        .await
        .unwrap();
    assert!(!node.repo_path(REPO).exists());
    let pack = iroh_blobs::Hash::from_bytes(m2.packs[0].hash);
    let tags: Vec<String> = {
        use n0_future::StreamExt;
        let mut list = blobs.tags().list().await.unwrap();
        let mut names = Vec::new();
        while let Some(tag) = list.next().await {
            let tag = tag.unwrap();
            if tag.hash == pack {
                names.push(String::from_utf8_lossy(tag.name.as_ref()).into_owned());
            }
        }
        names
    };
    assert_eq!(
        tags,
        vec![format!(
            "knot/did:plc:forker/website/pack/{}",
            m2.packs[0].hash_hex()
        )],
        "the fork still pins the shared pack"
    );
    assert!(blobs.has(pack).await.unwrap());
    node.stop().await;
}

#[tokio::test]
async fn bad_sources_are_refused_and_change_nothing() {
    let work = tempfile::tempdir().unwrap();
    let node = TestNode::spawn().await;
    let not_git = work.path().join("plain");
    std::fs::create_dir_all(&not_git).unwrap();
    let err = node.try_publish(REPO, &not_git, false).await.unwrap_err();
    assert!(err.to_string().contains("not a git repository"), "{err}");
    assert!(
        node.repo_ids().await.is_empty(),
        "a failed first publish leaves no repository"
    );

    // A history rewrite is refused unless forced.
    let src = work.path().join("src");
    make_repo(&src);
    let first = node.publish(REPO, &src).await;
    git(&src, &["reset", "-q", "--hard", "HEAD~1"]);
    add_commit(&src, "diverged");
    let err = node.try_publish(REPO, &src, false).await.unwrap_err();
    assert!(err.to_string().contains("non-fast-forward"), "{err}");
    assert_eq!(
        node.summary(REPO).await.unwrap().manifest.as_deref(),
        Some(first.manifest.as_str())
    );
    // A stale expected manifest is refused too.
    let err = node
        .publish_expecting(REPO, &src, true, Some("0".repeat(64)))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("moved on"), "{err}");
    let forced = node
        .publish_expecting(REPO, &src, true, Some(first.manifest.clone()))
        .await
        .unwrap();
    assert_eq!(
        git(&node.repo_path(REPO), &["rev-parse", "HEAD"]),
        git(&src, &["rev-parse", "HEAD"])
    );

    // A corrupted stored pack: materializing elsewhere fails cleanly and the
    // existing materialized repository is untouched.
    let hash = parse_hash_hex(&forced.manifest).unwrap();
    let manifest = content::load_manifest(node.node.blobs(), hash, &rid(REPO))
        .await
        .unwrap();
    let big = manifest.packs.iter().max_by_key(|p| p.size).unwrap();
    let file = node
        .data_dir
        .join("blobs/data")
        .join(format!("{}.data", big.hash_hex()));
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[100] ^= 0x01;
    std::fs::write(&file, bytes).unwrap();
    let before = fingerprint(&node.repo_path(REPO));
    let elsewhere = work.path().join("elsewhere.git");
    let err = content::materialize(node.node.blobs(), &elsewhere, hash, &manifest)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ContentError::Materialize(MaterializeError::CorruptPack { .. })
        ),
        "{err}"
    );
    assert!(!elsewhere.exists());
    assert_eq!(fingerprint(&node.repo_path(REPO)), before);
    git(&node.repo_path(REPO), &["fsck", "--full", "--no-progress"]);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_http_enabled_serves_git_clone() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_repo(&src);
    let mut config = Config::local(work.path().join("node"));
    config.http.enabled = true;
    config.http.bind = "127.0.0.1:0".parse().unwrap();
    let node = TestNode::spawn_with(config).await;
    node.publish(REPO, &src).await;
    let addr = node.node.http_addr().expect("http is enabled");
    let clone = work.path().join("clone");
    let url = format!("http://{addr}/{REPO}");
    let clone_str = clone.to_str().unwrap().to_string();
    let dir = work.path().to_path_buf();
    tokio::task::spawn_blocking(move || git(&dir, &["clone", "-q", &url, &clone_str]))
        .await
        .unwrap();
    assert_eq!(
        git(&clone, &["ls-tree", "-r", "HEAD"]),
        git(&src, &["ls-tree", "-r", "HEAD"])
    );
    node.stop().await;
}

/// The refs `git upload-pack` over the admin socket (what `git clone
/// knot://` reads) advertises for `repo`, protocol v0.
async fn advertised(node: &TestNode, repo: &str) -> Vec<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut reader, mut writer) = node
        .client()
        .upload_pack(&rid(repo), None)
        .await
        .expect("upload-pack starts");
    let mut refs = Vec::new();
    loop {
        let mut len = [0u8; 4];
        reader.read_exact(&mut len).await.expect("a pkt-line");
        let len = usize::from_str_radix(std::str::from_utf8(&len).unwrap(), 16).unwrap();
        if len == 0 {
            break;
        }
        let mut line = vec![0u8; len - 4];
        reader.read_exact(&mut line).await.expect("a pkt-line");
        let line = String::from_utf8_lossy(&line);
        let name = line.split('\0').next().unwrap().trim_end();
        let name = name.split_once(' ').map(|(_, n)| n).unwrap_or(name);
        if name != "capabilities^{}" {
            refs.push(name.to_string());
        }
    }
    let _ = writer.write_all(b"0000").await;
    refs
}

/// The status smart HTTP answers a ref advertisement of `repo` with.
async fn http_status(addr: std::net::SocketAddr, repo: &str) -> u16 {
    let url = format!("http://{addr}/{repo}/info/refs?service=git-upload-pack");
    reqwest::get(url).await.unwrap().status().as_u16()
}

/// A complete bare copy of the repository at `from`, made with git.
fn bare_copy(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    let (from, to) = (from.to_str().unwrap(), to.to_str().unwrap());
    git(&std::env::temp_dir(), &["clone", "-q", "--bare", from, to]);
}

/// What is served to git clients, over smart HTTP and over the admin
/// socket (`git clone knot://`), is what the node holds, from the moment
/// it starts: a repository under `repos/` it does not hold (a stray copy,
/// or one put back where a removed repository was) is not served, however
/// complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_what_the_node_holds_is_served() {
    const STRAY: &str = "did:plc:author1/stray";
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_repo(&src);
    let mut config = Config::local(work.path().join("node"));
    config.http.enabled = true;
    config.http.bind = "127.0.0.1:0".parse().unwrap();
    let mut node = TestNode::spawn_with(config.clone()).await;
    node.publish(REPO, &src).await;
    let copy = work.path().join("copy.git");
    bare_copy(&node.repo_path(REPO), &copy);
    bare_copy(&copy, &node.repo_path(STRAY));

    for restarted in [false, true] {
        let addr = node.node.http_addr().expect("http is enabled");
        assert_eq!(http_status(addr, REPO).await, 200, "restarted: {restarted}");
        assert!(advertised(&node, REPO).await.contains(&"HEAD".to_string()));
        let stray = http_status(addr, STRAY).await;
        assert_eq!(
            stray, 404,
            "a stray copy is served (restarted: {restarted})"
        );
        assert_eq!(advertised(&node, STRAY).await, Vec::<String>::new());
        if !restarted {
            node = node.restart_with(config.clone()).await;
        }
    }

    let addr = node.node.http_addr().expect("http is enabled");
    node.admin(Command::RemoveRepo { repo_id: rid(REPO) })
        .await
        .expect("remove-repo");
    bare_copy(&copy, &node.repo_path(REPO));
    let removed = http_status(addr, REPO).await;
    assert_eq!(removed, 404, "a removed repository is served");
    assert_eq!(advertised(&node, REPO).await, Vec::<String>::new());
    node.stop().await;
}

/// Tags naming blobs of `repo` on `node`: (tag name, hash).
async fn repo_tags(node: &TestNode, repo: &str) -> Vec<(String, iroh_blobs::Hash)> {
    use n0_future::StreamExt;
    let mut list = node
        .node
        .blobs()
        .tags()
        .list_prefix(format!("knot/{repo}/"))
        .await
        .unwrap();
    let mut out = Vec::new();
    while let Some(tag) = list.next().await {
        let tag = tag.unwrap();
        out.push((
            String::from_utf8_lossy(tag.name.as_ref()).into_owned(),
            tag.hash,
        ));
    }
    out
}

/// A publish whose materialization fails (here: a stale ref lock a crashed
/// git left in the served repository) keeps the previous state served and
/// pinned, and the next publish after the lock is gone succeeds.
#[tokio::test]
async fn a_publish_whose_materialize_fails_keeps_the_previous_state() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_repo(&src);
    let node = TestNode::spawn().await;
    let first = node.publish(REPO, &src).await;
    let served = node.repo_path(REPO);
    let before = fingerprint(&served);
    let tags_before = repo_tags(&node, REPO).await;

    let lock = served.join("refs/heads/main.lock");
    std::fs::write(&lock, b"").unwrap();
    add_commit(&src, "blocked");
    let err = node
        .try_publish(REPO, &src, false)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("lock"), "{err}");
    let summary = node.summary(REPO).await.unwrap();
    assert_eq!(summary.manifest.as_deref(), Some(first.manifest.as_str()));
    assert_eq!(fingerprint(&served), before, "the previous state is served");
    assert_eq!(
        std::fs::read_to_string(served.join("knot-manifest"))
            .unwrap()
            .trim(),
        first.manifest,
        "and recorded as materialized"
    );
    assert_eq!(repo_tags(&node, REPO).await, tags_before, "and pinned");
    let clone = work.path().join("clone");
    git(
        work.path(),
        &[
            "clone",
            "-q",
            served.to_str().unwrap(),
            clone.to_str().unwrap(),
        ],
    );
    assert_eq!(
        git(&clone, &["rev-parse", "HEAD"]),
        git(&src, &["rev-parse", "HEAD~1"])
    );

    std::fs::remove_file(&lock).unwrap();
    let second = node.publish(REPO, &src).await;
    assert_ne!(second.manifest, first.manifest);
    assert_eq!(
        git(&served, &["rev-parse", "HEAD"]),
        git(&src, &["rev-parse", "HEAD"])
    );
    node.stop().await;
}

/// What a socket client sends is checked: garbage instead of a pack, refs
/// naming objects nobody sent, an ill-formed ref name and a pack over the
/// node's receive limit are each refused with an error, and the state held
/// stays what it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sending_bad_packs_or_refs_changes_nothing() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_repo(&src);
    let mut config = Config::local(work.path().join("node"));
    // The receive limit follows the per-repository quota.
    config.max_repo_bytes = Some(200_000);
    let node = TestNode::spawn_with(config).await;
    let first = node.publish(REPO, &src).await;
    let before = fingerprint(&node.repo_path(REPO));
    let git_dir = knotd::git::open_repo(&src).unwrap();
    let refs = knotd::git::read_refs(&git_dir).unwrap();
    let publish = |refs: knotd::git::RefSet| Command::Publish {
        repo_id: rid(REPO),
        refs,
        force: true,
        expected_manifest: None,
    };

    // Not a pack.
    let mut garbage: &[u8] = b"PACK this is not a pack at all, just bytes";
    let err = node
        .client()
        .publish_pack(&publish(refs.clone()), Some(&mut garbage))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("receiving the pack failed"),
        "{err}"
    );

    // A ref naming an object that was never sent.
    let mut missing = refs.clone();
    missing.refs.insert(
        "refs/heads/ghost".into(),
        "0123456789abcdef0123456789abcdef01234567".parse().unwrap(),
    );
    let err = node
        .client()
        .publish_pack(&publish(missing), None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("does not complete"), "{err}");

    // A ref name git would never accept, and one outside refs/.
    for name in ["refs/heads/../escape", "HEADS/main"] {
        let mut bad = refs.clone();
        bad.refs
            .insert(name.into(), refs.refs.values().next().unwrap().clone());
        let err = node
            .client()
            .publish_pack(&publish(bad), None)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("invalid"), "{name}: {err}");
    }

    // A pack larger than the node takes.
    let big = work.path().join("big");
    make_repo(&big);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let noise: Vec<u8> = (0..600_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(big.join("noise.bin"), noise).unwrap();
    git(&big, &["add", "noise.bin"]);
    git(&big, &["commit", "-q", "-m", "noise"]);
    let err = node.try_publish(REPO, &big, true).await.unwrap_err();
    assert!(err.to_string().contains("maximum allowed size"), "{err}");

    assert_eq!(
        node.summary(REPO).await.unwrap().manifest.as_deref(),
        Some(first.manifest.as_str())
    );
    assert_eq!(fingerprint(&node.repo_path(REPO)), before);
    node.stop().await;
}

/// The pack a client sends is published as sent: on a first publish the
/// pack blob is the very pack file the node indexed and links into its
/// repository; on an update the client's thin pack is the blob (a small
/// delta, not its base appended), while the repository gets the completed
/// pack. A fresh node replicates both states.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_received_pack_is_published_as_sent_and_not_packed_again() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_repo(&src);
    let node = TestNode::spawn().await;
    let first = node.publish(REPO, &src).await;
    let pack_hashes = |tags: Vec<(String, iroh_blobs::Hash)>| -> Vec<iroh_blobs::Hash> {
        tags.into_iter()
            .filter(|(name, _)| name.contains("/pack/"))
            .map(|(_, hash)| hash)
            .collect()
    };
    let first_packs = pack_hashes(repo_tags(&node, REPO).await);
    assert_eq!(first_packs.len(), 1);
    let files = pack_files(&node.repo_path(REPO));
    assert_eq!(files.len(), 1, "one pack in the repository: {files:?}");
    assert_eq!(
        blake3::hash(&std::fs::read(&files[0]).unwrap()).as_bytes(),
        first_packs[0].as_bytes(),
        "the first pack blob is the pack file the node indexed"
    );
    assert_eq!(
        first.bytes_added,
        std::fs::metadata(&files[0]).unwrap().len()
    );

    // A few bytes of the 64 KiB binary change: git sends a delta against
    // the blob the node has (a thin pack).
    let mut data = std::fs::read(src.join("data.bin")).unwrap();
    data[100] ^= 0xff;
    std::fs::write(src.join("data.bin"), data).unwrap();
    git(&src, &["commit", "-q", "-am", "tweak"]);
    let second = node.publish(REPO, &src).await;
    assert_eq!(second.pack_count, 2);
    assert!(
        second.bytes_added < 2048,
        "the thin pack is published, not its completed copy: {} bytes",
        second.bytes_added
    );
    let files = pack_files(&node.repo_path(REPO));
    assert_eq!(files.len(), 2, "{files:?}");
    let completed = files
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .filter(|len| *len != first.bytes_added)
        .max()
        .unwrap();
    assert!(
        completed > 64 * 1024,
        "the repository holds the pack completed with its base: {completed} bytes"
    );
    assert_eq!(
        fingerprint(&node.repo_path(REPO)),
        fingerprint(&src.join(".git"))
    );
    git(&node.repo_path(REPO), &["fsck", "--full", "--no-progress"]);

    let follower = TestNode::spawn().await;
    follower.follow(REPO, vec![node.ticket().await]).await;
    let want = node.materialized(REPO).await;
    assert!(want.is_some());
    common::eventually(30, "the follower materializes the state", || async {
        follower.materialized(REPO).await == want
    })
    .await;
    assert_replica_of(&follower, &src);
    follower.stop().await;
    node.stop().await;
}

/// The follower's copy of `REPO` has the refs and tree of `src` and is
/// whole by `git fsck`.
fn assert_replica_of(follower: &TestNode, src: &std::path::Path) {
    assert_eq!(
        fingerprint(&follower.repo_path(REPO)),
        fingerprint(&src.join(".git"))
    );
    git(
        &follower.repo_path(REPO),
        &["fsck", "--full", "--no-progress"],
    );
}

/// The `.pack` files in a repository's object store.
fn pack_files(git_dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(git_dir.join("objects/pack"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "pack"))
        .collect();
    files.sort();
    files
}
