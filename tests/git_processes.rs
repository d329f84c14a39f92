//! Publishing and materializing run the same few git processes whatever
//! the number of refs: counted through a `git` wrapper on `PATH` in a
//! second run of this test binary.

mod common;
mod git_env;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use git_env::Env;
use knotd::materialize::Outcome;

/// Run this test binary again for `test` (exactly), with `git` on `PATH`
/// replaced by a shell wrapper that runs `script` and then the real git,
/// and with `envs` set; returns the child's output.
fn rerun_with_git_wrapper(
    test: &str,
    env: &Env,
    script: &str,
    envs: &[(&str, &std::ffi::OsStr)],
) -> std::process::Output {
    let real_git = std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join("git"))
                .find(|p| p.is_file())
        })
        .expect("git is on PATH");
    let bin = env.path("wrapped-bin");
    fs::create_dir_all(&bin).unwrap();
    let wrapper = bin.join("git");
    fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\n{script}\nexec '{}' \"$@\"\n",
            real_git.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([test, "--exact", "--test-threads=1", "--nocapture"])
        .env("PATH", path);
    for (key, value) in envs {
        cmd.env(key, value);
    }
    cmd.output().unwrap()
}

/// A test environment below `root` (a child run's directory), with the
/// home directory its git configuration expects.
fn env_in(root: &Path) -> Env {
    let env = Env {
        root: tempfile::tempdir_in(root).unwrap(),
    };
    fs::create_dir(env.path("home")).unwrap();
    env
}

/// Check that a child run of this binary succeeded and got to its end
/// (it writes `child-ran` in `env`); returns its output.
fn assert_child_ran(env: &Env, out: &std::process::Output) -> String {
    let output = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "child run failed: {output}");
    assert!(
        env.path("child-ran").exists(),
        "the child run did not run: {output}"
    );
    output
}

/// Run this test binary again for `test`, with `git` on `PATH` replaced by
/// a wrapper that logs every invocation's subcommand; returns the child's
/// output.
fn rerun_counting_git(test: &str, env: &Env) -> String {
    let log = env.path("git-calls.log");
    let out = rerun_with_git_wrapper(
        test,
        env,
        "for a in \"$@\"; do case \"$a\" in -*|*/*) ;; *) echo \"$a\" >> \"$KNOT_GIT_LOG\"; break;; esac; done",
        &[
            ("KNOT_GIT_LOG", log.as_os_str()),
            ("KNOT_COUNT_CHILD", env.root.path().as_os_str()),
        ],
    );
    assert!(
        out.status.success(),
        "child run failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Publish a repository with `refs` branches and tags, then update ten
/// branches and publish again; returns the git subcommands the second
/// publish and its materialization ran (each in its own log section).
fn publish_with_many_refs(root: &Path, refs: usize) -> (Vec<String>, Vec<String>) {
    let env = env_in(root);
    let src = env.sample_repo();
    let head = env.git(&src, &["rev-parse", "HEAD"]).trim().to_owned();
    let mut input = String::new();
    for i in 0..refs {
        let kind = if i % 2 == 0 { "heads/b" } else { "tags/t" };
        input.push_str(&format!("create refs/{kind}{i} {head}\n"));
    }
    env.git_stdin(&src, &["update-ref", "--stdin"], input.as_bytes());

    let log = PathBuf::from(std::env::var_os("KNOT_GIT_LOG").unwrap());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store = iroh_blobs::store::mem::MemStore::new();
        let repo = knotd::repo_id::RepoId::parse("did:plc:test/many").unwrap();
        let dest = env.path("mat/many.git");
        let first = knotd::content::publish(&store, &repo, &src, None, 16, false)
            .await
            .unwrap();
        knotd::content::materialize(&store, &dest, first.hash, &first.manifest)
            .await
            .unwrap();
        env.commit_file(&src, "README", b"more\n", "more");
        let tip = env.git(&src, &["rev-parse", "HEAD"]).trim().to_owned();
        for i in (0..20).step_by(2) {
            env.git(&src, &["update-ref", &format!("refs/heads/b{i}"), &tip]);
        }
        let _ = fs::remove_file(&log);
        let second = knotd::content::publish(&store, &repo, &src, Some(&first.manifest), 16, false)
            .await
            .unwrap();
        assert!(!second.unchanged);
        let published = fs::read_to_string(&log).unwrap_or_default();
        let _ = fs::remove_file(&log);
        let outcome = knotd::content::materialize(&store, &dest, second.hash, &second.manifest)
            .await
            .unwrap();
        assert_eq!(outcome, Outcome::Updated { packs_indexed: 1 });
        let materialized = fs::read_to_string(&log).unwrap_or_default();
        env.assert_same_repo(&src, &dest);
        let lines = |s: String| s.lines().map(str::to_owned).collect::<Vec<_>>();
        (lines(published), lines(materialized))
    })
}

