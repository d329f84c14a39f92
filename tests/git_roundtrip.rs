//! End-to-end tests of publishing and materializing with real git
//! repositories built in temporary directories.

mod git_env;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use git_env::store::{Store, publish};
use git_env::{Env, binary, text};
use knotd::git::{self, Head, ObjectId};
use knotd::materialize::{self, MaterializeError, Outcome};

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
