//! Following identities: listing every `app.knot.repo` record of a DID on a
//! schedule.
//!
//! Owns one task per followed identity. Each resolves the identity's PDS
//! from its DID document (cached for an hour), lists its records with
//! `com.atproto.repo.listRecords` page by page (at most [`MAX_PAGES`]),
//! reports the whole listing to the repository actor, then waits one poll
//! interval (with jitter; longer after failures, as the record poller does,
//! and at least what a rate-limiting PDS asked for). [`Follows::list_now`]
//! cuts the wait short. The core decides what a listing means (new
//! repositories tracked, deleted records noticed); nothing here persists.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{
    sync::{Notify, mpsc},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::{
    atproto::{AtprotoError, ListedRecord, XrpcClient},
    poller::{PollSettings, next_delay},
    record::COLLECTION,
};

/// Most pages (of up to 100 records) read per listing.
pub const MAX_PAGES: usize = 50;
/// How long a PDS resolved from a DID document is reused.
const PDS_TTL: Duration = Duration::from_secs(3600);

/// One listing of a followed identity.
#[derive(Debug, Clone)]
pub struct Listing {
    /// The identity (a DID).
    pub did: String,
    /// Its records and whether that is all of them (not cut at
    /// [`MAX_PAGES`]), or why they could not be listed.
    pub result: Result<(Vec<ListedRecord>, bool), String>,
}

struct Entry {
    cancel: CancellationToken,
    wake: Arc<Notify>,
}

/// The followed identities' listing tasks.
pub struct Follows {
    client: XrpcClient,
    settings: PollSettings,
    tx: mpsc::Sender<Listing>,
    cancel: CancellationToken,
    entries: HashMap<String, Entry>,
    tasks: JoinSet<()>,
}

impl Follows {
    /// Listings go to `tx`; every task stops when `cancel` fires.
    pub fn new(
        client: XrpcClient,
        settings: PollSettings,
        tx: mpsc::Sender<Listing>,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            client,
            settings,
            tx,
            cancel,
            entries: HashMap::new(),
            tasks: JoinSet::new(),
        }
    }

    /// List `did`'s records now and on the schedule from then on.
    pub fn track(&mut self, did: String) {
        if self.entries.contains_key(&did) {
            return self.list_now(&did);
        }
        let cancel = self.cancel.child_token();
        let wake = Arc::new(Notify::new());
        self.tasks.spawn(list_loop(
            self.client.clone(),
            self.settings.clone(),
            did.clone(),
            self.tx.clone(),
            cancel.clone(),
            wake.clone(),
        ));
        self.entries.insert(did, Entry { cancel, wake });
    }

    /// Stop listing `did`.
    pub fn untrack(&mut self, did: &str) {
        if let Some(entry) = self.entries.remove(did) {
            entry.cancel.cancel();
        }
    }

    /// List `did` now instead of at its next turn.
    pub fn list_now(&self, did: &str) {
        if let Some(entry) = self.entries.get(did) {
            entry.wake.notify_one();
        }
    }

    /// Reap finished tasks (they end only when cancelled).
    pub fn reap(&mut self) {
        while self.tasks.try_join_next().is_some() {}
    }
}

async fn list_loop(
    client: XrpcClient,
    settings: PollSettings,
    did: String,
    tx: mpsc::Sender<Listing>,
    cancel: CancellationToken,
    wake: Arc<Notify>,
) {
    let mut failures = 0u32;
    let mut pds: Option<(String, Instant)> = None;
    loop {
        let result = list_all(&client, &settings.plc_directory, &did, &mut pds).await;
        let retry_after = result.as_ref().err().and_then(AtprotoError::retry_after);
        match &result {
            Ok((records, _)) => {
                failures = 0;
                debug!(%did, records = records.len(), "identity listed");
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                pds = None;
                warn!(%did, error = %e, failures, "listing a followed identity failed");
            }
        }
        let listing = Listing {
            did: did.clone(),
            result: result.map_err(|e| e.to_string()),
        };
        if tx.send(listing).await.is_err() {
            return;
        }
        let wait = next_delay(
            settings.interval,
            settings.jitter,
            failures,
            settings.max_backoff,
            rand::random::<f64>(),
        )
        .max(retry_after.unwrap_or_default());
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
            _ = wake.notified() => {}
        }
    }
}

/// Every record of `did`'s `app.knot.repo` collection, page by page.
async fn list_all(
    client: &XrpcClient,
    plc_directory: &str,
    did: &str,
    pds: &mut Option<(String, Instant)>,
) -> Result<(Vec<ListedRecord>, bool), AtprotoError> {
    let base = match pds.as_ref().filter(|(_, at)| at.elapsed() < PDS_TTL) {
        Some((base, _)) => base.clone(),
        None => {
            let base = client.resolve_pds(plc_directory, did).await?;
            *pds = Some((base.clone(), Instant::now()));
            base
        }
    };
    let mut records = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let (page, next) = client
            .list_records(&base, did, COLLECTION, cursor.as_deref())
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
