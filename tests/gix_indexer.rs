//! The gix-pack indexer: `knotd index-pack`, which the node runs in a child
//! process for the first pack of a repository new to it, against real git
//! repositories and the real `git`. What it writes must be what `git
//! index-pack` writes; a pack missing an object must be refused as git
//! refuses it; a pack it cannot index goes to git; garbage leaves nothing.
//! `knotd check-connected` says a thin pack is connected only beside the
//! packs it builds on.

mod git_env;

use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use git_env::{Env, binary, text};
use knotd::git::{self, PackIndexer};
use knotd::manifest::{Manifest, PackEntry};
use knotd::materialize::{self, GIX_MIN_PACK_BYTES, MaterializeError, Outcome};

fn knotd() -> PathBuf {
    env!("CARGO_BIN_EXE_knotd").into()
}

fn gix() -> PackIndexer {
    PackIndexer::Gix { program: knotd() }
}

/// The sample repository with a 1.3 MB binary and a text file edited 20
/// times (deltas), so its one pack is over [`GIX_MIN_PACK_BYTES`].
fn big_repo(env: &Env) -> PathBuf {
    let repo = env.sample_repo();
    env.commit_file(&repo, "data/big.bin", &binary(1_300_000, 7), "big");
    for v in 1..20 {
        env.commit_file(&repo, "doc.txt", &text(3000, v), &format!("edit {v}"));
    }
    repo
}

/// A manifest of `src`'s refs with one pack of `bytes`.
fn manifest_of(src: &Path, bytes: &[u8]) -> Manifest {
    let git_dir = git::open_repo(src).unwrap();
    let refs = git::read_refs(&git_dir).unwrap();
    let objects = git::parse_pack_header(bytes).unwrap();
    Manifest {
        repo_id: "did:plc:test/gix".into(),
        refs,
        packs: vec![PackEntry::for_bytes(bytes, objects)],
    }
}

/// Everything `src`'s refs reach, as one pack.
fn full_pack(src: &Path) -> Vec<u8> {
    let git_dir = git::open_repo(src).unwrap();
    let refs = git::read_refs(&git_dir).unwrap();
    git::pack_objects(&git_dir, &refs.tips(), &[], false)
        .unwrap()
        .bytes
}

/// Materialize `manifest` at `dest` from `bytes` with `indexer`.
fn materialize_from(
    dest: &Path,
    manifest: &Manifest,
    bytes: &[u8],
    indexer: &PackIndexer,
) -> Result<Outcome, MaterializeError> {
    let mut load = |_: &PackEntry| -> Result<materialize::PackReader, MaterializeError> {
        Ok(Box::new(Cursor::new(bytes.to_vec())))
    };
    materialize::materialize_with(dest, manifest.hash(), manifest, &mut load, None, indexer)
}

fn files_with(dir: &Path, ext: &str) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect()
}

