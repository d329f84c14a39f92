//! Repository identity: `repo_id` = `<did>/<name>`.
//!
//! Owns the validation of repository ids that arrive from operators, records and
//! peers, and the mapping from an id to a path under the data directory. A valid
//! id can never name a path outside that directory: the DID part has no `/` and
//! cannot be `.` or `..`, and the name uses a small safe character set.

use std::{fmt, path::PathBuf, str::FromStr};

use serde::{Deserialize, Serialize};

/// Longest DID accepted (the DID specification's practical limit).
pub const MAX_DID_LEN: usize = 2048;
/// Longest repository name accepted.
pub const MAX_NAME_LEN: usize = 100;

/// Why a string is not a valid repository id.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RepoIdError {
    /// No `/` between the DID and the name.
    #[error("repo id {0:?} must have the form <did>/<name>, e.g. did:plc:abc123/website")]
    MissingSlash(String),
    /// The DID part is not DID syntax.
    #[error("repo id {id:?}: {reason}")]
    BadDid {
        /// The offending input.
        id: String,
        /// What is wrong with the DID.
        reason: &'static str,
    },
    /// The name part is empty or uses characters outside the safe set.
    #[error(
        "repo id {id:?}: name {reason}; names use letters, digits, '.', '_' and '-', start with a letter or digit, and are at most 100 characters"
    )]
    BadName {
        /// The offending input.
        id: String,
        /// What is wrong with the name.
        reason: &'static str,
    },
}

/// A validated repository id, `<did>/<name>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RepoId {
    id: String,
    slash: usize,
}

impl RepoId {
    /// Parse and validate a repository id.
    pub fn parse(input: &str) -> Result<Self, RepoIdError> {
        let slash = input
            .find('/')
            .ok_or_else(|| RepoIdError::MissingSlash(input.to_string()))?;
        let (did, name) = (&input[..slash], &input[slash + 1..]);
        validate_did(did).map_err(|reason| RepoIdError::BadDid {
            id: input.to_string(),
            reason,
        })?;
        validate_name(name).map_err(|reason| RepoIdError::BadName {
            id: input.to_string(),
            reason,
        })?;
        Ok(Self {
            id: input.to_string(),
            slash,
        })
    }

    /// The owner's DID, e.g. `did:plc:abc123`.
    pub fn did(&self) -> &str {
        &self.id[..self.slash]
    }

    /// The repository name, e.g. `website`.
    pub fn name(&self) -> &str {
        &self.id[self.slash + 1..]
    }

    /// The full id as a string.
    pub fn as_str(&self) -> &str {
        &self.id
    }

    /// The gossip topic of this repository: BLAKE3 of the id.
    pub fn topic_bytes(&self) -> [u8; 32] {
        *blake3::hash(self.id.as_bytes()).as_bytes()
    }

    /// Relative path of this repository's materialized bare repository
    /// (`<did>/<name>.git`); always stays inside the directory it is joined to.
    pub fn relative_path(&self) -> PathBuf {
        PathBuf::from(self.did()).join(format!("{}.git", self.name()))
    }
}

impl fmt::Display for RepoId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

impl FromStr for RepoId {
    type Err = RepoIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for RepoId {
    type Error = RepoIdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<RepoId> for String {
    fn from(id: RepoId) -> String {
        id.id
    }
}

/// Check DID syntax: `did:<method>:<method-specific-id>`, where the method is
/// lowercase letters and digits and the id uses `[A-Za-z0-9._:%-]`, not ending in `:`.
pub fn validate_did(did: &str) -> Result<(), &'static str> {
    if did.len() > MAX_DID_LEN {
        return Err("DID is longer than 2048 characters");
    }
    let rest = did
        .strip_prefix("did:")
        .ok_or("DID must start with \"did:\"")?;
    let (method, msid) = rest
        .split_once(':')
        .ok_or("DID must have the form did:<method>:<id>")?;
    if method.is_empty()
        || !method
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return Err("DID method must be lowercase letters and digits");
    }
    if msid.is_empty() {
        return Err("DID has an empty method-specific id");
    }
    if !msid
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'%' | b'-'))
    {
        return Err("DID contains a character outside [A-Za-z0-9._:%-]");
    }
    if msid.ends_with(':') || msid.ends_with('%') {
        return Err("DID must not end with ':' or '%'");
    }
    Ok(())
}

fn validate_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return Err("is too long");
    }
    if !name.as_bytes()[0].is_ascii_alphanumeric() {
        return Err("must start with a letter or digit");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err("contains a character outside the safe set");
    }
    if name.ends_with(".lock") || name.ends_with(".git") {
        return Err("must not end with .lock or .git");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_ids() {
        for ok in [
            "did:plc:abc123/website",
            "did:web:example.com/my-repo_2.0",
            "did:plc:z72i7hdynmk6r22z27h6tvur/knot",
            "did:key:z6Mk%3Aa/x",
        ] {
            let id = RepoId::parse(ok).unwrap();
            assert_eq!(id.as_str(), ok);
        }
        let id = RepoId::parse("did:plc:abc123/website").unwrap();
        assert_eq!(id.did(), "did:plc:abc123");
        assert_eq!(id.name(), "website");
        assert_eq!(
            id.relative_path(),
            PathBuf::from("did:plc:abc123/website.git")
        );
        assert_eq!(
            id.topic_bytes(),
            *blake3::hash(b"did:plc:abc123/website").as_bytes()
        );
    }

    #[test]
    fn rejects_bad_ids() {
        for bad in [
            "",
            "website",
            "/website",
            "did:plc:abc/",
            "did:plc:abc/../etc",
            "did:plc:abc/..",
            "did:plc:abc/.hidden",
            "did:plc:abc/a/b",
            "did:plc:abc/a b",
            "did:plc:abc/a\nb",
            "did:plc:abc/x.lock",
            "did:plc:abc/x.git",
            "did:PLC:abc/x",
            "did::abc/x",
            "did:plc:/x",
            "did:plc:abc:/x",
            "DID:plc:abc/x",
            "plc:abc/x",
            "../did:plc:abc/x",
            "did:plc:a\\b/x",
        ] {
            assert!(RepoId::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        let long = format!("did:plc:abc/{}", "a".repeat(101));
        assert!(RepoId::parse(&long).is_err());
    }

    #[test]
    fn error_text_says_what_to_do() {
        let e = RepoId::parse("website").unwrap_err().to_string();
        assert!(e.contains("<did>/<name>"), "{e}");
    }

    #[test]
    fn serde_validates() {
        let ok: RepoId = serde_json::from_str("\"did:plc:a/b\"").unwrap();
        assert_eq!(ok.name(), "b");
        assert!(serde_json::from_str::<RepoId>("\"did:plc:a/../b\"").is_err());
    }
}
