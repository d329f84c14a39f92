//! End-to-end tests of publishing and materializing with real git
//! repositories built in temporary directories.

mod git_env;

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use git_env::{Env, binary, text};
use knotd::git::{self, GitError, Head, ObjectId, RefSet};
use knotd::manifest::{Manifest, PackEntry};
use knotd::materialize::{self, MaterializeError, Outcome};

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

/// The sample repository, its refs and a pack of everything they reach.
fn sample_with_pack(env: &Env) -> (PathBuf, RefSet, git::Pack) {
    let src = env.sample_repo();
    let git_dir = git::open_repo(&src).unwrap();
    let refs = git::read_refs(&git_dir).unwrap();
    let pack = git::pack_objects(&git_dir, &refs.tips(), &[], false).unwrap();
    (src, refs, pack)
}

/// A new bare repository `name` holding `pack`, without refs.
fn bare_with(env: &Env, name: &str, pack: &git::Pack) -> PathBuf {
    let bare_dir = git::init_bare(&env.path(name)).unwrap();
    git::index_pack(&bare_dir, &pack.bytes).unwrap();
    bare_dir
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

/// A damaged object early in a large pack: `git index-pack` stops on it
/// and exits while most of the pack is still unread. The pack is reported
/// as corrupt (it is fetched again), not as a git failure, however far the
/// reader had got when git stopped.
#[test]
fn a_pack_git_stops_reading_early_is_reported_corrupt() {
    let env = Env::new();
    let src = env.path("big");
    fs::create_dir(&src).unwrap();
    env.git(&src, &["init", "-q"]);
    // Two megabyte-sized blobs, each stored rather than compressed: the
    // pack is far larger than a pipe's buffer.
    env.commit_file(&src, "a.bin", &binary(1 << 20, 1), "a");
    env.commit_file(&src, "b.bin", &binary(1 << 20, 2), "b");
    let mut store = Store::default();
    let (manifest, _) = publish(&src, None, &mut store);
    let entry = &manifest.packs[0];
    let mut bytes = store.blobs[&entry.hash].clone();
    assert!(bytes.len() > 2 << 20);
    // Inside the first blob's data: git finds it at that object's end, with
    // a megabyte of the pack still to come.
    let at = bytes.len() / 4;
    bytes[at] ^= 0x01;
    store.blobs.insert(entry.hash, bytes);
    let dest = env.path("mat/big.git");
    let err = store.materialize(&dest, &manifest).unwrap_err();
    assert!(
        matches!(&err, MaterializeError::CorruptPack { hash, .. } if *hash == entry.hash_hex()),
        "{err}"
    );
    assert!(!dest.exists());
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

/// An update whose second new pack cannot be read (its download failed
/// while the first was being indexed): the first new pack goes again, and
/// the repository holds exactly the previous state, packs included.
#[test]
fn a_failed_update_takes_back_the_packs_it_added() {
    let env = Env::new();
    let src = env.sample_repo();
    let mut store = Store::default();
    let (first, _) = publish(&src, None, &mut store);
    let dest = env.path("mat/sample.git");
    assert_eq!(store.materialize(&dest, &first).unwrap(), Outcome::Created);
    let first_hex = data_encoding::HEXLOWER.encode(&first.hash());
    assert!(materialize::holds_exactly(
        &dest,
        Some((&first_hex, first.packs.len()))
    ));

    env.commit_file(&src, "README", b"second\n", "second");
    let (second, _) = publish(&src, Some(&first), &mut store);
    env.commit_file(&src, "README", b"third\n", "third");
    let (third, _) = publish(&src, Some(&second), &mut store);
    assert_eq!(third.packs.len(), first.packs.len() + 2);
    let last = third.packs.last().unwrap().clone();
    let bytes = store.blobs.remove(&last.hash).unwrap();
    let err = store.materialize(&dest, &third).unwrap_err();
    assert!(
        matches!(err, MaterializeError::PackUnavailable { .. }),
        "{err}"
    );
    assert!(
        materialize::holds_exactly(&dest, Some((&first_hex, first.packs.len()))),
        "the repository holds the previous state's packs and no other"
    );

    // The pack arrives: the update goes through, both packs indexed.
    store.blobs.insert(last.hash, bytes);
    assert_eq!(
        store.materialize(&dest, &third).unwrap(),
        Outcome::Updated { packs_indexed: 2 }
    );
    env.assert_same_repo(&src, &dest);
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
    let (_, refs, pack) = sample_with_pack(&env);

    let bare_dir = bare_with(&env, "bare.git", &pack);
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

#[test]
fn a_new_repository_refuses_a_ref_below_another() {
    let env = Env::new();
    let (_, refs, pack) = sample_with_pack(&env);
    let bare_dir = bare_with(&env, "bare.git", &pack);
    let main = refs.refs["refs/heads/main"].clone();
    let mut clash = RefSet::default();
    clash.refs.insert("refs/heads/x".into(), main.clone());
    clash.refs.insert("refs/heads/x-y".into(), main.clone());
    clash.refs.insert("refs/heads/x/y".into(), main.clone());
    let err = git::apply_refs(&bare_dir, &clash).unwrap_err();
    assert!(matches!(err, GitError::InvalidRefName { .. }), "{err}");
    assert!(git::read_refs(&bare_dir).unwrap().refs.is_empty());
    // The same refs without the clash are written as packed-refs, peeled.
    clash.refs.remove("refs/heads/x/y");
    clash
        .refs
        .insert("refs/tags/v1.0".into(), refs.refs["refs/tags/v1.0"].clone());
    git::apply_refs(&bare_dir, &clash).unwrap();
    assert_eq!(git::read_refs(&bare_dir).unwrap().refs, clash.refs);
    let packed = fs::read_to_string(bare_dir.join("packed-refs")).unwrap();
    assert!(packed.starts_with("# pack-refs with: peeled fully-peeled sorted"));
    assert!(packed.contains(&format!("^{main}")), "{packed}");
    git::fsck(&bare_dir).unwrap();
}

#[test]
fn refs_written_into_a_new_repository_read_back_as_git_reads_them() {
    let env = Env::new();
    let (src, refs, pack) = sample_with_pack(&env);
    let main = refs.refs["refs/heads/main"].clone();

    // A symbolic HEAD, and the annotated tag peeled in packed-refs.
    let bare_dir = bare_with(&env, "new.git", &pack);
    git::apply_refs_to_new(&bare_dir, &refs).unwrap();
    assert_eq!(git::read_refs(&bare_dir).unwrap(), refs);
    assert_eq!(
        env.git(&bare_dir, &["rev-parse", "refs/tags/v1.0^{}"]),
        env.git(&src, &["rev-parse", "refs/tags/v1.0^{}"])
    );
    git::fsck(&bare_dir).unwrap();

    // A detached HEAD.
    let mut detached = refs.clone();
    detached.head = Some(Head::Detached(main.clone()));
    let bare_dir = bare_with(&env, "detached.git", &pack);
    git::apply_refs_to_new(&bare_dir, &detached).unwrap();
    assert_eq!(git::read_refs(&bare_dir).unwrap(), detached);

    // A missing target is refused before any ref is written.
    let mut broken = refs.clone();
    broken.refs.insert(
        "refs/heads/broken".into(),
        "0123456789abcdef0123456789abcdef01234567".parse().unwrap(),
    );
    let bare_dir = bare_with(&env, "broken.git", &pack);
    let err = git::apply_refs_to_new(&bare_dir, &broken).unwrap_err();
    assert!(matches!(err, GitError::MissingObject { .. }), "{err}");
    assert!(!bare_dir.join("packed-refs").exists());
    assert!(git::read_refs(&bare_dir).unwrap().refs.is_empty());
}

#[test]
fn only_repositories_past_a_megabyte_get_a_bitmap() {
    let env = Env::new();
    let mut store = Store::default();
    let bitmap = |dest: &Path| {
        fs::read_dir(dest.join("objects/pack"))
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".bitmap"))
    };
    let src = env.sample_repo();
    let (small, _) = publish(&src, None, &mut store);
    let dest = env.path("mat/small.git");
    store.materialize(&dest, &small).unwrap();
    materialize::optimize(&dest).unwrap();
    assert!(!bitmap(&dest), "a small repository got a bitmap");

    // Past the threshold (incompressible bytes), the index and bitmap come.
    let mut noise = vec![0u8; (materialize::OPTIMIZE_MIN_PACK_BYTES as usize) * 3 / 2];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for b in noise.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    env.commit_file(&src, "noise.bin", &noise, "noise");
    let (big, _) = publish(&src, Some(&small), &mut store);
    store.materialize(&dest, &big).unwrap();
    materialize::optimize(&dest).unwrap();
    assert!(
        bitmap(&dest),
        "a repository past the threshold has no bitmap"
    );
    // Once it has one, it is kept up to date whatever the size.
    env.commit_file(&src, "a.txt", b"later\n", "later");
    let (later, _) = publish(&src, Some(&big), &mut store);
    store.materialize(&dest, &later).unwrap();
    materialize::optimize(&dest).unwrap();
    assert!(bitmap(&dest));
    env.git(&dest, &["fsck", "--no-progress"]);
}
