//! The disk fills: ingest answers 507 with a clear error and stores nothing of the refused
//! requests, nothing acknowledged is lost, and everything recovers when space returns.
//!
//! The data dir is a real, small tmpfs that the test mounts (it needs root or
//! CAP_SYS_ADMIN, as `.ci/run` has here); a ballast file fills it up completely.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::metrics::{EVENTS_ROUTE, Scrape};
use crate::server::TestServer;

const EVENTS_PER_REQUEST: usize = 100;

/// A tmpfs of `size` mounted for the life of the value.
struct Tmpfs {
    dir: PathBuf,
    _parent: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("data");
        fs::create_dir(&dir).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .expect("running mount");
        assert!(status.success(), "could not mount a tmpfs at {dir:?}: this test needs root or CAP_SYS_ADMIN");
        Tmpfs { dir, _parent: parent }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Writes zeros to `path` until the file system refuses; returns the bytes written.
fn fill(path: &Path) -> u64 {
    use std::io::Write;
    let mut file = fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 << 10];
    let mut written = 0;
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) => {
                assert_eq!(e.kind(), std::io::ErrorKind::StorageFull, "{e}");
                break;
            }
        }
    }
    let _ = file.sync_all();
    written
}

fn request(req: &str) -> Vec<Value> {
    (0..EVENTS_PER_REQUEST)
        .map(|i| json!({"ts": 1_793_491_200_000i64 + i as i64, "id": format!("{req}-{i}"), "req": req}))
        .collect()
}

async fn post(server: &TestServer, body: &[Value]) -> (u16, Option<String>, Value) {
    let resp = server.http.post(format!("{}/v1/datasets/clicks/events", server.base)).json(body).send().await.unwrap();
    let status = resp.status().as_u16();
    let retry_after = resp.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
    (status, retry_after, resp.json().await.unwrap())
}

async fn stored(server: &TestServer) -> HashMap<String, i64> {
    let answer = server.query("per_request", json!({"granularity": "all"})).await;
    answer["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["req"].as_str().unwrap().to_string(), r["events"].as_i64().unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_with_507_loses_nothing_and_recovers() {
    let disk = Tmpfs::mount("24m");
    let mut server = TestServer::start(&disk.dir, None, &["--segment-interval", "200ms"]);
    server
        .ok(
            "POST",
            "/v1/datasets",
            Some(json!({"name": "clicks", "time_field": "ts", "id_field": "id",
                        "fields": {"ts": "timestamp", "id": "string", "req": "string"}})),
        )
        .await;
    server
        .ok(
            "POST",
            "/v1/views",
            Some(json!({"name": "per_request", "dataset": "clicks", "granularity": "day", "dimensions": ["req"],
                        "measures": {"events": "count"}})),
        )
        .await;
    let mut acked = Vec::new();
    for r in 0..5 {
        let req = format!("before{r}");
        assert_eq!(post(&server, &request(&req)).await.0, 200);
        acked.push(req);
    }

    let ballast = disk.dir.join("ballast");
    assert!(fill(&ballast) > 0);
    let mut refused = Vec::new();
    for r in 0..40 {
        let req = format!("full{r}");
        let (status, retry_after, body) = post(&server, &request(&req)).await;
        match status {
            200 => acked.push(req),
            507 => {
                assert_eq!(body["error"]["code"], "insufficient_storage", "{body}");
                assert!(body["error"]["message"].as_str().unwrap().contains("disk"), "{body}");
                assert!(retry_after.is_some(), "507 without Retry-After");
                refused.push(req);
            }
            other => panic!("unexpected {other}: {body}"),
        }
        // let the writer try (and fail) to seal segments in between
        if r % 10 == 9 {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    assert!(refused.len() >= 30, "the full disk refused only {} of 40 requests", refused.len());
    // /metrics counts the refusals, and stored events only once they are durable
    let scrape = Scrape::take(&server).await;
    let status = |code| [("method", "POST"), ("route", EVENTS_ROUTE), ("status", code)];
    assert_eq!(scrape.get("tandem_http_requests_total", &status("507")), Some(refused.len() as f64));
    assert_eq!(scrape.get("tandem_http_requests_total", &status("200")), Some(acked.len() as f64));
    let dataset = [("dataset", "clicks")];
    assert_eq!(scrape.value("tandem_events_stored_total", &dataset), (acked.len() * EVENTS_PER_REQUEST) as f64);
    assert!(scrape.value("tandem_log_failed_syncs_total", &dataset) >= 1.0);
    assert_eq!(server.call("GET", "/healthz", None).await.0, 200);
    let during = stored(&server).await;
    assert_eq!(during.len(), acked.len(), "refused requests must store nothing: {during:?}");
    for req in &acked {
        assert_eq!(during.get(req), Some(&(EVENTS_PER_REQUEST as i64)), "{req}");
    }

    // space returns: the very requests that were refused are accepted whole (their ids were
    // not remembered as duplicates), and new ones too
    fs::remove_file(&ballast).unwrap();
    for req in refused.iter().chain(["after0".to_string(), "after1".to_string()].iter()) {
        let (status, _, body) = post(&server, &request(req)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["accepted"], EVENTS_PER_REQUEST, "{body}");
        acked.push(req.clone());
    }
    assert_eq!(server.run_batch("per_request").await["status"], "succeeded");
    let expected: HashMap<String, i64> = acked.iter().map(|r| (r.clone(), EVENTS_PER_REQUEST as i64)).collect();
    assert_eq!(stored(&server).await, expected);

    // and the log on disk holds exactly that: no half-written record or segment survives
    server.kill();
    server.restart();
    assert_eq!(stored(&server).await, expected, "after kill -9 and restart");
    server.kill();
}