#[test]
fn publish_runs_the_same_git_processes_for_50_or_2000_refs() {
    if let Some(root) = std::env::var_os("KNOT_COUNT_CHILD") {
        // The child run: git is the counting wrapper here.
        let root = PathBuf::from(root);
        let (small_publish, small_mat) = publish_with_many_refs(&root, 50);
        let (big_publish, big_mat) = publish_with_many_refs(&root, 2000);
        println!("publish: {small_publish:?} / {big_publish:?}");
        println!("materialize: {small_mat:?} / {big_mat:?}");
        assert_eq!(small_publish, big_publish);
        assert_eq!(small_mat, big_mat);
        // Reading refs, one ancestry walker, one presence check, the pack.
        assert!(big_publish.len() <= 6, "{big_publish:?}");
        assert!(
            big_publish.iter().filter(|c| *c == "cat-file").count() <= 2,
            "{big_publish:?}"
        );
        assert!(big_mat.len() <= 6, "{big_mat:?}");
        fs::write(root.join("child-ran"), b"yes").unwrap();
        return;
    }
    let env = Env::new();
    let output = rerun_counting_git(
        "publish_runs_the_same_git_processes_for_50_or_2000_refs",
        &env,
    );
    println!("{output}");
    assert!(env.path("child-ran").exists(), "the child run did not run");
    // The wrapper saw the work.
    assert!(output.contains("\"pack-objects\""), "{output}");
    assert!(output.contains("\"index-pack\""), "{output}");
}

/// A repository materialized for the first time costs three git processes
/// however it is shaped: `init`, `index-pack` and one `cat-file` that checks
/// and peels every tip before `packed-refs` and `HEAD` are written.
#[test]
fn a_new_repository_is_materialized_with_three_git_processes() {
    if let Some(root) = std::env::var_os("KNOT_COUNT_CHILD") {
        let env = env_in(Path::new(&root));
        let src = env.sample_repo();
        let log = PathBuf::from(std::env::var_os("KNOT_GIT_LOG").unwrap());
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let calls = runtime.block_on(async {
            let store = iroh_blobs::store::mem::MemStore::new();
            let repo = knotd::repo_id::RepoId::parse("did:plc:test/fresh").unwrap();
            let published = knotd::content::publish(&store, &repo, &src, None, 16, false)
                .await
                .unwrap();
            let _ = fs::remove_file(&log);
            let dest = env.path("mat/fresh.git");
            let outcome =
                knotd::content::materialize(&store, &dest, published.hash, &published.manifest)
                    .await
                    .unwrap();
            assert_eq!(outcome, Outcome::Created);
            let calls = fs::read_to_string(&log).unwrap_or_default();
            env.assert_same_repo(&src, &dest);
            calls
        });
        let calls: Vec<&str> = calls.lines().collect();
        println!("materialize: {calls:?}");
        assert_eq!(calls, ["init", "index-pack", "cat-file"]);
        fs::write(PathBuf::from(root).join("child-ran"), b"yes").unwrap();
        return;
    }
    let env = Env::new();
    let output = rerun_counting_git(
        "a_new_repository_is_materialized_with_three_git_processes",
        &env,
    );
    println!("{output}");
    assert!(env.path("child-ran").exists(), "the child run did not run");
}

