//! Replication between knots: real iroh endpoints on loopback, relays off.

mod common;

use common::{TestNode, add_commit, eventually, fingerprint, git, make_repo};

const REPO: &str = "did:plc:author1/website";

async fn converged(node: &TestNode, manifest: &str) -> bool {
    node.materialized(REPO).await.as_deref() == Some(manifest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn author_seeder_follower_converge_and_survive_the_author_leaving() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_repo(&src);

    let author = TestNode::spawn().await;
    let seeder = TestNode::spawn().await;
    let follower_dir = tempfile::tempdir().unwrap();
    let follower = TestNode::spawn_in(follower_dir.path()).await;

    let first = author.publish(REPO, &src).await;
    assert_eq!(first.pack_count, 1);
    let author_ticket = author.ticket().await;
    let seeder_ticket = seeder.ticket().await;
    seeder.follow(REPO, vec![author_ticket.clone()]).await;
    follower
        .follow(REPO, vec![author_ticket.clone(), seeder_ticket.clone()])
        .await;

    eventually(30, "seeder and follower converge", || async {
        converged(&seeder, &first.manifest).await && converged(&follower, &first.manifest).await
    })
    .await;
    let clone = work.path().join("clone1");
    git(
        work.path(),
        &[
            "clone",
            "-q",
            follower.repo_path(REPO).to_str().unwrap(),
            clone.to_str().unwrap(),
        ],
    );
    assert_eq!(
        git(&clone, &["ls-tree", "-r", "HEAD"]),
        git(&src, &["ls-tree", "-r", "HEAD"])
    );
    assert_eq!(
        fingerprint(&follower.repo_path(REPO)),
        fingerprint(&author.repo_path(REPO))
    );
    git(
        &follower.repo_path(REPO),
        &["fsck", "--full", "--no-progress"],
    );

    // The follower goes away; the author publishes an update that reaches only
    // the seeder, then leaves too.
    follower.stop().await;
    add_commit(&src, "third");
    let second = author.publish(REPO, &src).await;
    assert_eq!(second.pack_count, 2, "an update adds one pack");
    assert!(
        second.bytes_added < 4096,
        "incremental pack is small, got {}",
        second.bytes_added
    );
    eventually(30, "seeder gets the update", || async {
        converged(&seeder, &second.manifest).await
    })
    .await;
    author.stop().await;

    // The follower comes back and gets the update from the seeder alone.
    let follower = TestNode::spawn_in(follower_dir.path()).await;
    eventually(30, "follower gets the update from the seeder", || async {
        converged(&follower, &second.manifest).await
    })
    .await;
    assert_eq!(
        git(&follower.repo_path(REPO), &["rev-parse", "HEAD"]),
        git(&src, &["rev-parse", "HEAD"])
    );
    git(
        &follower.repo_path(REPO),
        &["fsck", "--full", "--no-progress"],
    );

    // The follower restarts again and serves a fourth, fresh node on its own.
    seeder.stop().await;
    let follower = follower.restart().await;
    let fresh = TestNode::spawn().await;
    fresh
        .follow(REPO, vec![author_ticket.clone(), follower.ticket().await])
        .await;
    eventually(
        30,
        "fresh node fetches from the restarted follower",
        || async { converged(&fresh, &second.manifest).await },
    )
    .await;
    assert_eq!(
        fingerprint(&fresh.repo_path(REPO)),
        fingerprint(&follower.repo_path(REPO))
    );
    fresh.stop().await;
    follower.stop().await;
}

/// A provider whose stored pack is corrupted on disk serves wrong bytes; the
/// BLAKE3 verification catches it and the fetch completes from another peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_provider_is_detected_and_another_serves() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_repo(&src);
    let author = TestNode::spawn().await;
    let seeder = TestNode::spawn().await;
    let published = author.publish(REPO, &src).await;
    seeder.follow(REPO, vec![author.ticket().await]).await;
    eventually(30, "seeder converges", || async {
        converged(&seeder, &published.manifest).await
    })
    .await;

    // Flip a byte in the middle of the seeder's pack file.
    let manifest_hash = knotd::record::parse_hash_hex(&published.manifest).unwrap();
    let manifest =
        knotd::content::load_manifest(author.node.blobs(), manifest_hash, &common::rid(REPO))
            .await
            .unwrap();
    let pack = &manifest.packs[0];
    assert!(pack.size > 32 * 1024, "pack must not be inlined in the db");
    let pack_file = seeder
        .data_dir
        .join("blobs/data")
        .join(format!("{}.data", pack.hash_hex()));
    let mut bytes = std::fs::read(&pack_file).expect("seeder stores the pack as a file");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&pack_file, &bytes).unwrap();

    // A fresh node asks the corrupted seeder first, then the author.
    let fresh = TestNode::spawn().await;
    for peer in [&seeder, &author] {
        fresh
            .node
            .lookup()
            .add_endpoint_info(peer.node.addr().await);
    }
    let fetched = knotd::content::fetch(
        fresh.node.blobs(),
        fresh.node.endpoint(),
        &common::rid(REPO),
        manifest_hash,
        &[seeder.node.id(), author.node.id()],
        &knotd::content::FetchOptions::new(std::time::Duration::from_secs(30), &fresh.data_dir),
    )
    .await
    .expect("fetch succeeds from the honest provider");
    assert!(fetched.bytes_fetched >= pack.size);
    let got = fresh
        .node
        .blobs()
        .get_bytes(iroh_blobs::Hash::from_bytes(pack.hash))
        .await
        .unwrap();
    assert_eq!(*blake3::hash(&got).as_bytes(), pack.hash);

    // Only the corrupted seeder: the fetch fails, nothing bad is kept.
    let lonely = TestNode::spawn().await;
    lonely
        .node
        .lookup()
        .add_endpoint_info(seeder.node.addr().await);
    let err = knotd::content::fetch(
        lonely.node.blobs(),
        lonely.node.endpoint(),
        &common::rid(REPO),
        manifest_hash,
        &[seeder.node.id()],
        &knotd::content::FetchOptions::new(std::time::Duration::from_secs(20), &lonely.data_dir),
    )
    .await
    .expect_err("corrupted data must not be accepted");
    assert!(err.to_string().contains("could not fetch pack"), "{err}");
    for n in [author, seeder, fresh, lonely] {
        n.stop().await;
    }
}

