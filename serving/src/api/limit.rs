//! Optional per-client rate limits (`--rate-limit N`): each client may make N requests a
//! second to `/v1/*` and `/metrics`, in bursts of up to N; past that a request gets 429
//! `rate_limited` with `Retry-After` and is not served. A client is the API key a request
//! authenticated with (see [`super::auth`]: each key has its own budget, wherever it comes
//! from), or with no keys set, the address the request comes from. GCRA by `governor`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::error::ApiError;

/// Who a request's budget is counted for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Client {
    /// The configured API key it authenticated with (its position among the flags' keys).
    Key(usize),
    /// The issued API key it authenticated with (see `auth::Issued`).
    Issued(u64),
    /// Where it came from, when the server asks no key.
    Peer(IpAddr),
}

/// The budgets of every client.
#[derive(Clone)]
pub struct Limiter(Arc<DefaultKeyedRateLimiter<Client>>);

/// How often clients that have their whole budget again are forgotten (so that the budgets of
/// many passing addresses do not pile up).
const FORGET_EVERY: Duration = Duration::from_secs(60);

impl Limiter {
    /// `per_second` requests a second for each client, in bursts of as many. Spawns the task
    /// that forgets idle clients, which ends with the limiter.
    pub fn new(per_second: NonZeroU32) -> Limiter {
        let limiter = Arc::new(RateLimiter::keyed(Quota::per_second(per_second)));
        let weak: Weak<DefaultKeyedRateLimiter<Client>> = Arc::downgrade(&limiter);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(FORGET_EVERY);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(limiter) = weak.upgrade() else { return };
                limiter.retain_recent();
                limiter.shrink_to_fit();
            }
        });
        Limiter(limiter)
    }

    /// `Ok` if `client` may make a request now, else how long until it may.
    fn check(&self, client: Client) -> Result<(), Duration> {
        self.0.check_key(&client).map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

/// Middleware: serves a request only within its client's budget. Runs after
/// [`super::auth::require`], which names the client by its key.
pub async fn limit(State(limiter): State<Limiter>, request: Request, next: Next) -> Response {
    let client = request.extensions().get::<Client>().copied().unwrap_or_else(|| {
        let peer = request.extensions().get::<ConnectInfo<SocketAddr>>();
        Client::Peer(peer.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |ConnectInfo(addr)| addr.ip()))
    });
    match limiter.check(client) {
        Ok(()) => next.run(request).await,
        Err(wait) => {
            let seconds = wait.as_secs_f64().ceil().max(1.0) as u32;
            ApiError {
                retry_after: Some(seconds),
                ..ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!("this client is over its rate limit; retry in {} ms", wait.as_millis().max(1)),
                )
            }
            .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_client_has_its_own_budget() {
        let limiter = Limiter::new(NonZeroU32::new(3).unwrap());
        let (a, b) = (Client::Key(0), Client::Peer(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        for _ in 0..3 {
            assert_eq!(limiter.check(a), Ok(()));
        }
        let wait = limiter.check(a).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(334), "{wait:?}");
        assert_eq!(limiter.check(b), Ok(()), "another client's budget is its own");
        tokio::time::sleep(wait).await;
        assert_eq!(limiter.check(a), Ok(()), "the budget comes back at the rate");
    }
}
