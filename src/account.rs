//! The node's own ATProto account: who it is, and writing records back.
//!
//! Owns the configured credentials (identifier and app password), the
//! account's identity (its DID and PDS, resolved from the identifier without
//! sending any credential: a DID through its DID document, a handle through
//! its well-known address or a resolver service), and one session, reused,
//! refreshed when its token expires and created again only when refreshing
//! is refused. Credentials are sent to one host only, the account's own PDS,
//! over https (plain http only with `atproto.allow_insecure_http`, for
//! loopback tests), and only to write records of the account's own DID.
//!
//! A write-back reads the record, merges (the owner's edits win: its peers
//! and any field knotd does not own are kept; this node's hint is added;
//! head, manifest and seq are set) and writes with compare-and-swap on the
//! CID just read, again from the read on a conflict. A record naming a newer
//! state than the one to write is not overwritten. Nothing here survives a
//! restart: the session lives in memory.

use std::{
    fmt,
    path::Path,
    time::{Duration, Instant},
};

use serde_json::Value;
use tracing::{debug, info, warn};

use crate::{
    atproto::{AtprotoError, Session, Swap, XrpcClient},
    config::AtprotoConfig,
    record::{self, PeerHint, RecordError, RepoRecord},
    repo_id::RepoId,
};

/// How long a resolved identity is used before it is resolved again.
const IDENTITY_TTL: Duration = Duration::from_secs(3600);
/// Most read-merge-write rounds of one write-back before giving up for now.
const MAX_SWAP_ROUNDS: u32 = 5;

/// The environment variable holding the app password when no file is configured.
pub const PASSWORD_ENV: &str = "KNOTD_APP_PASSWORD";

/// `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Handle or DID to log in as.
    pub identifier: String,
    /// The app password.
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("identifier", &self.identifier)
            .field("password", &"[redacted]")
            .finish()
    }
}

impl Credentials {
    /// Credentials from an identifier and a password.
    pub fn new(identifier: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            identifier: identifier.into(),
            password: password.into(),
        }
    }

    /// Load the write-back credentials from the config: `None` when
    /// `atproto.identifier` is unset. The password comes from
    /// `atproto.app_password_file`, else from `KNOTD_APP_PASSWORD`.
    pub fn load(config: &AtprotoConfig) -> Result<Option<Credentials>, AtprotoError> {
        Self::load_with_env(config, std::env::var(PASSWORD_ENV).ok())
    }

    /// Like [`Credentials::load`], with the environment value given.
    pub fn load_with_env(
        config: &AtprotoConfig,
        env_password: Option<String>,
    ) -> Result<Option<Credentials>, AtprotoError> {
        let Some(identifier) = config
            .identifier
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
        else {
            return Ok(None);
        };
        let password = match &config.app_password_file {
            Some(path) => read_password_file(path)?,
            None => env_password
                .map(|p| p.trim_end_matches(['\r', '\n']).to_string())
                .filter(|p| !p.is_empty())
                .ok_or_else(|| AtprotoError::Credentials {
                    message: format!(
                        "atproto.identifier is set to {identifier:?} but no app password is configured; set atproto.app_password_file or the {PASSWORD_ENV} environment variable"
                    ),
                })?,
        };
        Ok(Some(Credentials::new(identifier, password)))
    }
}

fn read_password_file(path: &Path) -> Result<String, AtprotoError> {
    let text = std::fs::read_to_string(path).map_err(|e| AtprotoError::Credentials {
        message: format!(
            "cannot read atproto.app_password_file {}: {e}",
            path.display()
        ),
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                warn!(
                    path = %path.display(),
                    mode = format_args!("{mode:o}"),
                    "the app password file is readable by group or others; restrict it with chmod 600"
                );
            }
        }
    }
    let password = text.trim_end_matches(['\r', '\n']).to_string();
    if password.is_empty() {
        return Err(AtprotoError::Credentials {
            message: format!(
                "atproto.app_password_file {} is empty; put the app password in it",
                path.display()
            ),
        });
    }
    Ok(password)
}

/// The account's DID and PDS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The account's DID.
    pub did: String,
    /// Its PDS base URL.
    pub pds: String,
}

/// A state to write into a record of the account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteBackRequest {
    /// The repository.
    pub repo_id: RepoId,
    /// The record's collection.
    pub collection: String,
    /// The record key.
    pub rkey: String,
    /// Object id HEAD resolves to.
    pub head: Option<String>,
    /// The manifest hash (hex).
    pub manifest: String,
    /// The state's sequence number.
    pub seq: u64,
    /// This node's peer hint.
    pub own: PeerHint,
}

