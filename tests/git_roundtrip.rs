//! End-to-end tests of publishing and materializing with real git
//! repositories built in temporary directories.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use knotd::git::{self, GitError, Head, ObjectId, RefSet};
use knotd::manifest::{Manifest, PackEntry};
use knotd::materialize::{self, MaterializeError, Outcome};

/// Isolated git environment: its own HOME, no system or global config.
struct Env {
    root: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir(root.path().join("home")).unwrap();
        Env { root }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    fn cmd(&self, dir: &Path) -> Command {
        let mut cmd = Command::new("git");
        for var in [
            "GIT_DIR",
            "GIT_WORK_TREE",
            "GIT_INDEX_FILE",
            "GIT_OBJECT_DIRECTORY",
        ] {
            cmd.env_remove(var);
        }
        cmd.current_dir(dir)
            .env("HOME", self.path("home"))
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@t")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@t")
            .env("LC_ALL", "C")
            .args(["-c", "init.defaultBranch=main", "-c", "gc.auto=0"]);
        cmd
    }

    /// Run git in `dir`, assert success, return stdout.
    fn git(&self, dir: &Path, args: &[&str]) -> String {
        let out = self.cmd(dir).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "git {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn commit_file(&self, repo: &Path, file: &str, content: &[u8], msg: &str) {
        let path = repo.join(file);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
        self.git(repo, &["add", file]);
        self.git(repo, &["commit", "-q", "-m", msg]);
    }

    /// A work-tree repository with branches, a merge, tags, notes, a binary
    /// file and a remote-tracking ref (which must not be published).
    fn sample_repo(&self) -> PathBuf {
        let repo = self.path("src");
        fs::create_dir(&repo).unwrap();
        self.git(&repo, &["init", "-q"]);
        self.commit_file(&repo, "README", b"hello\n", "initial");
        self.commit_file(&repo, "data/blob.bin", &binary(200_000, 1), "binary");
        self.git(&repo, &["checkout", "-q", "-b", "feature"]);
        self.commit_file(&repo, "feature.txt", &text(2000, 0), "feature work");
        self.git(&repo, &["tag", "light"]);
        self.git(&repo, &["checkout", "-q", "main"]);
        self.commit_file(&repo, "README", b"hello\nworld\n", "main work");
        self.git(
            &repo,
            &["merge", "-q", "--no-ff", "-m", "merge feature", "feature"],
        );
        self.git(&repo, &["tag", "-a", "v1.0", "-m", "release 1.0"]);
        self.git(&repo, &["branch", "dev", "HEAD~1"]);
        self.git(&repo, &["notes", "add", "-m", "a note", "HEAD"]);
        self.git(&repo, &["update-ref", "refs/remotes/origin/main", "HEAD~1"]);
        repo
    }

    /// `for-each-ref` lines (object, type, name), without remote-tracking refs.
    fn ref_listing(&self, repo: &Path) -> Vec<String> {
        self.git(
            repo,
            &[
                "for-each-ref",
                "--format=%(objectname) %(objecttype) %(refname)",
            ],
        )
        .lines()
        .filter(|l| !l.contains(" refs/remotes/"))
        .map(str::to_owned)
        .collect()
    }

    fn head(&self, repo: &Path) -> String {
        self.git(repo, &["symbolic-ref", "HEAD"]).trim().to_owned()
    }

    fn assert_same_repo(&self, src: &Path, materialized: &Path) {
        assert_eq!(self.ref_listing(src), self.ref_listing(materialized));
        assert_eq!(self.head(src), self.head(materialized));
        git::fsck(materialized).unwrap();
    }
}

