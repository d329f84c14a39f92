//! The git module against the real `git`: repositories it refuses, ref
//! name rules, pack edge cases, applying refs and ancestry, SHA-256, the
//! fast-forward check, refs of a new repository and when a bitmap is
//! written.

mod git_env;

use std::fs;
use std::path::Path;

use git_env::Env;
use git_env::store::{Store, bare_with, publish, sample_with_pack};
use knotd::git::{self, GitError, Head, ObjectId, RefSet};
use knotd::materialize::{self, Outcome};

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