/// What a write-back did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The record now names the state (written, or it did already).
    Written(RepoRecord),
    /// The record names a newer state; it was left alone.
    Superseded(RepoRecord),
}

/// The record to write, decided from the one read.
#[derive(Debug, Clone, PartialEq)]
pub enum Merged {
    /// Write this JSON (it validates as this record).
    Write(Value, RepoRecord),
    /// The record already says all this; nothing to write.
    Current(RepoRecord),
    /// The record names a newer state.
    Superseded(RepoRecord),
}

/// Merge a write-back into the record as read (`None`: there is none).
/// The owner's edits win: the peers it lists (and only those, plus this
/// node) and every field knotd does not own are kept.
pub fn merge_for_write(
    current: Option<&Value>,
    req: &WriteBackRequest,
) -> Result<Merged, RecordError> {
    let mut value = match current {
        Some(Value::Object(map)) => map.clone(),
        _ => serde_json::Map::new(),
    };
    let existing = current.and_then(|v| RepoRecord::from_json(v.clone()).ok());
    if let Some(existing) = &existing
        && existing.repo_id == req.repo_id
        && existing.seq.is_some_and(|s| s > req.seq)
    {
        return Ok(Merged::Superseded(existing.clone()));
    }
    // The owner's peers, each kept if valid on its own.
    let peers: Vec<PeerHint> = value
        .get("peers")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(|p| serde_json::from_value::<PeerHint>(p.clone()).ok())
                .filter_map(|p| p.validate().ok())
                .collect()
        })
        .unwrap_or_default();
    let peers = record::merge_peers(peers, vec![req.own.clone()]);
    value.insert("$type".into(), Value::String(record::COLLECTION.into()));
    value.insert("repoId".into(), Value::String(req.repo_id.to_string()));
    value.remove("repo_id");
    match &req.head {
        Some(head) => value.insert("head".into(), Value::String(head.clone())),
        None => value.remove("head"),
    };
    value.insert("manifest".into(), Value::String(req.manifest.clone()));
    value.insert("seq".into(), Value::from(req.seq));
    value.insert(
        "peers".into(),
        serde_json::to_value(&peers).expect("hints serialize"),
    );
    let merged = Value::Object(value);
    let record = RepoRecord::from_json(merged.clone())?;
    if existing.as_ref() == Some(&record) {
        return Ok(Merged::Current(record));
    }
    Ok(Merged::Write(merged, record))
}

/// The node's account. See the module documentation.
pub struct Account {
    client: XrpcClient,
    credentials: Credentials,
    plc_directory: String,
    handle_resolver: String,
    allow_http: bool,
    identity: Option<(Identity, Instant)>,
    session: Option<Session>,
}