/// Deterministic pseudo-random bytes (includes NUL and high bytes).
fn binary(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn text(lines: usize, variant: usize) -> Vec<u8> {
    (0..lines)
        .map(|i| {
            format!(
                "line {i} of the file, variant {}\n",
                if i % 97 == 0 { variant } else { 0 }
            )
        })
        .collect::<String>()
        .into_bytes()
}

/// In-memory stand-in for the blob store.
#[derive(Default)]
struct Store {
    blobs: HashMap<[u8; 32], Vec<u8>>,
    loads: usize,
}

impl Store {
    fn load(&mut self, entry: &PackEntry) -> Result<materialize::PackReader, MaterializeError> {
        self.loads += 1;
        let bytes = self.blobs.get(&entry.hash).cloned().ok_or_else(|| {
            MaterializeError::PackUnavailable {
                hash: entry.hash_hex(),
                reason: "not in store".into(),
            }
        })?;
        Ok(Box::new(std::io::Cursor::new(bytes)))
    }

    fn materialize(&mut self, dest: &Path, m: &Manifest) -> Result<Outcome, MaterializeError> {
        materialize::materialize(dest, m.hash(), m, &mut |e| self.load(e))
    }
}

/// Publish the current state of `src` on top of `prev`: at most one new
/// (thin) pack with the objects not reachable from `prev`'s tips.
fn publish(
    src: &Path,
    prev: Option<&Manifest>,
    store: &mut Store,
) -> (Manifest, Option<git::Pack>) {
    let git_dir = git::open_repo(src).unwrap();
    let refs = git::read_refs(&git_dir).unwrap();
    let exclude = prev.map(|m| m.refs.tips()).unwrap_or_default();
    let pack = git::pack_objects(&git_dir, &refs.tips(), &exclude, prev.is_some()).unwrap();
    let mut packs = prev.map(|m| m.packs.clone()).unwrap_or_default();
    let new_pack = if pack.is_empty() {
        None
    } else {
        let entry = PackEntry::for_bytes(&pack.bytes, pack.object_count);
        store.blobs.insert(entry.hash, pack.bytes.clone());
        packs.push(entry);
        Some(pack)
    };
    let manifest = Manifest {
        repo_id: "did:plc:test/sample".into(),
        refs,
        packs,
    };
    // Everything goes through the wire encoding.
    let decoded = Manifest::from_bytes(&manifest.to_bytes()).unwrap();
    assert_eq!(decoded, manifest);
    (decoded, new_pack)
}

fn read_marker(dest: &Path, name: &str) -> String {
    fs::read_to_string(dest.join(name)).unwrap()
}

#[test]
fn round_trip_full_repository() {
    let env = Env::new();
    let src = env.sample_repo();
    let git_dir = git::open_repo(&src).unwrap();
    let refs = git::read_refs(&git_dir).unwrap();

    assert_eq!(refs.head, Some(Head::Symbolic("refs/heads/main".into())));
    for name in [
        "refs/heads/main",
        "refs/heads/feature",
        "refs/heads/dev",
        "refs/tags/v1.0",
        "refs/tags/light",
        "refs/notes/commits",
    ] {
        assert!(refs.refs.contains_key(name), "missing {name}");
    }
    assert!(!refs.refs.contains_key("refs/remotes/origin/main"));
    // The annotated tag maps to the tag object, not the commit.
    let tag_obj = env.git(&src, &["rev-parse", "refs/tags/v1.0"]);
    assert_eq!(refs.refs["refs/tags/v1.0"].as_str(), tag_obj.trim());
    assert_eq!(
        env.git(&src, &["cat-file", "-t", tag_obj.trim()]).trim(),
        "tag"
    );

    let mut store = Store::default();
    let (manifest, pack) = publish(&src, None, &mut store);
    let pack = pack.expect("first pack is not empty");
    // Exactly the reachable objects (the remote-tracking ref points inside
    // published history, so `--all` reaches nothing extra).
    let expected_objects = env
        .git(&src, &["rev-list", "--objects", "--all"])
        .lines()
        .count();
    assert_eq!(pack.object_count as usize, expected_objects);
    assert_eq!(manifest.packs.len(), 1);
    assert_eq!(
        manifest.head_oid().unwrap().as_str(),
        env.git(&src, &["rev-parse", "HEAD"]).trim()
    );

    let dest = env.path("mat/sample.git");
    assert_eq!(
        store.materialize(&dest, &manifest).unwrap(),
        Outcome::Created
    );
    env.assert_same_repo(&src, &dest);
    assert_eq!(
        env.git(&dest, &["config", "core.logAllRefUpdates"]).trim(),
        "false"
    );
    assert_eq!(
        read_marker(&dest, materialize::MANIFEST_MARKER).trim(),
        data_encoding::HEXLOWER.encode(&manifest.hash())
    );
    assert_eq!(
        read_marker(&dest, materialize::PACKS_MARKER),
        format!("{}\n", manifest.packs[0].hash_hex())
    );
    // No temporary directories are left behind.
    let leftovers: Vec<_> = fs::read_dir(env.path("mat"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");

    // A plain clone gives the same tree and the same binary file.
    let clone = env.path("clone");
    env.git(
        env.root.path(),
        &[
            "clone",
            "-q",
            dest.to_str().unwrap(),
            clone.to_str().unwrap(),
        ],
    );
    assert_eq!(
        env.git(&src, &["ls-tree", "-r", "HEAD"]),
        env.git(&clone, &["ls-tree", "-r", "HEAD"])
    );
    assert_eq!(
        fs::read(clone.join("data/blob.bin")).unwrap(),
        fs::read(src.join("data/blob.bin")).unwrap()
    );

    // Materializing the same manifest again does nothing, loads nothing.
    let loads = store.loads;
    assert_eq!(
        store.materialize(&dest, &manifest).unwrap(),
        Outcome::Unchanged
    );
    assert_eq!(store.loads, loads);
}

/// Write an executable script running `git upload-pack` while copying its
/// output to `capture`.
fn tee_upload_pack(env: &Env, capture: &Path) -> PathBuf {
    let script = env.path("upload-pack-tee.sh");
    let mut f = fs::File::create(&script).unwrap();
    writeln!(
        f,
        "#!/bin/sh\nexec git upload-pack \"$@\" | tee -a '{}'",
        capture.display()
    )
    .unwrap();
    drop(f);
    let status = Command::new("chmod")
        .arg("755")
        .arg(&script)
        .status()
        .unwrap();
    assert!(status.success());
    script
}

/// Pack bytes carried on side-band channel 1 in a captured upload-pack
/// output stream.
fn sideband_pack(stream: &[u8]) -> Vec<u8> {
    let mut pack = Vec::new();
    let mut pos = 0;
    while pos + 4 <= stream.len() {
        let len =
            usize::from_str_radix(std::str::from_utf8(&stream[pos..pos + 4]).unwrap(), 16).unwrap();
        if len < 4 {
            pos += 4;
            continue;
        }
        let payload = &stream[pos + 4..pos + len];
        if payload.first() == Some(&1) {
            pack.extend_from_slice(&payload[1..]);
        }
        pos += len;
    }
    pack
}

#[test]
fn incremental_updates_use_one_thin_pack_each() {
    let env = Env::new();
    let src = env.sample_repo();
    let mut store = Store::default();
    let (mut manifest, _) = publish(&src, None, &mut store);
    let dest = env.path("mat/sample.git");
    assert_eq!(
        store.materialize(&dest, &manifest).unwrap(),
        Outcome::Created
    );

    for round in 1..=3usize {
        // A mirror of the previous state, to measure what `git fetch` sends.
        let prev = env.path(&format!("prev{round}"));
        let url = format!("file://{}", src.display());
        env.git(
            env.root.path(),
            &["clone", "-q", "--mirror", &url, prev.to_str().unwrap()],
        );
        let old_tips: Vec<String> = manifest
            .refs
            .tips()
            .iter()
            .map(|t| format!("^{t}"))
            .collect();

        // New history: edit text and binary files, add a file, move refs.
        env.commit_file(
            &src,
            "feature.txt",
            &text(2000 + round, round),
            &format!("edit {round}"),
        );
        let mut bin = fs::read(src.join("data/blob.bin")).unwrap();
        bin[round * 1000..round * 1000 + 64].copy_from_slice(&binary(64, round as u64 + 7));
        env.commit_file(&src, "data/blob.bin", &bin, &format!("binary {round}"));
        env.commit_file(
            &src,
            &format!("new/{round}.txt"),
            &text(50, round),
            &format!("add {round}"),
        );
        match round {
            1 => {
                env.git(&src, &["tag", "-a", "v2.0", "-m", "release 2.0"]);
            }
            2 => {
                env.git(&src, &["branch", "-D", "dev"]);
                env.git(&src, &["branch", "-f", "feature", "HEAD~1"]);
            }
            _ => {
                env.git(&src, &["notes", "add", "-m", "another note", "HEAD"]);
            }
        }

        let (next, pack) = publish(&src, Some(&manifest), &mut store);
        let pack = pack.expect("an update produces a pack");
        assert_eq!(
            next.packs.len(),
            manifest.packs.len() + 1,
            "exactly one new pack"
        );
        assert_eq!(&next.packs[..manifest.packs.len()], &manifest.packs[..]);

        // The pack holds exactly the objects that are new since `manifest`.
        let mut args = vec!["rev-list", "--objects"];
        let new_tips: Vec<String> = next.refs.tips().iter().map(|t| t.to_string()).collect();
        args.extend(new_tips.iter().map(String::as_str));
        args.push("--not");
        let old_plain: Vec<String> = old_tips.iter().map(|t| t[1..].to_owned()).collect();
        args.extend(old_plain.iter().map(String::as_str));
        let new_objects = env.git(&src, &args).lines().count();
        assert_eq!(pack.object_count as usize, new_objects, "round {round}");

        // Compare with the pack a real `git fetch` transfers.
        let capture = env.path(&format!("capture{round}"));
        let script = tee_upload_pack(&env, &capture);
        env.git(
            &prev,
            &[
                "fetch",
                "-q",
                "--no-auto-gc",
                "--upload-pack",
                script.to_str().unwrap(),
                &url,
                "+refs/*:refs/*",
            ],
        );
        let fetched = sideband_pack(&fs::read(&capture).unwrap());
        let fetched_count = git::parse_pack_header(&fetched).unwrap();
        println!(
            "round {round}: knot pack {} bytes / {} objects; git fetch pack {} bytes / {} objects",
            pack.bytes.len(),
            pack.object_count,
            fetched.len(),
            fetched_count
        );
        assert!(
            pack.bytes.len() as f64 <= 1.2 * fetched.len() as f64 + 1024.0,
            "incremental pack {} bytes vs fetch {} bytes",
            pack.bytes.len(),
            fetched.len()
        );

        let outcome = store.materialize(&dest, &next).unwrap();
        assert_eq!(outcome, Outcome::Updated { packs_indexed: 1 });
        env.assert_same_repo(&src, &dest);
        let listed = read_marker(&dest, materialize::PACKS_MARKER);
        assert_eq!(listed.lines().count(), next.packs.len());
        manifest = next;
    }
    assert!(
        !env.ref_listing(&dest)
            .iter()
            .any(|l| l.ends_with("refs/heads/dev"))
    );

    // Publishing an unchanged repository produces no pack.
    let (same, pack) = publish(&src, Some(&manifest), &mut store);
    assert!(pack.is_none());
    assert_eq!(same.hash(), manifest.hash());
    assert_eq!(store.materialize(&dest, &same).unwrap(), Outcome::Unchanged);

    // The whole chain of thin packs also builds a fresh repository.
    let fresh = env.path("fresh.git");
    assert_eq!(
        store.materialize(&fresh, &manifest).unwrap(),
        Outcome::Created
    );
    env.assert_same_repo(&src, &fresh);
    let clone = env.path("clone");
    env.git(
        env.root.path(),
        &[
            "clone",
            "-q",
            fresh.to_str().unwrap(),
            clone.to_str().unwrap(),
        ],
    );
    assert_eq!(
        env.git(&src, &["ls-tree", "-r", "HEAD"]),
        env.git(&clone, &["ls-tree", "-r", "HEAD"])
    );
}

#[test]
fn corrupt_pack_leaves_repository_untouched() {
    let env = Env::new();
    let src = env.sample_repo();
    let mut store = Store::default();
    let (first, _) = publish(&src, None, &mut store);

    // A corrupt first pack: nothing is created, no temp dir is left.
    let mut bad_store = Store::default();
    let entry = &first.packs[0];
    let mut bytes = store.blobs[&entry.hash].clone();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    bad_store.blobs.insert(entry.hash, bytes);
    let dest = env.path("mat/sample.git");
    let err = bad_store.materialize(&dest, &first).unwrap_err();
    assert!(
        matches!(&err, MaterializeError::CorruptPack { hash, .. } if *hash == entry.hash_hex()),
        "{err}"
    );
    assert!(!dest.exists());
    assert_eq!(fs::read_dir(env.path("mat")).unwrap().count(), 0);

    assert_eq!(store.materialize(&dest, &first).unwrap(), Outcome::Created);
    let refs_before = env.ref_listing(&dest);
    let head_before = env.head(&dest);
    let marker_before = read_marker(&dest, materialize::MANIFEST_MARKER);
    let packs_before = read_marker(&dest, materialize::PACKS_MARKER);

    env.commit_file(&src, "README", b"changed\n", "change");
    env.git(&src, &["checkout", "-q", "-b", "topic"]);
    env.commit_file(&src, "topic.txt", b"topic\n", "topic");
    let (second, _) = publish(&src, Some(&first), &mut store);
    let new_entry = second.packs.last().unwrap().clone();

    // Flipped byte, then truncated pack: both rejected before any write.
    let good = store.blobs[&new_entry.hash].clone();
    let mut flipped = good.clone();
    flipped[20] ^= 0x40;
    let truncated = good[..good.len() - 1].to_vec();
    for bad in [flipped, truncated] {
        store.blobs.insert(new_entry.hash, bad);
        let err = store.materialize(&dest, &second).unwrap_err();
        assert!(
            matches!(&err, MaterializeError::CorruptPack { hash, .. } if *hash == new_entry.hash_hex()),
            "{err}"
        );
        assert_eq!(env.ref_listing(&dest), refs_before);
        assert_eq!(env.head(&dest), head_before);
        assert_eq!(
            read_marker(&dest, materialize::MANIFEST_MARKER),
            marker_before
        );
        assert_eq!(read_marker(&dest, materialize::PACKS_MARKER), packs_before);
        let git_dir = git::open_repo(&dest).unwrap();
        let tip: ObjectId = env
            .git(&src, &["rev-parse", "HEAD"])
            .trim()
            .parse()
            .unwrap();
        assert!(!git::has_object(&git_dir, &tip));
    }

    // A missing pack is reported as unavailable, also without changes.
    store.blobs.remove(&new_entry.hash);
    assert!(matches!(
        store.materialize(&dest, &second),
        Err(MaterializeError::PackUnavailable { .. })
    ));
    assert_eq!(env.ref_listing(&dest), refs_before);

    // With the right bytes the update goes through.
    store.blobs.insert(new_entry.hash, good);
    assert_eq!(
        store.materialize(&dest, &second).unwrap(),
        Outcome::Updated { packs_indexed: 1 }
    );
    env.assert_same_repo(&src, &dest);

    // A crash after indexing but before the markers were rewritten: the
    // pack is indexed again and the update still completes.
    fs::write(dest.join(materialize::PACKS_MARKER), &packs_before).unwrap();
    fs::write(dest.join(materialize::MANIFEST_MARKER), &marker_before).unwrap();
    assert_eq!(
        store.materialize(&dest, &second).unwrap(),
        Outcome::Updated { packs_indexed: 1 }
    );
    env.assert_same_repo(&src, &dest);
    assert_eq!(
        store.materialize(&dest, &second).unwrap(),
        Outcome::Unchanged
    );
}

#[test]
fn incomplete_manifest_is_rejected() {
    let env = Env::new();
    let src = env.sample_repo();
    let mut store = Store::default();
    let (first, _) = publish(&src, None, &mut store);
    let dest = env.path("mat/sample.git");
    store.materialize(&dest, &first).unwrap();
    let refs_before = env.ref_listing(&dest);

    env.commit_file(&src, "README", b"next\n", "next");
    let (mut second, _) = publish(&src, Some(&first), &mut store);
    // Drop the new pack: the refs now point at objects nobody provides.
    second.packs.pop();
    let err = store.materialize(&dest, &second).unwrap_err();
    assert!(matches!(err, MaterializeError::Incomplete(_)), "{err}");
    assert_eq!(env.ref_listing(&dest), refs_before);

    let fresh = env.path("fresh.git");
    let err = store.materialize(&fresh, &second).unwrap_err();
    assert!(matches!(err, MaterializeError::Incomplete(_)), "{err}");
    assert!(!fresh.exists());
}

#[test]
fn leftover_temp_dir_and_foreign_destination() {
    let env = Env::new();
    let src = env.sample_repo();
    let mut store = Store::default();
    let (manifest, _) = publish(&src, None, &mut store);

    let parent = env.path("mat");
    let crashed = parent.join(".sample.git.tmp-crash");
    fs::create_dir_all(crashed.join("objects")).unwrap();
    fs::write(crashed.join("HEAD"), "garbage").unwrap();
    let dest = parent.join("sample.git");
    assert_eq!(
        store.materialize(&dest, &manifest).unwrap(),
        Outcome::Created
    );
    env.assert_same_repo(&src, &dest);
    assert!(!crashed.exists());

    // An existing empty directory is fine; a foreign non-empty one is not.
    let empty = env.path("empty.git");
    fs::create_dir(&empty).unwrap();
    assert_eq!(
        store.materialize(&empty, &manifest).unwrap(),
        Outcome::Created
    );
    let foreign = env.path("foreign");
    fs::create_dir(&foreign).unwrap();
    fs::write(foreign.join("important.txt"), "keep me").unwrap();
    assert!(matches!(
        store.materialize(&foreign, &manifest),
        Err(MaterializeError::NotKnotRepository { .. })
    ));
    assert_eq!(
        fs::read_to_string(foreign.join("important.txt")).unwrap(),
        "keep me"
    );
}

#[test]
fn open_repo_rejects_non_repositories() {
    let env = Env::new();
    let src = env.sample_repo();
    let plain = env.path("plain");
    fs::create_dir(&plain).unwrap();
    for path in [
        plain.clone(),
        src.join("data"),
        env.path("missing"),
        src.join("README"),
    ] {
        let err = git::open_repo(&path).unwrap_err();
        assert!(
            matches!(err, GitError::NotARepository { .. }),
            "{}: {err}",
            path.display()
        );
        assert!(err.to_string().contains("not a git repository"));
    }
    assert_eq!(
        git::open_repo(&src).unwrap(),
        fs::canonicalize(src.join(".git")).unwrap()
    );
    let bare = env.path("bare.git");
    git::init_bare(&bare).unwrap();
    assert_eq!(
        git::open_repo(&bare).unwrap(),
        fs::canonicalize(&bare).unwrap()
    );
    let empty = git::read_refs(&bare).unwrap();
    assert!(empty.refs.is_empty());
    assert!(matches!(empty.head, Some(Head::Symbolic(_))));
}

#[test]
fn ref_name_rules_agree_with_git() {
    let env = Env::new();
    let names = [
        "refs/heads/main",
        "refs/heads/a/b/c",
        "refs/tags/v1.0",
        "refs/heads/a@b",
        "refs/heads/ünïcode",
        "refs/../x",
        "refs/heads/a..b",
        "refs/heads/x.lock",
        "refs/heads/.x",
        "refs/heads/a/",
        "refs/heads/a.",
        "refs/heads//a",
        "refs/heads/a b",
        "refs/heads/a\tb",
        "refs/heads/a\x01b",
        "refs/heads/a~b",
        "refs/heads/a^b",
        "refs/heads/a:b",
        "refs/heads/a?b",
        "refs/heads/a*b",
        "refs/heads/a[b",
        "refs/heads/a\\b",
        "refs/heads/a@{b",
    ];
    for name in names {
        let out = env
            .cmd(env.root.path())
            .args(["check-ref-format", name])
            .output()
            .unwrap();
        let ours = git::validate_ref_name(name).is_ok();
        assert_eq!(ours, out.status.success(), "{name:?}");
    }
    for name in ["../../etc/passwd", "HEAD", "@", "main", ""] {
        assert!(git::validate_ref_name(name).is_err(), "{name:?}");
    }
}

#[test]
fn pack_objects_edge_cases() {
    let env = Env::new();
    let src = env.sample_repo();
    let git_dir = git::open_repo(&src).unwrap();
    let refs = git::read_refs(&git_dir).unwrap();
    let tips = refs.tips();

    let full = git::pack_objects(&git_dir, &tips, &[], false).unwrap();
    assert!(full.object_count > 0);
    assert_eq!(&full.bytes[..4], b"PACK");

    // Unknown excluded ids are ignored.
    let unknown: ObjectId = "0123456789abcdef0123456789abcdef01234567".parse().unwrap();
    let with_unknown =
        git::pack_objects(&git_dir, &tips, std::slice::from_ref(&unknown), true).unwrap();
    assert_eq!(with_unknown.object_count, full.object_count);

    // Nothing new gives an empty pack.
    let empty = git::pack_objects(&git_dir, &tips, &tips, true).unwrap();
    assert!(empty.is_empty());

    // An empty pack can still be indexed.
    let bare = env.path("bare.git");
    let bare_dir = git::init_bare(&bare).unwrap();
    git::index_pack(&bare_dir, &empty.bytes).unwrap();
    let name = git::index_pack(&bare_dir, &full.bytes).unwrap();
    assert!(bare.join(format!("objects/pack/pack-{name}.pack")).exists());
    assert!(git::has_object(&bare_dir, &tips[0]));
    assert!(!git::has_object(&bare_dir, &unknown));

    // Unknown included ids are an error with git's message.
    let err = git::pack_objects(&git_dir, &[unknown], &[], false).unwrap_err();
    match &err {
        GitError::CommandFailed { stderr, .. } => {
            assert!(stderr.contains("0123456789abcdef"), "{stderr}")
        }
        other => panic!("unexpected error {other}"),
    }
}

#[test]
fn apply_refs_is_exact_and_ancestry_works() {
    let env = Env::new();
    let src = env.sample_repo();
    let git_dir = git::open_repo(&src).unwrap();
    let refs = git::read_refs(&git_dir).unwrap();
    let pack = git::pack_objects(&git_dir, &refs.tips(), &[], false).unwrap();

    let bare = env.path("bare.git");
    let bare_dir = git::init_bare(&bare).unwrap();
    git::index_pack(&bare_dir, &pack.bytes).unwrap();
    git::apply_refs(&bare_dir, &refs).unwrap();
    assert_eq!(git::read_refs(&bare_dir).unwrap(), refs);

    let main = refs.refs["refs/heads/main"].clone();
    let dev = refs.refs["refs/heads/dev"].clone();
    assert!(git::is_ancestor(&bare_dir, &dev, &main).unwrap());
    assert!(!git::is_ancestor(&bare_dir, &main, &dev).unwrap());
    let missing: ObjectId = "0123456789abcdef0123456789abcdef01234567".parse().unwrap();
    assert!(git::is_ancestor(&bare_dir, &missing, &main).is_err());

    // Replace `dev` by `dev/x` (a directory/file swap), drop others,
    // detach HEAD.
    let mut next = RefSet {
        head: Some(Head::Detached(dev.clone())),
        refs: Default::default(),
    };
    next.refs.insert("refs/heads/main".into(), dev.clone());
    next.refs.insert("refs/heads/dev/x".into(), main.clone());
    git::apply_refs(&bare_dir, &next).unwrap();
    assert_eq!(git::read_refs(&bare_dir).unwrap(), next);

    // Invalid names are rejected before anything happens.
    let mut evil = next.clone();
    evil.refs
        .insert("refs/heads/../../HEAD".into(), main.clone());
    let err = git::apply_refs(&bare_dir, &evil).unwrap_err();
    assert!(matches!(err, GitError::InvalidRefName { .. }), "{err}");
    assert_eq!(git::read_refs(&bare_dir).unwrap(), next);

    // Pointing a ref at a missing object fails atomically.
    let mut broken = refs.clone();
    broken.refs.insert("refs/heads/broken".into(), missing);
    let err = git::apply_refs(&bare_dir, &broken).unwrap_err();
    assert!(matches!(err, GitError::MissingObject { .. }), "{err}");
    assert_eq!(git::read_refs(&bare_dir).unwrap().refs, next.refs);

    // A failing transaction after a directory/file swap restores the ref
    // deleted early (`refs/heads/dev/x` must come back).
    let mut clash = RefSet {
        head: None,
        refs: Default::default(),
    };
    clash.refs.insert("refs/heads/main".into(), main.clone());
    clash.refs.insert("refs/heads/dev".into(), main.clone());
    clash.refs.insert("refs/heads/n".into(), main.clone());
    clash.refs.insert("refs/heads/n/m".into(), main.clone());
    assert!(git::apply_refs(&bare_dir, &clash).is_err());
    assert_eq!(git::read_refs(&bare_dir).unwrap(), next);
}

#[test]
fn sha256_repository_round_trip() {
    let env = Env::new();
    let src = env.path("src256");
    fs::create_dir(&src).unwrap();
    env.git(&src, &["init", "-q", "--object-format=sha256"]);
    env.commit_file(&src, "a.txt", b"one\n", "one");
    env.git(&src, &["tag", "-a", "v1", "-m", "v1"]);
    let mut store = Store::default();
    let (first, _) = publish(&src, None, &mut store);
    assert_eq!(first.head_oid().unwrap().as_str().len(), 64);
    let dest = env.path("mat/src256.git");
    assert_eq!(store.materialize(&dest, &first).unwrap(), Outcome::Created);
    env.assert_same_repo(&src, &dest);

    env.commit_file(&src, "a.txt", b"one\ntwo\n", "two");
    let (second, pack) = publish(&src, Some(&first), &mut store);
    assert!(pack.is_some());
    assert_eq!(
        store.materialize(&dest, &second).unwrap(),
        Outcome::Updated { packs_indexed: 1 }
    );
    env.assert_same_repo(&src, &dest);
}

#[test]
fn fast_forward_check_with_real_history() {
    let env = Env::new();
    let src = env.sample_repo();
    let git_dir = git::open_repo(&src).unwrap();
    let old = git::read_refs(&git_dir).unwrap();

    env.commit_file(&src, "README", b"ahead\n", "ahead");
    env.git(&src, &["branch", "-f", "feature", "feature~1"]);
    env.git(&src, &["branch", "-D", "dev"]);
    env.git(&src, &["tag", "-f", "light", "HEAD"]);
    env.git(&src, &["branch", "fresh"]);
    let new = git::read_refs(&git_dir).unwrap();

    let non_ff = knotd::manifest::refs_fast_forward_check(&old, &new, |a, b| {
        git::is_ancestor(&git_dir, a, b).unwrap()
    });
    assert_eq!(
        non_ff,
        vec![
            "refs/heads/dev".to_owned(),
            "refs/heads/feature".to_owned(),
            "refs/tags/light".to_owned(),
        ]
    );
}

/// Run this test binary again for `test`, with `git` on `PATH` replaced by
/// a wrapper that logs every invocation's subcommand; returns the child's
/// output.
fn rerun_counting_git(test: &str, env: &Env) -> String {
    let real_git = std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join("git"))
                .find(|p| p.is_file())
        })
        .expect("git is on PATH");
    let bin = env.path("wrapped-bin");
    fs::create_dir_all(&bin).unwrap();
    let log = env.path("git-calls.log");
    let wrapper = bin.join("git");
    fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\n\
             for a in \"$@\"; do case \"$a\" in -*|*/*) ;; *) echo \"$a\" >> \"$KNOT_GIT_LOG\"; break;; esac; done\n\
             exec '{}' \"$@\"\n",
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
    let out = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--test-threads=1", "--nocapture"])
        .env("PATH", path)
        .env("KNOT_GIT_LOG", &log)
        .env("KNOT_COUNT_CHILD", env.root.path())
        .output()
        .unwrap();
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
    let env = Env {
        root: tempfile::tempdir_in(root).unwrap(),
    };
    fs::create_dir(env.path("home")).unwrap();
    let src = env.sample_repo();
    let head = env.git(&src, &["rev-parse", "HEAD"]).trim().to_owned();
    let mut input = String::new();
    for i in 0..refs {
        let kind = if i % 2 == 0 { "heads/b" } else { "tags/t" };
        input.push_str(&format!("create refs/{kind}{i} {head}\n"));
    }
    let mut child = env
        .cmd(&src)
        .args(["update-ref", "--stdin"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());

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
        assert!(big_mat.len() <= 10, "{big_mat:?}");
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
