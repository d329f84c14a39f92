//! Repository ids: `RepoId::parse`.
//!
//! An accepted id must split into its DID and name and recombine to the
//! input, and must map to a relative path of exactly two normal components
//! that cannot leave the directory it is joined to.

#![no_main]

use std::path::{Component, Path};

use knotd::repo_id::{MAX_DID_LEN, MAX_NAME_LEN, RepoId, validate_did};
use libfuzzer_sys::fuzz_target;

fn check(input: &str) {
    let id = match RepoId::parse(input) {
        Ok(id) => id,
        Err(e) => {
            let _ = e.to_string();
            assert!(input.parse::<RepoId>().is_err());
            assert!(serde_json::from_value::<RepoId>(serde_json::json!(input)).is_err());
            return;
        }
    };
    assert_eq!(id.as_str(), input);
    assert_eq!(id.to_string(), input);
    assert_eq!(format!("{}/{}", id.did(), id.name()), input);
    assert!(!id.did().contains('/'));
    assert!(!id.name().contains('/'));
    assert!(validate_did(id.did()).is_ok());
    assert!(id.did().len() <= MAX_DID_LEN);
    assert!(!id.name().is_empty() && id.name().len() <= MAX_NAME_LEN);
    assert!(!id.name().ends_with(".git") && !id.name().ends_with(".lock"));
    assert_eq!(id.topic_bytes(), *blake3::hash(input.as_bytes()).as_bytes());

    let path = id.relative_path();
    assert!(path.is_relative(), "{path:?} is not relative");
    assert!(!path.has_root(), "{path:?} has a root");
    let components: Vec<Component<'_>> = path.components().collect();
    for c in &components {
        assert!(
            matches!(c, Component::Normal(_)),
            "{path:?} has component {c:?}"
        );
    }
    assert_eq!(
        components,
        vec![
            Component::Normal(id.did().as_ref()),
            Component::Normal(format!("{}.git", id.name()).as_ref()),
        ],
        "{path:?} does not split into <did>/<name>.git"
    );
    let joined = Path::new("/data/repos").join(&path);
    assert!(joined.starts_with("/data/repos"));

    let json = serde_json::to_string(&id).expect("repo id serializes");
    let back: RepoId = serde_json::from_str(&json).expect("serialized repo id is rejected");
    assert_eq!(back, id);
    assert_eq!(input.parse::<RepoId>().as_ref(), Ok(&id));
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        check(text);
    } else {
        check(&String::from_utf8_lossy(data));
    }
});