/// A provider that goes away in the middle of a transfer: the fetch resumes
/// from another provider and the blob arrives complete and verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_leaving_mid_transfer_is_replaced() {
    let work = tempfile::tempdir().unwrap();
    let BigState {
        author,
        seeder,
        fresh,
        manifest_hash,
        manifest,
        pack,
    } = big_state(&work.path().join("src"), b"mid transfer").await;
    let blobs = fresh.node.blobs().clone();
    let endpoint = fresh.node.endpoint().clone();
    let providers = [seeder.node.id(), author.node.id()];
    let data_dir = fresh.data_dir.clone();
    let fetch = tokio::spawn(async move {
        knotd::content::fetch(
            &blobs,
            &endpoint,
            &common::rid(REPO),
            manifest_hash,
            &providers,
            &knotd::content::FetchOptions::new(std::time::Duration::from_secs(60), &data_dir),
        )
        .await
    });
    // Stop the first provider as soon as part of the pack has arrived.
    let saw_partial = partly_arrived(&fresh, pack).await;
    seeder.stop().await;
    let fetched = fetch
        .await
        .unwrap()
        .expect("the fetch completes from the author");
    assert!(saw_partial, "the first provider must stop mid-transfer");
    let got = fresh.node.blobs().get_bytes(pack).await.unwrap();
    assert_eq!(*blake3::hash(&got).as_bytes(), manifest.packs[0].hash);
    assert_eq!(fetched.manifest, manifest);
    fresh.stop().await;
    author.stop().await;
}

