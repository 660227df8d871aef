//! Optional authentication by API keys: with keys set, a request to `/v1/*` or `/metrics`
//! must carry `Authorization: Bearer KEY` with one of them, else it gets 401 `unauthorized`;
//! a key whose scope does not take the request gets 403 `forbidden`. `/healthz` and `/readyz`
//! stay open for load balancers and orchestrators. Keys are compared in constant time (a
//! mismatch's timing tells nothing of how much of a key matched).
//!
//! Three scopes, one flag each: `--api-key` takes everything; `--read-api-key` reads (`GET`,
//! and view queries by `POST`), for dashboards, which hold their key where users can see it;
//! `--ingest-api-key` only sends events, for shippers, which then cannot read what they sent.

use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::limit::Client;
use crate::config::{ApiKey, ServeConfig};

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Everything (`--api-key`).
    All,
    /// `GET` (and `HEAD`) on every guarded route, and view queries by `POST` (`--read-api-key`).
    Read,
    /// `POST /v1/datasets/{name}/events` only (`--ingest-api-key`).
    Ingest,
}

/// The route templates the narrower scopes take beside their methods (as the router names
/// them: the handlers' OpenAPI paths).
const QUERY_ROUTE: &str = "/v1/views/{name}/query";
const EVENTS_ROUTE: &str = "/v1/datasets/{name}/events";

impl Scope {
    /// Whether a key of this scope may make `method` on the route `route`.
    fn permits(self, method: &Method, route: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Read => {
                method == Method::GET || method == Method::HEAD || (method == Method::POST && route == QUERY_ROUTE)
            }
            Scope::Ingest => method == Method::POST && route == EVENTS_ROUTE,
        }
    }

    /// What a refused request is told.
    fn refusal(self) -> &'static str {
        match self {
            Scope::All => unreachable!("a key of every scope is refused nothing"),
            Scope::Read => "this API key may only read: GET, and view queries by POST",
            Scope::Ingest => "this API key may only send events: POST /v1/datasets/{name}/events",
        }
    }
}

/// The keys a request may present, each with its scope; `None` from [`ApiKeys::new`] when
/// none are set.
#[derive(Clone)]
pub struct ApiKeys(Arc<[(Box<[u8]>, Scope)]>);

impl ApiKeys {
    pub fn new(config: &ServeConfig) -> Option<ApiKeys> {
        ApiKeys::of([
            (&config.api_keys[..], Scope::All),
            (&config.read_api_keys[..], Scope::Read),
            (&config.ingest_api_keys[..], Scope::Ingest),
        ])
    }

    fn of<'a>(scoped: impl IntoIterator<Item = (&'a [ApiKey], Scope)>) -> Option<ApiKeys> {
        let keys: Arc<[(Box<[u8]>, Scope)]> = scoped
            .into_iter()
            .flat_map(|(keys, scope)| keys.iter().map(move |k| (k, scope)))
            .filter(|(k, _)| !k.0.is_empty())
            .map(|(k, scope)| (k.0.as_bytes().into(), scope))
            .collect();
        (!keys.is_empty()).then_some(ApiKeys(keys))
    }

    /// Which of the keys `token` is (its position) and its scope; every key is compared, each
    /// in constant time. (A key given under two scopes has the later one: read, then ingest.)
    fn find(&self, token: &[u8]) -> Option<(usize, Scope)> {
        let mut found = None;
        for (i, (key, scope)) in self.0.iter().enumerate() {
            if bool::from(key.ct_eq(token)) {
                found = Some((i, *scope));
            }
        }
        found
    }
}

/// Middleware: lets a request through only with a known bearer key whose scope takes it, and
/// names the key for the rate limit ([`Client::Key`]).
pub async fn require(State(keys): State<ApiKeys>, mut request: Request, next: Next) -> Response {
    let token = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    let found = token.and_then(|token| keys.find(token.as_bytes()));
    let route = request.extensions().get::<MatchedPath>().map_or("", |p| p.as_str());
    match found {
        Some((key, scope)) if scope.permits(request.method(), route) => {
            request.extensions_mut().insert(Client::Key(key));
            next.run(request).await
        }
        Some((_, scope)) => ApiError::new(StatusCode::FORBIDDEN, "forbidden", scope.refusal()).into_response(),
        None => {
            let message = match token {
                Some(_) => "the API key is not one this server accepts",
                None => "this server requires an API key: send Authorization: Bearer KEY",
            };
            let mut response = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
            response.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
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
        let keys = ApiKeys::of([(&all[..], Scope::All)]).unwrap();
        for (token, allowed) in
            [("k-one", true), ("second", true), ("k-on", false), ("k-one1", false), ("", false), ("SECOND", false)]
        {
            assert_eq!(keys.find(token.as_bytes()).is_some(), allowed, "{token:?}");
        }
        assert!(ApiKeys::of([]).is_none());
        let empty = self::keys(&["", " "]);
        assert!(ApiKeys::of([(&empty[..], Scope::Read)]).is_none(), "empty keys are none");
        assert!("has space".parse::<ApiKey>().is_err() && "tab\tkey".parse::<ApiKey>().is_err());
    }

    #[test]
    fn each_key_has_its_scope_and_each_scope_its_requests() {
        let (all, read, ingest) = (keys(&["a"]), keys(&["r1", "r2"]), keys(&["i"]));
        let keys =
            ApiKeys::of([(&all[..], Scope::All), (&read[..], Scope::Read), (&ingest[..], Scope::Ingest)]).unwrap();
        let scopes: Vec<_> =
            ["a", "r1", "r2", "i", "x"].iter().map(|t| keys.find(t.as_bytes()).map(|(_, scope)| scope)).collect();
        assert_eq!(scopes, [Some(Scope::All), Some(Scope::Read), Some(Scope::Read), Some(Scope::Ingest), None]);

        let requests = [
            (Method::GET, "/v1/datasets"),
            (Method::HEAD, "/metrics"),
            (Method::POST, QUERY_ROUTE),
            (Method::POST, EVENTS_ROUTE),
            (Method::POST, "/v1/datasets"),
            (Method::DELETE, "/v1/views/{name}"),
            (Method::POST, "/v1/views/{name}/runs"),
        ];
        let permitted = |scope: Scope| -> Vec<bool> { requests.iter().map(|(m, r)| scope.permits(m, r)).collect() };
        assert_eq!(permitted(Scope::All), [true; 7]);
        assert_eq!(permitted(Scope::Read), [true, true, true, false, false, false, false]);
        assert_eq!(permitted(Scope::Ingest), [false, false, false, true, false, false, false]);
    }
}
