//! Optional authentication by API keys: with keys set, a request to `/v1/*` or `/metrics`
//! must carry `Authorization: Bearer KEY` with one of them, else it gets 401 `unauthorized`;
//! a key whose scope does not take the request gets 403 `forbidden`. `/healthz` and `/readyz`
//! stay open for load balancers and orchestrators.
//!
//! Three scopes: `all` takes everything; `read` reads (`GET`, and view queries by `POST`), for
//! dashboards, which hold their key where users can see it; `ingest` only sends events, for
//! shippers, which then cannot read what they sent. Keys come from two places: the flags
//! (`--api-key`, `--read-api-key`, `--ingest-api-key`), compared in constant time (a
//! mismatch's timing tells nothing of how much of a key matched); and the catalog, issued by
//! `POST /v1/keys` (see `api::keys`), found by the SHA-256 of the key a request carries (a
//! secret of 256 random bits: its hash gives nothing away, and the catalog holds no secret).
//! An issued key may be limited to some datasets: then it takes only requests on the routes
//! of those datasets and of the views reading them. The server asks for keys when it starts
//! with any, from either place; keys are managed only with a key of scope `all` limited to no
//! dataset.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::extract::{MatchedPath, Request, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tandem_batch::catalog::KeyRecord;

use super::error::ApiError;
use super::limit::Client;
use crate::app::AppState;
use crate::config::{ApiKey, ServeConfig};

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Everything (`--api-key`).
    All,
    /// `GET` (and `HEAD`) on every guarded route but the keys', and view queries by `POST`
    /// (`--read-api-key`).
    Read,
    /// `POST /v1/datasets/{name}/events` only (`--ingest-api-key`).
    Ingest,
}

/// The route templates the narrower scopes take beside their methods (as the router names
/// them: the handlers' OpenAPI paths).
const QUERY_ROUTE: &str = "/v1/views/{name}/query";
const EVENTS_ROUTE: &str = "/v1/datasets/{name}/events";
/// The routes that manage issued keys: for a key of scope `all` limited to no dataset.
const KEYS_ROUTES: &str = "/v1/keys";

impl Scope {
    /// Whether a key of this scope may make `method` on the route `route`.
    fn permits(self, method: &Method, route: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Read => {
                let get = (method == Method::GET || method == Method::HEAD) && !route.starts_with(KEYS_ROUTES);
                get || (method == Method::POST && route == QUERY_ROUTE)
            }
            Scope::Ingest => method == Method::POST && route == EVENTS_ROUTE,
        }
    }

    /// What a refused request is told.
    fn refusal(self) -> &'static str {
        match self {
            Scope::All => unreachable!("a key of every scope is refused nothing"),
            Scope::Read => "this API key may only read: GET (but not the keys), and view queries by POST",
            Scope::Ingest => "this API key may only send events: POST /v1/datasets/{name}/events",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::All => "all",
            Scope::Read => "read",
            Scope::Ingest => "ingest",
        }
    }

    pub fn parse(text: &str) -> Option<Scope> {
        [Scope::All, Scope::Read, Scope::Ingest].into_iter().find(|s| s.as_str() == text)
    }
}

/// A key issued through the API, as a request's key is checked against it.
#[derive(Debug)]
pub struct Issued {
    /// The first 8 bytes of its secret's hash: the client its requests are counted for.
    id: u64,
    pub name: String,
    pub scope: Scope,
    /// The datasets it is limited to; `None`: every dataset.
    pub datasets: Option<Arc<[String]>>,
}

/// The keys a request may present, each with its scope: those of the flags and those issued.
pub struct ApiKeys {
    configured: Box<[(Box<[u8]>, Scope)]>,
    /// Issued keys by the SHA-256 of their secret; replaced whole when one is issued or
    /// deleted (rare), read by every request without a lock.
    issued: ArcSwap<HashMap<[u8; 32], Arc<Issued>>>,
    /// Whether requests must carry a key: the server started with one, from either place.
    required: bool,
}

/// The key a request carried, once found.
struct Found {
    client: Client,
    scope: Scope,
    datasets: Option<Arc<[String]>>,
}

impl ApiKeys {
    /// The flags' keys and those the catalog holds (`issued`).
    pub fn new(config: &ServeConfig, issued: &[KeyRecord]) -> anyhow::Result<ApiKeys> {
        let mut keys = ApiKeys::of([
            (&config.api_keys[..], Scope::All),
            (&config.read_api_keys[..], Scope::Read),
            (&config.ingest_api_keys[..], Scope::Ingest),
        ]);
        for record in issued {
            keys.add(record)?;
        }
        keys.required |= !issued.is_empty();
        Ok(keys)
    }