/// Packs are indexed while they download (`fetch_indexing` with
/// `materialize_arriving`): when the only provider leaves mid-pack, the
/// fetch ends with the download's error, the indexing stops instead of
/// waiting for bytes that will not come, and no repository is left behind;
/// from a provider that stays, the same call materializes the repository.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexing_while_downloading_stops_with_the_download_and_leaves_nothing() {
    let work = tempfile::tempdir().unwrap();
    let BigState {
        author,
        seeder,
        fresh,
        manifest_hash,
        manifest,
        pack,
    } = big_state(&work.path().join("src"), b"indexed while downloading").await;
    let fetch_into = |dest: std::path::PathBuf, provider: iroh::EndpointId| {
        let blobs = fresh.node.blobs().clone();
        let endpoint = fresh.node.endpoint().clone();
        let data_dir = fresh.data_dir.clone();
        tokio::spawn(async move {
            let index = |fetched: knotd::manifest::Manifest, failed| {
                let blobs = blobs.clone();
                let dest = dest.clone();
                async move {
                    knotd::content::materialize_arriving(
                        &blobs,
                        &dest,
                        manifest_hash,
                        &fetched,
                        failed,
                        &knotd::git::PackIndexer::Gix {
                            program: env!("CARGO_BIN_EXE_knotd").into(),
                        },
                    )
                    .await
                }
            };
            knotd::content::fetch_indexing(
                &blobs,
                &endpoint,
                &common::rid(REPO),
                manifest_hash,
                &[provider],
                &knotd::content::FetchOptions::new(std::time::Duration::from_secs(60), &data_dir),
                index,
            )
            .await
        })
    };

    // The seeder stops as soon as part of the pack has arrived.
    let repos = work.path().join("repos");
    let dest = repos.join("first");
    let fetch = fetch_into(dest.clone(), seeder.node.id());
    let saw_partial = partly_arrived(&fresh, pack).await;
    seeder.stop().await;
    let err = tokio::time::timeout(std::time::Duration::from_secs(60), fetch)
        .await
        .expect("the fetch ends once its only provider is gone")
        .unwrap()
        .expect_err("the pack cannot be completed");
    assert!(saw_partial, "the provider must stop mid-transfer");
    assert!(
        matches!(
            err,
            knotd::content::ContentError::Fetch { what: "pack", .. }
        ),
        "the download's error is reported, not the indexing it stopped: {err}"
    );
    assert!(!dest.exists(), "no repository is left half-built");
    let leftovers: Vec<_> = std::fs::read_dir(&repos)
        .map(|dir| dir.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "nothing left behind: {leftovers:?}");

    // From the author, the rest arrives and the repository is complete.
    let dest = repos.join("second");
    let (fetched, outcome) = fetch_into(dest.clone(), author.node.id())
        .await
        .unwrap()
        .expect("the fetch completes from the author");
    assert_eq!(fetched.manifest, manifest);
    assert_eq!(outcome, knotd::materialize::Outcome::Created);
    assert_eq!(fingerprint(&dest), fingerprint(&author.repo_path(REPO)));
    git(&dest, &["fsck", "--full", "--no-progress"]);
    // gix-pack indexed it (git would have written a reverse index).
    let rev = std::fs::read_dir(dest.join("objects/pack"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "rev"))
        .count();
    assert_eq!(rev, 0, "the first pack goes to gix-pack");
    fresh.stop().await;
    author.stop().await;
}

/// A state of one big pack held by an author and a seeder, and a fresh node
/// that knows both but follows nothing.
struct BigState {
    author: TestNode,
    seeder: TestNode,
    fresh: TestNode,
    manifest_hash: iroh_blobs::Hash,
    manifest: knotd::manifest::Manifest,
    pack: iroh_blobs::Hash,
}

async fn big_state(src: &std::path::Path, seed: &[u8]) -> BigState {
    common::make_big_repo(src, 48, seed);
    let author = TestNode::spawn().await;
    let seeder = TestNode::spawn().await;
    let published = author.publish(REPO, src).await;
    seeder.follow(REPO, vec![author.ticket().await]).await;
    eventually(60, "seeder converges", || async {
        converged(&seeder, &published.manifest).await
    })
    .await;
    let manifest_hash = knotd::record::parse_hash_hex(&published.manifest).unwrap();
    let manifest =
        knotd::content::load_manifest(author.node.blobs(), manifest_hash, &common::rid(REPO))
            .await
            .unwrap();
    let pack = iroh_blobs::Hash::from_bytes(manifest.packs[0].hash);
    let fresh = TestNode::spawn().await;
    for peer in [&seeder, &author] {
        fresh
            .node
            .lookup()
            .add_endpoint_info(peer.node.addr().await);
    }
    BigState {
        author,
        seeder,
        fresh,
        manifest_hash,
        manifest,
        pack,
    }
}

/// Wait until part of `pack` is in `node`'s store; false when it arrived
/// whole first (or nothing came within 30 s).
async fn partly_arrived(node: &TestNode, pack: iroh_blobs::Hash) -> bool {
    use iroh_blobs::api::proto::BlobStatus;
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_secs(30) {
        match node.node.blobs().status(pack).await.unwrap() {
            BlobStatus::Partial { .. } => return true,
            BlobStatus::Complete { .. } => return false,
            BlobStatus::NotFound => {}
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    false
}
