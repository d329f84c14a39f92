//! One-shot ATProto reads for the core's schedule: a repository's record
//! ([`Reader::poll_record`]) and a followed identity's listing
//! ([`Reader::list_identity`]). When to read, how often, and what a
//! result means are the core's ([`crate::core::schedule`]); this module
//! only reads and sorts what it got into the outcomes the core takes.
//!
//! Owns a cache of the PDS address each DID document names (reused for
//! [`PDS_TTL`], forgotten when a read through it fails, at most
//! [`PDS_CACHE_MAX`] entries). It runs no task of its own: the actor runs
//! each read on a child task. Nothing here survives a restart.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tracing::{debug, warn};

use crate::{
    atproto::{AtprotoError, XrpcClient, check_locator, fetch_repo_record_at},
    core::RecordPoll,
    record::{COLLECTION, ListedRecord, RepoRecord},
    repo_id::RepoId,
    state::Locator,
};

/// Most pages (of up to 100 records) read per listing.
pub const MAX_PAGES: usize = 50;
/// How long a PDS address resolved from a DID document is reused.
pub const PDS_TTL: Duration = Duration::from_secs(3600);
/// Most DIDs whose PDS address is remembered.
pub const PDS_CACHE_MAX: usize = 100_000;

/// What a listing found: its records and whether that is all of them (not
/// cut at [`MAX_PAGES`]), or why it failed.
pub type ListingResult = Result<(Vec<ListedRecord>, bool), String>;

/// Reads records and listings. Cheap to clone; clones share the cache.
#[derive(Debug, Clone)]
pub struct Reader {
    client: XrpcClient,
    plc_directory: String,
    pds: Arc<Mutex<HashMap<String, (String, Instant)>>>,
}

impl Reader {
    /// A reader resolving DIDs through `plc_directory`.
    pub fn new(client: XrpcClient, plc_directory: String) -> Self {
        Self {
            client,
            plc_directory,
            pds: Arc::default(),
        }
    }

    /// Read `repo_id`'s record at `locator` once. Returns what it found and
    /// how long a rate-limiting PDS asked to wait.
    pub async fn poll_record(
        &self,
        repo_id: &RepoId,
        locator: &Locator,
    ) -> (RecordPoll, Option<Duration>) {
        let result = self.fetch_record(repo_id, locator).await;
        let retry_after = result.as_ref().err().and_then(AtprotoError::retry_after);
        match &result {
            Ok(record) => debug!(repo = %repo_id, manifest = ?record.manifest, "record read"),
            Err(e) => warn!(repo = %repo_id, error = %e, "reading the record failed"),
        }
        (classify(result), retry_after)
    }

    /// List every `app.knot.repo` record of `did` once, page by page.
    pub async fn list_identity(&self, did: &str) -> (ListingResult, Option<Duration>) {
        let result = self.list_all(did).await;
        let retry_after = result.as_ref().err().and_then(AtprotoError::retry_after);
        match &result {
            Ok((records, _)) => debug!(%did, records = records.len(), "identity listed"),
            Err(e) => warn!(%did, error = %e, "listing a followed identity failed"),
        }
        (result.map_err(|e| e.to_string()), retry_after)
    }

    async fn fetch_record(
        &self,
        repo_id: &RepoId,
        locator: &Locator,
    ) -> Result<RepoRecord, AtprotoError> {
        check_locator(locator, repo_id)?;
        let pds = match &locator.pds {
            Some(pds) => pds.clone(),
            None => self.pds_of(&locator.did).await?,
        };
        let result = fetch_repo_record_at(&self.client, &pds, locator, repo_id).await;
        if result.is_err() && locator.pds.is_none() {
            self.forget_pds(&locator.did);
        }
        result
    }

    async fn list_all(&self, did: &str) -> Result<(Vec<ListedRecord>, bool), AtprotoError> {
        let base = self.pds_of(did).await?;
        let result = self.list_pages(&base, did).await;
        if result.is_err() {
            self.forget_pds(did);
        }
        result
    }