    fn of<'a>(scoped: impl IntoIterator<Item = (&'a [ApiKey], Scope)>) -> ApiKeys {
        let configured: Box<[(Box<[u8]>, Scope)]> = scoped
            .into_iter()
            .flat_map(|(keys, scope)| keys.iter().map(move |k| (k, scope)))
            .filter(|(k, _)| !k.0.is_empty())
            .map(|(k, scope)| (k.0.as_bytes().into(), scope))
            .collect();
        let required = !configured.is_empty();
        ApiKeys { configured, issued: ArcSwap::default(), required }
    }

    /// Whether requests must carry a key.
    pub fn required(&self) -> bool {
        self.required
    }

    /// Which key `token` is and what it may do. Every configured key is compared, each in
    /// constant time (a key given under two scopes has the later one: read, then ingest);
    /// then the issued keys, by the token's hash.
    fn find(&self, token: &[u8]) -> Option<Found> {
        let mut found = None;
        for (i, (key, scope)) in self.configured.iter().enumerate() {
            if bool::from(key.ct_eq(token)) {
                found = Some(Found { client: Client::Key(i), scope: *scope, datasets: None });
            }
        }
        found.or_else(|| {
            let issued = self.issued.load().get(&sha256(token)).cloned()?;
            Some(Found { client: Client::Issued(issued.id), scope: issued.scope, datasets: issued.datasets.clone() })
        })
    }

    /// Takes an issued key (just recorded in the catalog) into use.
    pub fn add(&self, record: &KeyRecord) -> anyhow::Result<()> {
        let (hash, issued) = Issued::from_record(record)?;
        let issued = Arc::new(issued);
        self.issued.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.insert(hash, issued.clone());
            map
        });
        Ok(())
    }

    /// Stops taking the issued key `name` (just deleted from the catalog).
    pub fn remove(&self, name: &str) {
        self.issued.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.retain(|_, issued| issued.name != name);
            map
        });
    }

    /// Whether a key that may manage keys would be left without the issued key `name`: a
    /// configured key of scope `all`, or another issued one limited to no dataset.
    pub fn manageable_without(&self, name: &str) -> bool {
        self.configured.iter().any(|(_, scope)| *scope == Scope::All)
            || self.issued.load().values().any(|i| i.name != name && i.scope == Scope::All && i.datasets.is_none())
    }
}

impl Issued {
    fn from_record(record: &KeyRecord) -> anyhow::Result<([u8; 32], Issued)> {
        let scope = Scope::parse(&record.scope)
            .ok_or_else(|| anyhow::anyhow!("API key {:?} has an unknown scope {:?}", record.name, record.scope))?;
        let hash = decode_hex(&record.secret_sha256)
            .ok_or_else(|| anyhow::anyhow!("API key {:?}: its stored hash is not 64 hex digits", record.name))?;
        let id = u64::from_le_bytes(hash[..8].try_into().expect("8 bytes"));
        let datasets = record.datasets.as_deref().map(Arc::from);
        Ok((hash, Issued { id, name: record.name.clone(), scope, datasets }))
    }
}

