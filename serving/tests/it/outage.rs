//! The metadata database goes away: ingest keeps acknowledging (the log is local), queries
//! keep answering exactly, `/readyz` and `/metrics` report the catalog, and everything
//! recovers on its own when Postgres is reachable again. The test cuts a TCP proxy between
//! tandem and Postgres.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::metrics::Scrape;
use crate::server::{TestServer, count_view};

/// A TCP proxy to Postgres that can be cut (every connection dropped, new ones refused).
struct Proxy {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let links: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (c, l) = (cut.clone(), links.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else { return };
                if c.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is refused
                }
                let link = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                l.lock().push(link);
            }
        });
        Proxy { addr, cut, links }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.links.lock().drain(..).for_each(|l| l.abort());
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalog_outage_degrades_readiness_but_not_ingest_or_answers() {
    let Some(url) = tandem_batch::testing::fresh_postgres_database().await else {
        eprintln!("TANDEM_TEST_DATABASE_URL is unset: the Postgres outage test needs Postgres");
        return;
    };
    let (prefix, db) = url.rsplit_once('/').unwrap();
    let host = prefix.rsplit_once('@').map(|(_, h)| h).unwrap_or("127.0.0.1:5432");
    let upstream: SocketAddr = tokio::net::lookup_host(host).await.unwrap().next().unwrap();
    let proxy = Proxy::start(upstream).await;
    let through_proxy =
        format!("{}@{}/{db}", prefix.rsplit_once('@').map(|(u, _)| u).unwrap_or("postgres://postgres"), proxy.addr);

    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), Some(through_proxy), &["--poll-interval", "500ms"]);
    server.create_pageviews(count_view()).await;
    let events = |n: usize, from: usize| {
        json!(
            (from..from + n)
                .map(|i| json!({"ts": 1_793_491_200_000i64, "event_id": format!("e{i}")}))
                .collect::<Vec<_>>()
        )
    };
    server.ok("POST", "/v1/datasets/pageviews/events", Some(events(10, 0))).await;
    assert_eq!(server.run_batch("v").await["status"], "succeeded");
    let view = [("view", "v")];
    let s = Scrape::take(&server).await;
    assert_eq!((s.value("tandem_catalog_up", &[]), s.value("tandem_view_last_run_success", &view)), (1.0, 1.0));

    proxy.cut();
    let out = server.ok("POST", "/v1/datasets/pageviews/events", Some(events(5, 10))).await;
    assert_eq!(out, json!({"accepted": 5, "duplicates": 0}), "ingest does not need the catalog");
    let a = server.query("v", json!({"granularity": "all"})).await;
    assert_eq!(a["rows"][0]["n"], json!(15));
    let (status, ready) = server.call("GET", "/readyz", None).await;
    assert_eq!((status, ready["catalog"].as_str()), (503, Some("unavailable")));
    let (status, err) = server.call("POST", "/v1/views/v/runs", None).await;
    assert_eq!((status, err["error"]["code"].as_str()), (503, Some("catalog_unavailable")));
    assert_eq!(server.call("GET", "/healthz", None).await.0, 200);
    // the scrape still answers: the catalog reported down, its gauges at their last values
    let s = Scrape::take(&server).await;
    assert_eq!(s.value("tandem_catalog_up", &[]), 0.0);
    assert_eq!(s.value("tandem_view_last_run_success", &view), 1.0);
    assert_eq!(s.value("tandem_view_speed_events", &view), 5.0);

    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.call("GET", "/readyz", None).await.0 != 200 {
        assert!(Instant::now() < deadline, "tandem did not recover when Postgres came back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(Scrape::take(&server).await.value("tandem_catalog_up", &[]), 1.0);
    let run = server.run_batch("v").await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let a = server.query("v", json!({"granularity": "all"})).await;
    assert_eq!((a["rows"][0]["n"].clone(), a["freshness"]["speed_events"].clone()), (json!(15), json!(0)));
}