    async fn list_pages(
        &self,
        base: &str,
        did: &str,
    ) -> Result<(Vec<ListedRecord>, bool), AtprotoError> {
        let mut records = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let (page, next) = self
                .client
                .list_records(base, did, COLLECTION, cursor.as_deref())
                .await?;
            let empty = page.is_empty();
            records.extend(page);
            match next {
                Some(next) if !empty && Some(&next) != cursor.as_ref() => cursor = Some(next),
                _ => return Ok((records, true)),
            }
        }
        warn!(%did, pages = MAX_PAGES, "stopped listing a followed identity after the page limit");
        Ok((records, false))
    }

    /// The PDS `did`'s document names, from the cache when fresh.
    async fn pds_of(&self, did: &str) -> Result<String, AtprotoError> {
        if let Some(pds) = self.cached_pds(did) {
            return Ok(pds);
        }
        let pds = self.client.resolve_pds(&self.plc_directory, did).await?;
        let mut cache = self.pds.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= PDS_CACHE_MAX {
            cache.retain(|_, (_, at)| at.elapsed() < PDS_TTL);
            if cache.len() >= PDS_CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(did.to_string(), (pds.clone(), Instant::now()));
        Ok(pds)
    }

    fn cached_pds(&self, did: &str) -> Option<String> {
        let cache = self.pds.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .get(did)
            .filter(|(_, at)| at.elapsed() < PDS_TTL)
            .map(|(pds, _)| pds.clone())
    }

    fn forget_pds(&self, did: &str) {
        let mut cache = self.pds.lock().unwrap_or_else(|e| e.into_inner());
        cache.remove(did);
    }
}

/// Sort a read's result into what it means for the record held: a record
/// found, a record the PDS says does not exist (the owner deleted it), a PDS
/// or directory that gave no usable answer, or an answer that is not a valid
/// record of the repository. Only the PDS's own `RecordNotFound` counts as
/// deleted; every other failure keeps the copy held.
pub fn classify(result: Result<RepoRecord, AtprotoError>) -> RecordPoll {
    match result {
        Ok(record) => RecordPoll::Found(record),
        Err(e @ AtprotoError::NotFound { .. }) => RecordPoll::NotFound(e.to_string()),
        Err(
            e @ (AtprotoError::Record(_)
            | AtprotoError::Malformed { .. }
            | AtprotoError::Oversize { .. }),
        ) => RecordPoll::Invalid(e.to_string()),
        Err(
            e @ (AtprotoError::Timeout { .. }
            | AtprotoError::Unreachable { .. }
            | AtprotoError::Status { .. }
            | AtprotoError::RateLimited { .. }
            | AtprotoError::Auth { .. }
            | AtprotoError::NoPds { .. }
            | AtprotoError::Credentials { .. }),
        ) => RecordPoll::Unreachable(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_record_not_found_counts_as_deleted() {
        let url = || "http://pds/xrpc/com.atproto.repo.getRecord".to_string();
        let kind = |e: AtprotoError| match classify(Err(e)) {
            RecordPoll::Found(_) => "found",
            RecordPoll::NotFound(_) => "not found",
            RecordPoll::Unreachable(_) => "unreachable",
            RecordPoll::Invalid(_) => "invalid",
        };
        assert_eq!(
            kind(AtprotoError::NotFound {
                pds: "http://pds".into(),
                uri: "at://did:plc:a/app.knot.repo/b".into(),
            }),
            "not found"
        );
        for status in [400, 404, 500, 502] {
            let e = AtprotoError::Status {
                url: url(),
                status,
                error: Some("RepoNotFound".into()),
                message: None,
            };
            assert_eq!(kind(e), "unreachable", "HTTP {status}");
        }
        assert_eq!(kind(AtprotoError::Timeout { url: url() }), "unreachable");
        assert_eq!(
            kind(AtprotoError::RateLimited {
                url: url(),
                retry_after: None
            }),
            "unreachable"
        );
        assert_eq!(
            kind(AtprotoError::Malformed {
                url: url(),
                message: "x".into()
            }),
            "invalid"
        );
        assert_eq!(
            kind(AtprotoError::Record(crate::record::RecordError::Malformed(
                "x".into()
            ))),
            "invalid"
        );
        let record = RepoRecord::empty(RepoId::parse("did:plc:a/b").unwrap());
        assert_eq!(classify(Ok(record.clone())), RecordPoll::Found(record));
    }
}
