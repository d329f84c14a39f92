//! Git ref names and object ids from outside: `git::validate_ref_name` and
//! `ObjectId::from_str`.
//!
//! An accepted ref name must satisfy every rule the validator documents; an
//! accepted object id must be canonical lowercase hex of a known length.

#![no_main]

use knotd::git::{MAX_REF_NAME_LEN, ObjectFormat, ObjectId, validate_ref_name};
use libfuzzer_sys::fuzz_target;

fn check_ref_name(name: &str) {
    match validate_ref_name(name) {
        Ok(()) => {
            assert!(!name.is_empty() && name.len() <= MAX_REF_NAME_LEN);
            assert!(name.starts_with("refs/"));
            assert!(!name.ends_with('/') && !name.ends_with('.'));
            assert!(!name.contains("..") && !name.contains("@{"));
            assert!(!name.chars().any(|c| c.is_ascii_control()
                || matches!(c, ' ' | '~' | '^' | ':' | '?' | '*' | '[' | '\\')));
            for component in name.split('/') {
                assert!(!component.is_empty(), "empty component in {name:?}");
                assert!(!component.starts_with('.'), "dot component in {name:?}");
                assert!(!component.ends_with(".lock"), ".lock component in {name:?}");
            }
            assert!(
                std::path::Path::new(name)
                    .components()
                    .all(|c| matches!(c, std::path::Component::Normal(_))),
                "{name:?} escapes as a path"
            );
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

fn check_object_id(text: &str) {
    match text.parse::<ObjectId>() {
        Ok(id) => {
            assert_eq!(id.as_str(), text);
            assert_eq!(id.to_string(), text);
            assert!(
                text.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            );
            let expected = match text.len() {
                40 => ObjectFormat::Sha1,
                64 => ObjectFormat::Sha256,
                n => panic!("object id of length {n} accepted"),
            };
            assert_eq!(id.format(), expected);
            assert_eq!(id.format().raw_len() * 2, text.len());
            assert_eq!(id.is_null(), text.bytes().all(|b| b == b'0'));
            let json = serde_json::to_string(&id).expect("object id serializes");
            let back: ObjectId = serde_json::from_str(&json).expect("object id round trip");
            assert_eq!(back, id);
            assert_eq!(
                ObjectId::try_from(text.to_string()).ok().as_ref(),
                Some(&id)
            );
        }
        Err(e) => {
            let _ = e.to_string();
            assert!(ObjectId::try_from(text.to_string()).is_err());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    check_ref_name(&text);
    check_object_id(&text);
    if let Some(rest) = text.strip_prefix("refs/") {
        check_object_id(rest);
    } else {
        check_ref_name(&format!("refs/heads/{text}"));
    }
});