/// A new key's secret: `tdk_` and 256 random bits (64 hex digits), and its SHA-256 in hex, as
/// the catalog keeps it.
pub fn new_secret() -> anyhow::Result<(String, String)> {
    let mut bits = [0u8; 32];
    getrandom::fill(&mut bits).map_err(|e| anyhow::anyhow!("drawing a key's secret: {e}"))?;
    let secret = format!("tdk_{}", hex::encode(bits));
    let hash = hex::encode(sha256(secret.as_bytes()));
    Ok((secret, hash))
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn decode_hex(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

/// The dataset a request's route is about: the one it names (`/v1/datasets/{name}...`), or
/// the one the view it names reads (`/v1/views/{name}...`); `None` for every other route,
/// and for a view that does not exist.
fn dataset_of(state: &AppState, route: &str, path: &str) -> Option<String> {
    let name = path.split('/').nth(3)?;
    if route.starts_with("/v1/datasets/{name}") {
        Some(name.to_string())
    } else if route.starts_with("/v1/views/{name}") {
        state.view(name).map(|live| live.view.spec.dataset.clone())
    } else {
        None
    }
}

/// Middleware: lets a request through only with a known bearer key whose scope (and
/// datasets) take it, and names the key for the rate limit ([`Client`]).
pub async fn require(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let token = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    let found = token.and_then(|token| state.keys.find(token.as_bytes()));
    let route = request.extensions().get::<MatchedPath>().map_or("", |p| p.as_str());
    let forbidden = |message: String| ApiError::new(StatusCode::FORBIDDEN, "forbidden", message).into_response();
    match found {
        None => {
            let message = match token {
                Some(_) => "the API key is not one this server accepts",
                None => "this server requires an API key: send Authorization: Bearer KEY",
            };
            let mut response = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
            response.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
        Some(found) if !found.scope.permits(request.method(), route) => forbidden(found.scope.refusal().into()),
        Some(Found { datasets: Some(datasets), .. })
            if !dataset_of(&state, route, request.uri().path()).is_some_and(|d| datasets.contains(&d)) =>
        {
            forbidden(format!(
                "this API key is limited to datasets {datasets:?}: only their routes and their views' are open to it"
            ))
        }
        Some(found) => {
            request.extensions_mut().insert(found.client);
            next.run(request).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(list: &[&str]) -> Vec<ApiKey> {
        list.iter().map(|k| k.parse().unwrap()).collect()
    }

    #[test]
    fn only_whole_keys_are_allowed() {
        let all = keys(&["k-one", "second"]);
        let keys = ApiKeys::of([(&all[..], Scope::All)]);
        for (token, allowed) in
            [("k-one", true), ("second", true), ("k-on", false), ("k-one1", false), ("", false), ("SECOND", false)]
        {
            assert_eq!(keys.find(token.as_bytes()).is_some(), allowed, "{token:?}");
        }
        assert!(keys.required() && !ApiKeys::of([]).required());
        let empty = self::keys(&["", " "]);
        assert!(!ApiKeys::of([(&empty[..], Scope::Read)]).required(), "empty keys are none");
        assert!("has space".parse::<ApiKey>().is_err() && "tab\tkey".parse::<ApiKey>().is_err());
    }

    #[test]
    fn each_key_has_its_scope_and_each_scope_its_requests() {
        let (all, read, ingest) = (keys(&["a"]), keys(&["r1", "r2"]), keys(&["i"]));
        let keys = ApiKeys::of([(&all[..], Scope::All), (&read[..], Scope::Read), (&ingest[..], Scope::Ingest)]);
        let scopes: Vec<_> =
            ["a", "r1", "r2", "i", "x"].iter().map(|t| keys.find(t.as_bytes()).map(|found| found.scope)).collect();
        assert_eq!(scopes, [Some(Scope::All), Some(Scope::Read), Some(Scope::Read), Some(Scope::Ingest), None]);

        let requests = [
            (Method::GET, "/v1/datasets"),
            (Method::HEAD, "/metrics"),
            (Method::POST, QUERY_ROUTE),
            (Method::POST, EVENTS_ROUTE),
            (Method::POST, "/v1/datasets"),
            (Method::DELETE, "/v1/views/{name}"),
            (Method::POST, "/v1/views/{name}/runs"),
            (Method::GET, "/v1/keys"),
            (Method::DELETE, "/v1/keys/{name}"),
        ];
        let permitted = |scope: Scope| -> Vec<bool> { requests.iter().map(|(m, r)| scope.permits(m, r)).collect() };
        assert_eq!(permitted(Scope::All), [true; 9]);
        assert_eq!(permitted(Scope::Read), [true, true, true, false, false, false, false, false, false]);
        assert_eq!(permitted(Scope::Ingest), [false, false, false, true, false, false, false, false, false]);
    }

    #[test]
    fn issued_keys_are_found_by_their_secret_until_removed() {
        let (secret, hash) = new_secret().unwrap();
        assert!(secret.starts_with("tdk_") && secret.len() == 68, "{secret}");
        assert_eq!(decode_hex(&hash), Some(sha256(secret.as_bytes())));
        assert_ne!(new_secret().unwrap().0, secret, "each secret is drawn afresh");
        let record = |name: &str, hash: &str, datasets: Option<Vec<String>>| KeyRecord {
            name: name.into(),
            scope: "ingest".into(),
            datasets,
            secret_sha256: hash.into(),
            created_at: 0,
        };
        let keys = ApiKeys::new(&config(&[]), &[record("shipper", &hash, Some(vec!["pageviews".into()]))]).unwrap();
        assert!(keys.required(), "an issued key alone asks every request for one");
        let found = keys.find(secret.as_bytes()).unwrap();
        assert_eq!((found.scope, found.datasets.as_deref()), (Scope::Ingest, Some(&["pageviews".to_string()][..])));
        for wrong in [&secret[..67], &hash, "tdk_", ""] {
            assert!(keys.find(wrong.as_bytes()).is_none(), "{wrong:?}");
        }
        assert!(!keys.manageable_without("x"), "no key of scope all");
        let (other, other_hash) = new_secret().unwrap();
        keys.add(&KeyRecord { scope: "all".into(), ..record("admin", &other_hash, None) }).unwrap();
        assert!(keys.find(other.as_bytes()).is_some() && keys.find(secret.as_bytes()).is_some());
        assert!(keys.manageable_without("shipper") && !keys.manageable_without("admin"));
        keys.remove("shipper");
        assert!(keys.find(secret.as_bytes()).is_none() && keys.find(other.as_bytes()).is_some());
        // what the catalog holds is checked as it is read
        assert!(ApiKeys::new(&config(&[]), &[record("bad", "00ff", None)]).is_err());
        assert!(
            ApiKeys::new(&config(&[]), &[KeyRecord { scope: "write".into(), ..record("w", &hash, None) }]).is_err()
        );
    }

    fn config(args: &[&str]) -> ServeConfig {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            serve: ServeConfig,
        }
        Cli::parse_from(std::iter::once("tandem").chain(args.iter().copied())).serve
    }
}
