//! Optional authentication by API keys (`--api-key`, `TANDEM_API_KEYS`): with keys set, a
//! request to `/v1/*` or `/metrics` must carry `Authorization: Bearer KEY` with one of them,
//! else it gets 401 `unauthorized`. `/healthz` and `/readyz` stay open for load balancers and
//! orchestrators. Keys are compared in constant time (a mismatch's timing tells nothing of
//! how much of a key matched).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::config::ApiKey;

/// The keys a request may present; `None` from [`ApiKeys::new`] when none are set.
#[derive(Clone)]
pub struct ApiKeys(Arc<[Box<[u8]>]>);

impl ApiKeys {
    pub fn new(keys: &[ApiKey]) -> Option<ApiKeys> {
        let keys: Arc<[Box<[u8]>]> = keys.iter().filter(|k| !k.0.is_empty()).map(|k| k.0.as_bytes().into()).collect();
        (!keys.is_empty()).then_some(ApiKeys(keys))
    }

    /// Whether `token` is one of the keys; every key is compared, each in constant time.
    fn allows(&self, token: &[u8]) -> bool {
        self.0.iter().fold(subtle::Choice::from(0), |found, key| found | key.ct_eq(token)).into()
    }
}

/// Middleware: lets a request through only with a known bearer key.
pub async fn require(State(keys): State<ApiKeys>, request: Request, next: Next) -> Response {
    let token = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    match token {
        Some(token) if keys.allows(token.as_bytes()) => next.run(request).await,
        presented => {
            let message = match presented {
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

    #[test]
    fn only_whole_keys_are_allowed() {
        let keys = ApiKeys::new(&["k-one".parse().unwrap(), "second".parse().unwrap()]).unwrap();
        for (token, allowed) in
            [("k-one", true), ("second", true), ("k-on", false), ("k-one1", false), ("", false), ("SECOND", false)]
        {
            assert_eq!(keys.allows(token.as_bytes()), allowed, "{token:?}");
        }
        assert!(ApiKeys::new(&[]).is_none());
        assert!(ApiKeys::new(&["".parse().unwrap(), " ".parse().unwrap()]).is_none(), "empty keys are none");
        assert!("has space".parse::<ApiKey>().is_err() && "tab\tkey".parse::<ApiKey>().is_err());
    }
}
