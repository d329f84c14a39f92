//! Identity: where a DID's PDS is (its DID document, through the PLC
//! directory or `did:web`). Pure parsing plus the URL rules; the fetch is
//! [`super::XrpcClient::resolve_pds`].

use reqwest::Url;
use serde_json::Value;

use super::validate_http_url;

/// Where the DID document of `did` is published.
pub fn did_document_url(plc_directory: &str, did: &str) -> Result<Url, String> {
    crate::repo_id::validate_did(did).map_err(|e| format!("{did:?} is not a DID: {e}"))?;
    if did.starts_with("did:plc:") {
        let base =
            validate_http_url(plc_directory).map_err(|e| format!("atproto.plc_directory: {e}"))?;
        return Url::parse(&format!("{base}/{did}")).map_err(|e| e.to_string());
    }
    if let Some(rest) = did.strip_prefix("did:web:") {
        let mut parts = rest.split(':');
        let host = parts
            .next()
            .unwrap_or_default()
            .replace("%3A", ":")
            .replace("%3a", ":");
        if host.is_empty() || host.contains('%') || host.contains('/') {
            return Err(format!("{did:?} does not name a valid host"));
        }
        let path: Vec<&str> = parts.collect();
        let url = if path.is_empty() {
            format!("https://{host}/.well-known/did.json")
        } else {
            if path.iter().any(|p| p.is_empty() || *p == "." || *p == "..") {
                return Err(format!("{did:?} has an invalid path"));
            }
            format!("https://{host}/{}/did.json", path.join("/"))
        };
        return Url::parse(&url).map_err(|e| format!("{did:?}: {e}"));
    }
    Err(format!(
        "the DID method of {did:?} is not supported (only did:plc and did:web)"
    ))
}

/// The handle a DID document claims: its first `alsoKnownAs` entry of the
/// form `at://<handle>`, lowercased. A claim only: a DID document may name
/// any handle, so the handle must resolve back to the DID before it is shown
/// ([`super::XrpcClient::verified_handle`]).
pub fn claimed_handle(doc: &Value, did: &str) -> Option<String> {
    if doc.get("id").and_then(Value::as_str) != Some(did) {
        return None;
    }
    doc.get("alsoKnownAs")?
        .as_array()?
        .iter()
        .filter_map(Value::as_str)
        .find_map(|aka| aka.strip_prefix("at://"))
        .map(str::to_ascii_lowercase)
        .filter(|h| looks_like_handle(h) && names_a_public_host(h))
}

/// The characters and length of a handle (`alice.example.com`): what a
/// handle must look like before any lookup is made with it.
pub fn looks_like_handle(handle: &str) -> bool {
    !handle.is_empty()
        && handle.len() <= 253
        && handle.contains('.')
        && handle
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
}

/// Top-level domains a handle may not use (ATProto's handle rules; `.test`
/// stays, for test networks).
const RESERVED_TLDS: [&str; 8] = [
    "alt",
    "arpa",
    "example",
    "internal",
    "invalid",
    "local",
    "localhost",
    "onion",
];

/// Whether a handle a stranger's DID document claims names a public host:
/// its top-level label starts with a letter (not an IP address such as
/// `10.0.0.5`) and is not reserved. Checked before the node fetches
/// `https://<handle>/.well-known/atproto-did`, so a DID document cannot
/// send it to probe addresses of the local network.
fn names_a_public_host(handle: &str) -> bool {
    let tld = handle.rsplit('.').next().unwrap_or_default();
    tld.starts_with(|c: char| c.is_ascii_alphabetic()) && !RESERVED_TLDS.contains(&tld)
}