/// A new repository of several packs, its first indexed by gix-pack and
/// the thin ones after it by git, is checked pack by pack by `knotd
/// check-connected` instead of by git walking every object: no `rev-list`
/// (with git as the only indexer, the walk runs).
#[test]
fn a_new_repository_of_several_packs_needs_no_walk() {
    if let Some(root) = std::env::var_os("KNOT_COUNT_CHILD") {
        let env = env_in(Path::new(&root));
        let src = env.sample_repo();
        env.commit_file(&src, "big.bin", &git_env::binary(1_300_000, 5), "big");
        let log = PathBuf::from(std::env::var_os("KNOT_GIT_LOG").unwrap());
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let gix = knotd::git::PackIndexer::Gix {
            program: env!("CARGO_BIN_EXE_knotd").into(),
        };
        let (with_gix, with_git) = runtime.block_on(async {
            let store = iroh_blobs::store::mem::MemStore::new();
            let repo = knotd::repo_id::RepoId::parse("did:plc:test/packs").unwrap();
            let mut published = knotd::content::publish(&store, &repo, &src, None, 16, false)
                .await
                .unwrap();
            for round in 0..2 {
                let text = git_env::text(4000, round + 40);
                env.commit_file(&src, "doc.txt", &text, &format!("round {round}"));
                published = knotd::content::publish(
                    &store,
                    &repo,
                    &src,
                    Some(&published.manifest),
                    16,
                    false,
                )
                .await
                .unwrap();
            }
            assert_eq!(published.manifest.packs.len(), 3);
            let mut calls = Vec::new();
            for (name, indexer) in [("gix", &gix), ("git", &knotd::git::PackIndexer::Git)] {
                let _ = fs::remove_file(&log);
                let dest = env.path(&format!("mat/{name}.git"));
                let outcome = knotd::content::materialize_with(
                    &store,
                    &dest,
                    published.hash,
                    &published.manifest,
                    None,
                    indexer,
                )
                .await
                .unwrap();
                assert_eq!(outcome, Outcome::Created);
                calls.push(fs::read_to_string(&log).unwrap_or_default());
                env.assert_same_repo(&src, &dest);
            }
            (calls[0].clone(), calls[1].clone())
        });
        let with_gix: Vec<&str> = with_gix.lines().collect();
        let with_git: Vec<&str> = with_git.lines().collect();
        println!("materialize with gix: {with_gix:?}, with git: {with_git:?}");
        assert_eq!(with_gix, ["init", "index-pack", "index-pack", "cat-file"]);
        assert!(with_git.contains(&"rev-list"), "{with_git:?}");
        fs::write(PathBuf::from(root).join("child-ran"), b"yes").unwrap();
        return;
    }
    let env = Env::new();
    let output = rerun_counting_git("a_new_repository_of_several_packs_needs_no_walk", &env);
    println!("{output}");
    assert!(env.path("child-ran").exists(), "the child run did not run");
}

/// A publish through the admin socket packs once and indexes once, on a
/// new repository and on an update: the client packs what the node lacks,
/// the node indexes it and keeps that pack as the blob (the node's git
/// processes and the client's are counted together here, in one process).
#[test]
fn a_publish_through_the_socket_packs_once_and_indexes_once() {
    if let Some(root) = std::env::var_os("KNOT_COUNT_CHILD") {
        let log = PathBuf::from(std::env::var_os("KNOT_GIT_LOG").unwrap());
        let work = tempfile::tempdir_in(PathBuf::from(&root)).unwrap();
        let src = work.path().join("src");
        common::make_repo(&src);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (first, second, after) = runtime.block_on(async {
            let data = tempfile::tempdir_in(PathBuf::from(&root)).unwrap();
            let mut config = knotd::config::Config::local(data.path());
            config.max_packs = 2;
            let node = common::TestNode::spawn_with(config).await;
            let repo = "did:plc:test/socket";
            let _ = fs::remove_file(&log);
            node.publish(repo, &src).await;
            let first = fs::read_to_string(&log).unwrap_or_default();
            common::add_commit(&src, "more");
            let _ = fs::remove_file(&log);
            node.publish(repo, &src).await;
            let second = fs::read_to_string(&log).unwrap_or_default();
            // A third pack would pass max_packs: the node packs everything
            // into one, and the repository keeps only that one ...
            common::add_commit(&src, "again");
            let consolidated = node.publish(repo, &src).await;
            assert!(consolidated.consolidated);
            let packs = fs::read_dir(node.repo_path(repo).join("objects/pack"))
                .unwrap()
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "pack"))
                .count();
            assert_eq!(packs, 1);
            // ... so the next publish takes the client's pack as it is again.
            common::add_commit(&src, "after");
            let _ = fs::remove_file(&log);
            node.publish(repo, &src).await;
            let after = fs::read_to_string(&log).unwrap_or_default();
            assert_eq!(
                common::fingerprint(&node.repo_path(repo)),
                common::fingerprint(&src.join(".git"))
            );
            node.stop().await;
            (first, second, after)
        });
        for (what, calls) in [
            ("new", &first),
            ("update", &second),
            ("after a consolidation", &after),
        ] {
            let calls: Vec<&str> = calls.lines().collect();
            println!("{what}: {calls:?}");
            let count = |name: &str| calls.iter().filter(|c| **c == name).count();
            assert_eq!(count("pack-objects"), 1, "{what}: {calls:?}");
            assert_eq!(count("index-pack"), 1, "{what}: {calls:?}");
        }
        // The client: refs, the pack; the node: a staging repository, the
        // index, the refs checked, the repository made or updated.
        assert!(first.lines().count() <= 9, "{first}");
        assert!(second.lines().count() <= 14, "{second}");
        fs::write(PathBuf::from(root).join("child-ran"), b"yes").unwrap();
        return;
    }
    let env = Env::new();
    let output = rerun_counting_git(
        "a_publish_through_the_socket_packs_once_and_indexes_once",
        &env,
    );
    println!("{output}");
    assert!(env.path("child-ran").exists(), "the child run did not run");
}

