//! The record of a tracked repository: fetched from the owner's PDS and
//! checked to belong to that repository.

use super::{AtprotoError, XrpcClient};
use crate::{
    record::{RecordError, RepoRecord},
    repo_id::RepoId,
    state::Locator,
};

/// Fetch and check the record of a tracked repository.
///
/// Resolves the PDS from the DID document when the locator names none. The
/// record is rejected when the locator's DID is not the repository owner's,
/// when the PDS answers with a record of another repository (URI), or when the
/// record's `repoId` differs from `expected`.
pub async fn fetch_repo_record(
    client: &XrpcClient,
    plc_directory: &str,
    locator: &Locator,
    expected: &RepoId,
) -> Result<RepoRecord, AtprotoError> {
    check_locator(locator, expected)?;
    let pds = match &locator.pds {
        Some(pds) => pds.clone(),
        None => client.resolve_pds(plc_directory, &locator.did).await?,
    };
    fetch_repo_record_at(client, &pds, locator, expected).await
}

/// Like [`fetch_repo_record`], with the PDS already known.
pub async fn fetch_repo_record_at(
    client: &XrpcClient,
    pds: &str,
    locator: &Locator,
    expected: &RepoId,
) -> Result<RepoRecord, AtprotoError> {
    check_locator(locator, expected)?;
    let fetched = client
        .get_record(pds, &locator.did, &locator.collection, &locator.rkey)
        .await?;
    if let Some(uri) = &fetched.uri
        && let Some(authority) = uri
            .strip_prefix("at://")
            .and_then(|rest| rest.split('/').next())
        && authority.starts_with("did:")
        && authority != locator.did
    {
        return Err(AtprotoError::Record(RecordError::RepoIdMismatch {
            expected: expected.to_string(),
            found: format!("{uri} (a record of {authority})"),
        }));
    }
    let record = RepoRecord::from_json(fetched.value)?;
    if &record.repo_id != expected {
        return Err(AtprotoError::Record(RecordError::RepoIdMismatch {
            expected: expected.to_string(),
            found: record.repo_id.to_string(),
        }));
    }
    Ok(record)
}

/// Refuse a locator whose DID is not the owner of `expected`: a record in
/// another account's repository cannot speak for this repository.
pub fn check_locator(locator: &Locator, expected: &RepoId) -> Result<(), AtprotoError> {
    if locator.did != expected.did() {
        return Err(AtprotoError::Record(RecordError::RepoIdMismatch {
            expected: expected.to_string(),
            found: format!("a record of {}", locator.did),
        }));
    }
    Ok(())
}