/// Extract the PDS endpoint from a DID document: the service with id
/// `#atproto_pds` (or `<did>#atproto_pds`) and type `AtprotoPersonalDataServer`.
pub fn pds_from_did_doc(doc: &Value, did: &str) -> Result<String, String> {
    if let Some(id) = doc.get("id") {
        if id.as_str() != Some(did) {
            return Err(format!("the DID document is for {id}, not {did}"));
        }
    } else {
        return Err("the DID document has no \"id\"".into());
    }
    let services = doc
        .get("service")
        .and_then(Value::as_array)
        .ok_or("the DID document lists no services")?;
    let full_id = format!("{did}#atproto_pds");
    let service = services
        .iter()
        .find(|s| {
            let id = s.get("id").and_then(Value::as_str);
            let ty = s.get("type").and_then(Value::as_str);
            matches!(id, Some(id) if id == "#atproto_pds" || id == full_id)
                && ty == Some("AtprotoPersonalDataServer")
        })
        .ok_or("the DID document has no #atproto_pds service of type AtprotoPersonalDataServer")?;
    let endpoint = service
        .get("serviceEndpoint")
        .and_then(Value::as_str)
        .ok_or("the #atproto_pds service has no string serviceEndpoint")?;
    validate_http_url(endpoint).map_err(|e| format!("the #atproto_pds endpoint: {e}"))
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_claimed_handle_is_the_first_at_uri_of_the_document_for_that_did() {
        let did = "did:plc:abc123";
        let doc = serde_json::json!({
            "id": did,
            "alsoKnownAs": ["https://example.com", "at://Alice.Example.COM", "at://bob.example"],
        });
        assert_eq!(
            claimed_handle(&doc, did).as_deref(),
            Some("alice.example.com")
        );
        assert_eq!(
            claimed_handle(&doc, "did:plc:other"),
            None,
            "another DID's document"
        );
        for bad in [
            "at://<b>x</b>.com",
            "at://nodot",
            "at://",
            "at://a b.com",
            "at://10.0.0.5",
            "at://127.0.0.1",
            "at://printer.local",
            "at://metadata.internal",
            "at://intranet.localhost",
        ] {
            let doc = serde_json::json!({"id": did, "alsoKnownAs": [bad]});
            assert_eq!(claimed_handle(&doc, did), None, "{bad}");
        }
        assert_eq!(claimed_handle(&serde_json::json!({"id": did}), did), None);
    }
    use super::*;
    use serde_json::json;

    #[test]
    fn did_documents() {
        let did = "did:plc:abc123";
        let doc = json!({
            "id": did,
            "service": [
                {"id": "#other", "type": "Other", "serviceEndpoint": "https://x.example"},
                {"id": "#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": "http://127.0.0.1:2583/"}
            ]
        });
        assert_eq!(
            pds_from_did_doc(&doc, did).unwrap(),
            "http://127.0.0.1:2583"
        );
        let full = json!({
            "id": did,
            "service": [{"id": format!("{did}#atproto_pds"), "type": "AtprotoPersonalDataServer", "serviceEndpoint": "https://pds.example.com"}]
        });
        assert_eq!(
            pds_from_did_doc(&full, did).unwrap(),
            "https://pds.example.com"
        );
        for bad in [
            json!({"id": "did:plc:other", "service": doc["service"].clone()}),
            json!({"service": doc["service"].clone()}),
            json!({"id": did}),
            json!({"id": did, "service": [{"id": "#atproto_pds", "type": "Wrong", "serviceEndpoint": "https://a.b"}]}),
            json!({"id": did, "service": [{"id": "#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": "ftp://a.b"}]}),
            json!({"id": did, "service": [{"id": "#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": {"x": 1}}]}),
            json!({"id": did, "service": [{"id": "#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": "https://a.b/?q=1"}]}),
        ] {
            assert!(pds_from_did_doc(&bad, did).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn did_document_urls() {
        let plc = "https://plc.directory/";
        assert_eq!(
            did_document_url(plc, "did:plc:abc123").unwrap().as_str(),
            "https://plc.directory/did:plc:abc123"
        );
        assert_eq!(
            did_document_url(plc, "did:web:example.com")
                .unwrap()
                .as_str(),
            "https://example.com/.well-known/did.json"
        );
        assert_eq!(
            did_document_url(plc, "did:web:localhost%3A8080:u:alice")
                .unwrap()
                .as_str(),
            "https://localhost:8080/u/alice/did.json"
        );
        assert!(did_document_url(plc, "did:key:z6Mk").is_err());
        assert!(did_document_url(plc, "did:web:a.b:..").is_err());
        assert!(did_document_url("ftp://x", "did:plc:abc").is_err());
    }
}