/// A git that never finishes is killed at the configured deadline, and the
/// caller gets an error that says so instead of waiting forever.
#[test]
fn a_hung_git_is_killed_at_its_deadline() {
    if let Some(root) = std::env::var_os("KNOT_HANG_CHILD") {
        // The child run: `git index-pack` hangs here.
        let root = PathBuf::from(root);
        knotd::git::set_timeout(std::time::Duration::from_secs(2));
        let env = env_in(&root);
        let src = env.sample_repo();
        let head = env.git(&src, &["rev-parse", "HEAD"]).trim().to_owned();
        let head: knotd::git::ObjectId = head.parse().unwrap();
        let git_dir = knotd::git::open_repo(&src).unwrap();
        let pack = knotd::git::pack_objects(&git_dir, &[head], &[], false).unwrap();
        let dest = knotd::git::init_bare(&env.path("dest.git")).unwrap();
        let started = std::time::Instant::now();
        let err = knotd::git::index_pack(&dest, &pack.bytes).unwrap_err();
        let took = started.elapsed();
        println!("index-pack: {err} after {took:?}");
        assert!(
            matches!(err, knotd::git::GitError::TimedOut { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("git_timeout_secs"), "{err}");
        assert!(took < std::time::Duration::from_secs(30), "{took:?}");
        fs::write(root.join("child-ran"), b"yes").unwrap();
        return;
    }
    let env = Env::new();
    let out = rerun_with_git_wrapper(
        "a_hung_git_is_killed_at_its_deadline",
        &env,
        "case \" $* \" in *\" index-pack \"*) exec sleep 600;; esac",
        &[("KNOT_HANG_CHILD", env.root.path().as_os_str())],
    );
    assert_child_ran(&env, &out);
}

/// A gix-pack indexer that runs past the deadline fails the job (it is
/// retried later) instead of handing the pack to `git index-pack`, which
/// is slower on every shape measured and would only double the wait.
#[test]
fn a_gix_indexer_past_its_deadline_is_not_followed_by_git() {
    if let Some(root) = std::env::var_os("KNOT_HANG_CHILD") {
        let root = PathBuf::from(root);
        knotd::git::set_timeout(std::time::Duration::from_secs(2));
        let env = env_in(&root);
        let src = env.sample_repo();
        env.commit_file(&src, "big.bin", &git_env::binary(1_300_000, 3), "big");
        let git_dir = knotd::git::open_repo(&src).unwrap();
        let refs = knotd::git::read_refs(&git_dir).unwrap();
        let pack = knotd::git::pack_objects(&git_dir, &refs.tips(), &[], false).unwrap();
        assert!(pack.bytes.len() as u64 >= knotd::materialize::GIX_MIN_PACK_BYTES);
        let objects = knotd::git::parse_pack_header(&pack.bytes).unwrap();
        let manifest = knotd::manifest::Manifest {
            repo_id: "did:plc:test/hang".into(),
            refs,
            packs: vec![knotd::manifest::PackEntry::for_bytes(&pack.bytes, objects)],
        };
        let hung = env.path("hung-indexer");
        fs::write(&hung, "#!/bin/sh\nexec sleep 600\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&hung, fs::Permissions::from_mode(0o755)).unwrap();
        let mut load = |_: &knotd::manifest::PackEntry| -> Result<
            knotd::materialize::PackReader,
            knotd::materialize::MaterializeError,
        > { Ok(Box::new(std::io::Cursor::new(pack.bytes.clone()))) };
        let started = std::time::Instant::now();
        let err = knotd::materialize::materialize_with(
            &env.path("dest.git"),
            manifest.hash(),
            &manifest,
            &mut load,
            None,
            &knotd::git::PackIndexer::Gix { program: hung },
        )
        .unwrap_err();
        let took = started.elapsed();
        println!("materialize: {err} after {took:?}");
        assert!(
            matches!(
                err,
                knotd::materialize::MaterializeError::Git(knotd::git::GitError::TimedOut { .. })
            ),
            "{err}"
        );
        assert!(took < std::time::Duration::from_secs(30), "{took:?}");
        assert!(!env.path("dest.git").exists());
        fs::write(root.join("child-ran"), b"yes").unwrap();
        return;
    }
    let env = Env::new();
    let ran = env.path("git-index-pack-ran");
    let out = rerun_with_git_wrapper(
        "a_gix_indexer_past_its_deadline_is_not_followed_by_git",
        &env,
        "case \" $* \" in *\" index-pack \"*) : > \"$KNOT_INDEX_PACK_RAN\";; esac",
        &[
            ("KNOT_HANG_CHILD", env.root.path().as_os_str()),
            ("KNOT_INDEX_PACK_RAN", ran.as_os_str()),
        ],
    );
    let output = assert_child_ran(&env, &out);
    assert!(
        !ran.exists(),
        "git index-pack ran after the timeout: {output}"
    );
}
