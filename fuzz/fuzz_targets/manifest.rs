//! Manifest blobs: `Manifest::from_bytes` and `Manifest::to_bytes`.
//!
//! Raw mode decodes the input as a blob fetched from a peer; anything accepted
//! must re-encode to a blob that decodes to an equal manifest. Structured mode
//! builds a manifest from the input and checks that encoding then decoding
//! accepts it exactly when `validate` does.

#![no_main]

use std::collections::BTreeMap;

use arbitrary::{Arbitrary, Unstructured};
use knotd::git::{Head, ObjectId, RefSet};
use knotd::manifest::{MANIFEST_MAGIC, MAX_PACKS, MAX_REFS, MAX_REPO_ID_LEN, Manifest, PackEntry};
use libfuzzer_sys::fuzz_target;

fn check_accepted(m: &Manifest) {
    assert!(!m.repo_id.is_empty() && m.repo_id.len() <= MAX_REPO_ID_LEN);
    assert!(m.refs.refs.len() <= MAX_REFS);
    assert!(m.packs.len() <= MAX_PACKS);
    assert!(m.validate().is_ok());
    let _ = m.head_oid();
    let _ = m.refs.tips();
    let bytes = m.to_bytes();
    assert!(bytes.starts_with(MANIFEST_MAGIC));
    let back = Manifest::from_bytes(&bytes).expect("re-encoded manifest is rejected");
    assert_eq!(&back, m);
    assert_eq!(back.to_bytes(), bytes, "encoding is not deterministic");
    assert_eq!(m.hash(), *blake3::hash(&bytes).as_bytes());
}

fn raw(bytes: &[u8]) {
    match Manifest::from_bytes(bytes) {
        Ok(m) => check_accepted(&m),
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Oid {
    Sha1([u8; 20]),
    Sha256([u8; 32]),
}

impl Oid {
    fn object_id(&self) -> ObjectId {
        let hex: String = match self {
            Oid::Sha1(b) => b.iter().map(|b| format!("{b:02x}")).collect(),
            Oid::Sha256(b) => b.iter().map(|b| format!("{b:02x}")).collect(),
        };
        hex.parse().expect("hex object id")
    }
}

#[derive(Arbitrary, Debug)]
enum HeadChoice {
    Symbolic(String),
    Branch(String),
    Detached(Oid),
}

#[derive(Arbitrary, Debug)]
struct Input {
    repo_id: String,
    head: Option<HeadChoice>,
    refs: Vec<(bool, String, Oid)>,
    packs: Vec<([u8; 32], u64, u32)>,
}

fn structured(bytes: &[u8]) {
    let Ok(input) = Input::arbitrary(&mut Unstructured::new(bytes)) else {
        return;
    };
    let refs: BTreeMap<String, ObjectId> = input
        .refs
        .iter()
        .map(|(prefixed, name, oid)| {
            let name = if *prefixed {
                format!("refs/heads/{name}")
            } else {
                name.clone()
            };
            (name, oid.object_id())
        })
        .collect();
    let head = input.head.as_ref().map(|h| match h {
        HeadChoice::Symbolic(s) => Head::Symbolic(s.clone()),
        HeadChoice::Branch(s) => Head::Symbolic(format!("refs/heads/{s}")),
        HeadChoice::Detached(oid) => Head::Detached(oid.object_id()),
    });
    let manifest = Manifest {
        repo_id: input.repo_id,
        refs: RefSet { head, refs },
        packs: input
            .packs
            .iter()
            .map(|&(hash, size, objects)| PackEntry {
                hash,
                size,
                objects,
            })
            .collect(),
    };
    let bytes = manifest.to_bytes();
    match (manifest.validate(), Manifest::from_bytes(&bytes)) {
        (Ok(()), Ok(back)) => {
            assert_eq!(back, manifest);
            check_accepted(&back);
        }
        (Ok(()), Err(e)) => panic!("valid manifest rejected after encoding: {e}"),
        (Err(e), Ok(_)) => panic!("invalid manifest accepted after encoding: {e}"),
        (Err(_), Err(e)) => {
            let _ = e.to_string();
        }
    }
    for pack in &manifest.packs {
        assert_eq!(pack.hash_hex().len(), 64);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        raw(rest);
    } else {
        structured(rest);
    }
});