/// `git show-index` of the repository's one index: id, offset, CRC-32.
fn show_index(repo: &Path) -> String {
    let idx = files_with(&repo.join("objects/pack"), "idx");
    assert_eq!(idx.len(), 1, "one index in {}", repo.display());
    let out = Command::new("git")
        .arg("show-index")
        .stdin(std::fs::File::open(&idx[0]).unwrap())
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// `knotd index-pack` on `bytes` into a fresh directory: its exit status,
/// stdout, stderr and the files it left.
fn run_index_pack(bytes: &[u8]) -> (bool, String, String, Vec<PathBuf>) {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(knotd())
        .args(["index-pack", "--pack-dir"])
        .arg(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // The indexer may stop reading early; its status says why.
    let _ = stdin.write_all(bytes);
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let left = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        left,
    )
}

#[test]
fn a_new_repository_indexed_by_gix_pack_is_the_one_git_builds() {
    let env = Env::new();
    let src = big_repo(&env);
    let bytes = full_pack(&src);
    assert!(bytes.len() as u64 >= GIX_MIN_PACK_BYTES);
    let manifest = manifest_of(&src, &bytes);

    let by_gix = env.path("by-gix.git");
    let by_git = env.path("by-git.git");
    let before = materialize::indexing_counts();
    assert_eq!(
        materialize_from(&by_gix, &manifest, &bytes, &gix()).unwrap(),
        Outcome::Created
    );
    let after = materialize::indexing_counts();
    assert!(after.by_gix > before.by_gix, "{before:?} {after:?}");
    assert_eq!(
        materialize_from(&by_git, &manifest, &bytes, &PackIndexer::Git).unwrap(),
        Outcome::Created
    );
    env.assert_same_repo(&src, &by_gix);
    env.assert_same_repo(&src, &by_git);
    // The same objects at the same offsets with the same checksums.
    assert_eq!(show_index(&by_gix), show_index(&by_git));
    // gix-pack wrote it: git would have written a reverse index beside it,
    // and gix-pack's keep file is gone.
    let packs = by_gix.join("objects/pack");
    assert!(files_with(&packs, "rev").is_empty());
    assert!(files_with(&packs, "keep").is_empty());
    assert!(!files_with(&by_git.join("objects/pack"), "rev").is_empty());
    // And plain git clones it.
    let clone = env.path("clone");
    env.git(
        env.root.path(),
        &[
            "clone",
            "-q",
            "--mirror",
            by_gix.to_str().unwrap(),
            clone.to_str().unwrap(),
        ],
    );
    env.assert_same_repo(&src, &clone);

    let (ok, stdout, stderr, left) = run_index_pack(&bytes);
    assert!(ok, "knotd index-pack failed: {stderr}");
    let name = files_with(&packs, "pack")[0]
        .file_stem()
        .unwrap()
        .to_string_lossy()
        .trim_start_matches("pack-")
        .to_owned();
    assert_eq!(stdout, format!("pack\t{name}\tconnected\n"));
    assert_eq!(left.len(), 2, "a .pack and an .idx: {left:?}");
}

#[test]
fn a_pack_missing_an_object_is_refused_by_either_indexer() {
    let env = Env::new();
    let src = big_repo(&env);
    // Every object the refs reach but the first README's blob.
    let readme = env.git(&src, &["rev-parse", "HEAD~22:README"]);
    let readme = readme.trim();
    let bytes = pack_without(&env, &src, &["--all"], readme);
    assert!(bytes.len() as u64 >= GIX_MIN_PACK_BYTES);
    let manifest = manifest_of(&src, &bytes);

    let (ok, stdout, stderr, _) = run_index_pack(&bytes);
    assert!(ok, "knotd index-pack failed: {stderr}");
    assert!(stdout.ends_with("\tunconnected\n"), "{stdout}");

    for (name, indexer) in [("gix", gix()), ("git", PackIndexer::Git)] {
        let dest = env.path(&format!("{name}.git"));
        // gix-pack indexes it and says it is not connected, so git's walk
        // finds the hole; `git index-pack` refuses it outright.
        match (name, materialize_from(&dest, &manifest, &bytes, &indexer)) {
            ("gix", Err(MaterializeError::Incomplete(_))) => {}
            ("git", Err(MaterializeError::Git(e))) if e.to_string().contains(readme) => {}
            (_, other) => panic!("{name}: a pack missing {readme} gave {other:?}"),
        }
        assert!(
            !dest.exists(),
            "{name}: nothing is left at {}",
            dest.display()
        );
    }
}

#[test]
fn a_consolidated_state_is_indexed_by_gix_pack_and_replaces_the_old_packs() {
    let env = Env::new();
    let src = env.sample_repo();
    let old_pack = full_pack(&src);
    assert!((old_pack.len() as u64) < GIX_MIN_PACK_BYTES);
    let dest = env.path("dest.git");
    let old = manifest_of(&src, &old_pack);
    assert_eq!(
        materialize_from(&dest, &old, &old_pack, &gix()).unwrap(),
        Outcome::Created
    );
    let packs = dest.join("objects/pack");
    assert_eq!(
        files_with(&packs, "rev").len(),
        1,
        "git indexed the small pack"
    );

    // The next state arrives as one self-contained pack (a consolidation).
    env.commit_file(&src, "data/big.bin", &binary(1_300_000, 7), "big");
    let new_pack = full_pack(&src);
    assert!(new_pack.len() as u64 >= GIX_MIN_PACK_BYTES);
    let new = manifest_of(&src, &new_pack);
    assert_eq!(
        materialize_from(&dest, &new, &new_pack, &gix()).unwrap(),
        Outcome::Updated { packs_indexed: 1 }
    );
    env.assert_same_repo(&src, &dest);
    // The old pack is gone and the one left is gix-pack's (no reverse index).
    assert_eq!(files_with(&packs, "pack").len(), 1);
    assert!(files_with(&packs, "rev").is_empty());
    assert_eq!(
        show_index(&dest).lines().count(),
        new.packs[0].objects as usize
    );
}

#[test]
fn a_single_pack_without_the_tips_does_not_replace_the_old_packs() {
    let env = Env::new();
    let src = env.sample_repo();
    let old_pack = full_pack(&src);
    let dest = env.path("dest.git");
    let old = manifest_of(&src, &old_pack);
    assert_eq!(
        materialize_from(&dest, &old, &old_pack, &PackIndexer::Git).unwrap(),
        Outcome::Created
    );
    // The same refs, and one pack of one new blob: it names nothing
    // outside itself, but the refs' objects are all in the old pack.
    let stray = env.git_stdin(&src, &["hash-object", "-w", "--stdin"], b"stray\n");
    let stray = String::from_utf8(stray).unwrap();
    let bytes = env.git_stdin(&src, &["pack-objects", "--stdout", "-q"], stray.as_bytes());
    let new = manifest_of(&src, &bytes);
    assert_eq!(new.refs, old.refs);
    assert_eq!(
        materialize_from(&dest, &new, &bytes, &PackIndexer::Git).unwrap(),
        Outcome::Updated { packs_indexed: 1 }
    );
    env.assert_same_repo(&src, &dest);
    assert_eq!(files_with(&dest.join("objects/pack"), "pack").len(), 2);
}

#[test]
fn a_name_of_the_wrong_kind_is_not_connected() {
    let env = Env::new();
    let src = big_repo(&env);
    let blob = env.git(&src, &["rev-parse", "HEAD:README"]);
    let blob = blob.trim();
    let raw_id = |hex: &str| -> Vec<u8> {
        (0..20)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
            .collect()
    };
    let write = |kind: &str, content: &[u8]| -> String {
        let id = env.git_stdin(
            &src,
            &["hash-object", "-t", kind, "-w", "--stdin", "--literally"],
            content,
        );
        String::from_utf8(id).unwrap().trim().to_owned()
    };
    let signature = "author a <a@b> 1 +0000\ncommitter a <a@b> 1 +0000\n\nbad\n";
    // A commit whose tree is a blob, in one pack with everything else.
    let commit = write("commit", format!("tree {blob}\n{signature}").as_bytes());
    let mut ids = env.git(&src, &["rev-list", "--objects", "--all"]);
    ids.push_str(&format!("{commit}\n"));
    let ids: String = ids
        .lines()
        .map(|l| format!("{}\n", l.split(' ').next().unwrap()))
        .collect();
    let bytes = env.git_stdin(&src, &["pack-objects", "--stdout", "-q"], ids.as_bytes());
    let (ok, stdout, stderr, _) = run_index_pack(&bytes);
    assert!(ok, "{stderr}");
    assert!(
        stdout.ends_with("\tunconnected\n"),
        "a commit whose tree is a blob: {stdout}"
    );

    // A later pack whose tree names an earlier pack's blob as a directory.
    let mut tree = b"40000 dir\0".to_vec();
    tree.extend_from_slice(&raw_id(blob));
    let tree = write("tree", &tree);
    let commit = write("commit", format!("tree {tree}\n{signature}").as_bytes());
    let later = env.git_stdin(
        &src,
        &["pack-objects", "--stdout", "-q"],
        format!("{tree}\n{commit}\n").as_bytes(),
    );
    let repo = git::init_bare(&env.path("kinds.git")).unwrap();
    git::index_pack(&repo, &full_pack(&src)).unwrap();
    let name = add_unchecked(&env, &repo, &later);
    let (ok, stdout, stderr) = check_connected(&repo.join("objects/pack"), &name);
    assert!(ok, "{stderr}");
    assert_eq!(stdout, format!("pack\t{name}\tunconnected\n"));
}

/// Put `pack` into the repository at `repo` with `git index-pack` of a
/// file, without the existence check that the node's
/// `--check-self-contained-and-connected` implies in this git; returns its
/// name.
fn add_unchecked(env: &Env, repo: &Path, pack: &[u8]) -> String {
    let name: String = pack[pack.len() - 20..]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let file = repo.join(format!("objects/pack/pack-{name}.pack"));
    std::fs::write(&file, pack).unwrap();
    env.git(repo, &["index-pack", file.to_str().unwrap()]);
    name
}

/// Run `knotd check-connected` on `pack` in `pack_dir`.
fn check_connected(pack_dir: &Path, pack: &str) -> (bool, String, String) {
    let out = Command::new(knotd())
        .args(["check-connected", "--pack-dir"])
        .arg(pack_dir)
        .args(["--pack", pack])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_thin_pack_is_connected_only_beside_the_packs_it_builds_on() {
    let env = Env::new();
    let src = big_repo(&env);
    let git_dir = git::open_repo(&src).unwrap();
    let id =
        |rev: &str| -> git::ObjectId { env.git(&src, &["rev-parse", rev]).trim().parse().unwrap() };
    let (base, head) = (id("HEAD~5"), id("HEAD"));
    let first = git::pack_objects(&git_dir, std::slice::from_ref(&base), &[], false)
        .unwrap()
        .bytes;
    let thin = git::pack_objects(&git_dir, &[head], &[base], true)
        .unwrap()
        .bytes;

    // Both packs in one repository: the thin one, completed by git, names
    // only objects the two hold.
    let repo = git::init_bare(&env.path("both.git")).unwrap();
    git::index_pack(&repo, &first).unwrap();
    let thin_name = git::index_pack(&repo, &thin).unwrap();
    let packs = repo.join("objects/pack");
    let (ok, stdout, stderr) = check_connected(&packs, &thin_name);
    assert!(ok, "{stderr}");
    assert_eq!(stdout, format!("pack\t{thin_name}\tconnected\n"));

    // Alone, it names commits and trees of the first.
    let alone = env.path("alone");
    std::fs::create_dir(&alone).unwrap();
    for ext in ["pack", "idx"] {
        let file = format!("pack-{thin_name}.{ext}");
        std::fs::copy(packs.join(&file), alone.join(&file)).unwrap();
    }
    let (ok, stdout, stderr) = check_connected(&alone, &thin_name);
    assert!(ok, "{stderr}");
    assert_eq!(stdout, format!("pack\t{thin_name}\tunconnected\n"));

    // The new objects but one of the new blobs, beside the first pack.
    let blob = env.git(&src, &["rev-parse", "HEAD:doc.txt"]);
    let holed = pack_without(&env, &src, &["HEAD", "^HEAD~5"], blob.trim());
    let repo = git::init_bare(&env.path("holed.git")).unwrap();
    git::index_pack(&repo, &first).unwrap();
    let holed_name = add_unchecked(&env, &repo, &holed);
    let (ok, stdout, stderr) = check_connected(&repo.join("objects/pack"), &holed_name);
    assert!(ok, "{stderr}");
    assert_eq!(stdout, format!("pack\t{holed_name}\tunconnected\n"));

    // A name that is not a pack's is refused, not followed.
    for name in ["../../etc/passwd", "", "x"] {
        let (ok, stdout, _) = check_connected(&packs, name);
        assert!(!ok && stdout.is_empty(), "{name:?} gave {stdout}");
    }
}

/// The objects of `src` that `revs` reach (as `git rev-list` takes them)
/// but `left_out`, as one pack.
fn pack_without(env: &Env, src: &Path, revs: &[&str], left_out: &str) -> Vec<u8> {
    let mut args = vec!["rev-list", "--objects"];
    args.extend_from_slice(revs);
    let listing = env.git(src, &args);
    assert!(
        listing.contains(left_out),
        "{left_out} is not among {revs:?}"
    );
    let ids: String = listing
        .lines()
        .map(|l| l.split(' ').next().unwrap())
        .filter(|id| *id != left_out)
        .map(|id| format!("{id}\n"))
        .collect();
    env.git_stdin(src, &["pack-objects", "--stdout", "-q"], ids.as_bytes())
}

#[test]
fn a_pack_missing_a_tree_or_a_commit_is_not_connected() {
    let env = Env::new();
    let src = big_repo(&env);
    // The pass decodes only chains whose base is a commit, tree or tag; the
    // trees here are stored as deltas of one another, so it must follow
    // delta chains to find what they name.
    let whole = full_pack(&src);
    let dir = tempfile::tempdir().unwrap();
    let pack = dir.path().join("p.pack");
    std::fs::write(&pack, &whole).unwrap();
    env.git(dir.path(), &["index-pack", pack.to_str().unwrap()]);
    let verify = env.git(dir.path(), &["verify-pack", "-v", pack.to_str().unwrap()]);
    assert!(
        verify
            .lines()
            .any(|l| l.contains(" tree ") && l.split_whitespace().count() == 7),
        "no tree stored as a delta:\n{verify}"
    );
    let (ok, stdout, stderr, _) = run_index_pack(&whole);
    assert!(ok && stdout.ends_with("\tconnected\n"), "{stdout} {stderr}");

    for what in [
        "HEAD~12^{tree}",
        "HEAD~12:data",
        "HEAD~12",
        "HEAD~21:README",
    ] {
        let id = env.git(&src, &["rev-parse", what]);
        let (ok, stdout, stderr, _) =
            run_index_pack(&pack_without(&env, &src, &["--all"], id.trim()));
        assert!(ok, "knotd index-pack failed: {stderr}");
        assert!(
            stdout.ends_with("\tunconnected\n"),
            "a pack without {what} ({}) gave {stdout}",
            id.trim()
        );
    }
}

#[test]
fn a_pack_gix_pack_cannot_index_goes_to_git_and_wrong_bytes_to_nobody() {
    let env = Env::new();
    let src = big_repo(&env);
    let bytes = full_pack(&src);
    let manifest = manifest_of(&src, &bytes);

    // An indexer program that fails: git indexes the pack instead.
    let failing = PackIndexer::Gix {
        program: "/bin/false".into(),
    };
    let dest = env.path("fallback.git");
    let before = materialize::indexing_counts();
    assert_eq!(
        materialize_from(&dest, &manifest, &bytes, &failing).unwrap(),
        Outcome::Created
    );
    // Counted for the metrics endpoint (other tests count alongside).
    let after = materialize::indexing_counts();
    assert!(
        after.gix_refused > before.gix_refused,
        "{before:?} {after:?}"
    );
    assert!(after.by_git > before.by_git, "{before:?} {after:?}");
    env.assert_same_repo(&src, &dest);
    assert!(!files_with(&dest.join("objects/pack"), "rev").is_empty());
    // What that fallback logs names the indexer, not git, and the way out.
    let bare = git::init_bare(&env.path("bare.git")).unwrap();
    match git::index_pack_from_with(&bare, &mut &bytes[..], &failing) {
        Err(e @ git::GitError::IndexerFailed { .. }) => {
            let text = e.to_string();
            assert!(text.starts_with("`/bin/false index-pack` failed"), "{text}");
            assert!(text.contains("pack_indexer = \"git\""), "{text}");
        }
        other => panic!("a failing indexer gave {other:?}"),
    }

    // Bytes that are not the manifest's: refused before either indexer
    // could take them, and not given to git a second time.
    let mut wrong = bytes.clone();
    let middle = wrong.len() / 2;
    wrong[middle] ^= 0x55;
    let dest = env.path("wrong.git");
    match materialize_from(&dest, &manifest, &wrong, &gix()) {
        Err(MaterializeError::CorruptPack { .. }) => {}
        other => panic!("wrong bytes gave {other:?}"),
    }
    assert!(!dest.exists());

    // A damaged pack that the manifest names as it is (its author
    // published it so): gix-pack refuses it, and so does git after it.
    let damaged = manifest_of(&src, &wrong);
    let dest = env.path("damaged.git");
    match materialize_from(&dest, &damaged, &wrong, &gix()) {
        Err(MaterializeError::Git(_)) => {}
        other => panic!("a damaged pack gave {other:?}"),
    }
    assert!(!dest.exists());
}

#[test]
fn knotd_index_pack_refuses_what_is_not_a_whole_pack_and_leaves_nothing() {
    let env = Env::new();
    let src = big_repo(&env);
    let bytes = full_pack(&src);
    let half = &bytes[..bytes.len() / 2];
    let mut bad_count = bytes.clone();
    bad_count[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
    let cases: [(&str, &[u8]); 5] = [
        ("empty", b""),
        ("text", b"this is not a pack\n"),
        ("header only", b"PACK\0\0\0\x02\0\0\0\x05"),
        ("truncated", half),
        ("object count of 4 billion", &bad_count),
    ];
    for (name, input) in cases {
        let (ok, stdout, stderr, left) = run_index_pack(input);
        assert!(!ok, "{name}: accepted, printing {stdout:?}");
        assert!(stdout.is_empty(), "{name}: {stdout:?}");
        assert!(
            stderr.contains("gix-pack could not index the pack"),
            "{name}: {stderr}"
        );
        assert!(left.is_empty(), "{name}: left {left:?}");
    }
}