impl fmt::Debug for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Account")
            .field("identifier", &self.credentials.identifier)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl Account {
    /// The account that logs in with `credentials`, with `[atproto]` settings.
    pub fn new(client: XrpcClient, credentials: Credentials, config: &AtprotoConfig) -> Self {
        Self {
            client,
            credentials,
            plc_directory: config.plc_directory.clone(),
            handle_resolver: config.handle_resolver.clone(),
            allow_http: config.allow_insecure_http,
            identity: None,
            session: None,
        }
    }

    /// The configured identifier.
    pub fn identifier(&self) -> &str {
        &self.credentials.identifier
    }

    /// The account's DID and PDS, resolved without sending any credential
    /// and cached for an hour.
    pub async fn identity(&mut self) -> Result<Identity, AtprotoError> {
        if let Some((identity, at)) = &self.identity
            && at.elapsed() < IDENTITY_TTL
        {
            return Ok(identity.clone());
        }
        let identifier = self.credentials.identifier.trim();
        let did = if identifier.starts_with("did:") {
            identifier.to_string()
        } else {
            self.client
                .resolve_handle(identifier, &self.handle_resolver)
                .await?
        };
        let pds = self.client.resolve_pds(&self.plc_directory, &did).await?;
        if !self.allow_http && !pds.starts_with("https://") {
            return Err(AtprotoError::Credentials {
                message: format!(
                    "the PDS of {did} is {pds}, not https; credentials are only sent over https (set atproto.allow_insecure_http only for a PDS on loopback)"
                ),
            });
        }
        let identity = Identity { did, pds };
        if self.identity.as_ref().map(|(i, _)| i) != Some(&identity) {
            info!(did = %identity.did, pds = %identity.pds, "account resolved");
            self.session = None;
        }
        self.identity = Some((identity.clone(), Instant::now()));
        Ok(identity)
    }

    /// Write `req` into the account's record at `<collection>/<rkey>`. The
    /// repository must be the account's own.
    pub async fn write_back(
        &mut self,
        req: &WriteBackRequest,
    ) -> Result<WriteOutcome, AtprotoError> {
        let identity = self.identity().await?;
        if req.repo_id.did() != identity.did {
            return Err(AtprotoError::Credentials {
                message: format!(
                    "{} belongs to {}, but this node's account is {}; credentials are only used for the account's own records",
                    req.repo_id,
                    req.repo_id.did(),
                    identity.did
                ),
            });
        }
        let (pds, did) = (identity.pds.as_str(), identity.did.as_str());
        let mut renewed = false;
        for round in 1..=MAX_SWAP_ROUNDS {
            let current = match self
                .client
                .get_record(pds, did, &req.collection, &req.rkey)
                .await
            {
                Ok(fetched) => Some(fetched),
                Err(AtprotoError::NotFound { .. }) => None,
                Err(e) => return Err(e),
            };
            let swap = match current.as_ref().map(|f| f.cid.clone()) {
                Some(Some(cid)) => Swap::Cid(cid),
                None => Swap::Absent,
                Some(None) => {
                    return Err(AtprotoError::Malformed {
                        url: pds.to_string(),
                        message: "getRecord sent no CID, so the record cannot be updated safely"
                            .into(),
                    });
                }
            };
            let (value, record) = match merge_for_write(current.as_ref().map(|f| &f.value), req)? {
                Merged::Current(record) => return Ok(WriteOutcome::Written(record)),
                Merged::Superseded(record) => return Ok(WriteOutcome::Superseded(record)),
                Merged::Write(value, record) => (value, record),
            };
            let session = self.session(&identity).await?;
            match self
                .client
                .put_record(
                    pds,
                    &session,
                    did,
                    &req.collection,
                    &req.rkey,
                    &value,
                    &swap,
                )
                .await
            {
                Ok(_) => return Ok(WriteOutcome::Written(record)),
                Err(e) if e.xrpc_error() == Some("InvalidSwap") => {
                    debug!(repo = %req.repo_id, round, "the record changed meanwhile; reading it again");
                }
                Err(e) if e.is_token_rejected() && !renewed => {
                    debug!(error = %e, "session token rejected; renewing the session");
                    renewed = true;
                    self.renew(&identity, &session).await?;
                }
                Err(e) if e.is_token_rejected() => {
                    self.session = None;
                    return Err(AtprotoError::Auth {
                        message: format!("{pds} rejected a fresh session for {did}: {e}"),
                    });
                }
                Err(e) => return Err(e),
            }
        }
        Err(AtprotoError::Status {
            url: pds.to_string(),
            status: 409,
            error: Some("InvalidSwap".into()),
            message: Some(format!(
                "the record kept changing during {MAX_SWAP_ROUNDS} attempts to write it"
            )),
        })
    }

    async fn session(&mut self, identity: &Identity) -> Result<Session, AtprotoError> {
        if let Some(session) = &self.session {
            return Ok(session.clone());
        }
        self.login(identity).await
    }

    async fn login(&mut self, identity: &Identity) -> Result<Session, AtprotoError> {
        let session = self
            .client
            .create_session(
                &identity.pds,
                &self.credentials.identifier,
                &self.credentials.password,
            )
            .await?;
        self.accept(identity, session)
    }

    async fn renew(&mut self, identity: &Identity, old: &Session) -> Result<Session, AtprotoError> {
        self.session = None;
        match self.client.refresh_session(&identity.pds, old).await {
            Ok(fresh) => self.accept(identity, fresh),
            Err(e) => {
                debug!(error = %e, "session refresh refused; logging in again");
                self.login(identity).await
            }
        }
    }

    fn accept(&mut self, identity: &Identity, session: Session) -> Result<Session, AtprotoError> {
        if session.did != identity.did {
            return Err(AtprotoError::Credentials {
                message: format!(
                    "atproto.identifier {:?} logs in as {}, not {}; check the identifier",
                    self.credentials.identifier, session.did, identity.did
                ),
            });
        }
        self.session = Some(session.clone());
        Ok(session)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn debug_never_shows_secrets() {
        let creds = Credentials::new("alice.test", "hunter2-secret");
        let text = format!("{creds:?} {creds:#?}");
        assert!(!text.contains("hunter2-secret"), "{text}");
        assert!(text.contains("alice.test"));
        let session = Session {
            did: "did:plc:abc".into(),
            handle: "alice.test".into(),
            access_jwt: "eyJaccess.token".into(),
            refresh_jwt: "eyJrefresh.token".into(),
        };
        let text = format!("{session:?} {session:#?}");
        assert!(!text.contains("eyJ"), "{text}");
        let account = Account::new(
            XrpcClient::new(Duration::from_secs(1)),
            creds,
            &AtprotoConfig::default(),
        );
        assert!(!format!("{account:?}").contains("hunter2-secret"));
    }

    #[test]
    fn credentials_from_config() {
        let mut config = AtprotoConfig::default();
        assert_eq!(
            Credentials::load_with_env(&config, Some("x".into())).unwrap(),
            None
        );
        config.identifier = Some("alice.test".into());
        let err = Credentials::load_with_env(&config, None).unwrap_err();
        assert!(err.to_string().contains(PASSWORD_ENV), "{err}");
        let c = Credentials::load_with_env(&config, Some("env-pass\n".into()))
            .unwrap()
            .unwrap();
        assert_eq!(c.password, "env-pass");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "file-pass\n").unwrap();
        config.app_password_file = Some(path.clone());
        let c = Credentials::load_with_env(&config, Some("env-pass".into()))
            .unwrap()
            .unwrap();
        assert_eq!(c.password, "file-pass");
        std::fs::write(&path, "\n").unwrap();
        assert!(Credentials::load_with_env(&config, None).is_err());
        config.app_password_file = Some(dir.path().join("missing"));
        let err = Credentials::load_with_env(&config, None).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }

    fn request(seq: u64) -> WriteBackRequest {
        WriteBackRequest {
            repo_id: RepoId::parse("did:plc:owner/site").unwrap(),
            collection: record::COLLECTION.into(),
            rkey: "site".into(),
            head: Some("a".repeat(40)),
            manifest: "b".repeat(64),
            seq,
            own: PeerHint::new(
                iroh::SecretKey::from_bytes(&[1; 32]).public().to_string(),
                vec!["127.0.0.1:4919".into()],
                None,
            ),
        }
    }

    fn peer(n: u8) -> String {
        iroh::SecretKey::from_bytes(&[n; 32]).public().to_string()
    }

    #[test]
    fn a_write_back_keeps_the_owners_edits() {
        // No record yet: created with this node as its peer.
        let Merged::Write(value, record) = merge_for_write(None, &request(5)).unwrap() else {
            panic!()
        };
        assert_eq!(record.peers.len(), 1);
        assert_eq!(value["seq"], 5);
        // The owner lists another peer (and not one it removed), and a field
        // of its own: both kept, this node added.
        let current = serde_json::json!({
            "$type": "app.knot.repo",
            "repoId": "did:plc:owner/site",
            "manifest": "c".repeat(64),
            "seq": 4,
            "description": "my site",
            "peers": [{"nodeId": peer(2)}, {"nodeId": "not-a-key"}],
        });
        let Merged::Write(value, record) = merge_for_write(Some(&current), &request(5)).unwrap()
        else {
            panic!()
        };
        assert_eq!(value["description"], "my site");
        let ids: Vec<&str> = record.peers.iter().map(|p| p.node_id.as_str()).collect();
        assert!(ids.contains(&peer(2).as_str()) && ids.contains(&peer(1).as_str()));
        assert_eq!(ids.len(), 2, "the invalid peer is dropped: {ids:?}");
        assert_eq!(record.manifest.as_deref(), Some("b".repeat(64).as_str()));
        // Writing the same again changes nothing.
        assert!(matches!(
            merge_for_write(Some(&value), &request(5)).unwrap(),
            Merged::Current(_)
        ));
    }

    #[test]
    fn a_record_naming_a_newer_state_is_left_alone() {
        let current = serde_json::json!({
            "$type": "app.knot.repo",
            "repoId": "did:plc:owner/site",
            "manifest": "c".repeat(64),
            "seq": 9,
        });
        assert!(matches!(
            merge_for_write(Some(&current), &request(5)).unwrap(),
            Merged::Superseded(r) if r.seq == Some(9)
        ));
    }
}
