//! The test harness: start `tandem serve`, wait for it, talk HTTP, kill it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub const BIN: &str = env!("CARGO_BIN_EXE_tandem");

pub use tandem_batch::testing::catalog_urls as catalogs;

pub struct TestServer {
    child: Option<Child>,
    pub base: String,
    pub data_dir: PathBuf,
    pub database_url: Option<String>,
    extra: Vec<String>,
    pub http: reqwest::Client,
}

impl TestServer {
    pub fn start(data_dir: &Path, database_url: Option<String>, extra: &[&str]) -> TestServer {
        let mut server = TestServer {
            child: None,
            base: String::new(),
            data_dir: data_dir.to_path_buf(),
            database_url,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            http: reqwest::Client::new(),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(BIN);
        cmd.arg("serve").arg("--listen").arg("127.0.0.1:0").arg("--data-dir").arg(&self.data_dir).args(&self.extra);
        cmd.env_remove("TANDEM_DATABASE_URL");
        if let Some(url) = &self.database_url {
            cmd.arg("--database-url").arg(url);
        }
        cmd.env("TANDEM_LOG", "warn").stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("starting tandem");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("reading tandem's address");
        let addr = line
            .trim()
            .strip_prefix("tandem listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        self.base = addr.to_string();
        self.child = Some(child);
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server is running").id()
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            let status = child.wait().unwrap();
            assert!(status.success(), "tandem exited with {status}");
        }
    }

    pub fn restart(&mut self) {
        self.spawn();
    }

    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("{}{}", self.base, path);
        let req = match method {
            "GET" => self.http.get(url),
            "POST" => self.http.post(url),
            "DELETE" => self.http.delete(url),
            "PATCH" => self.http.patch(url),
            _ => unreachable!(),
        };
        let req = match body {
            Some(b) => req.json(&b),
            None => req,
        };
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) })
    }

    pub async fn raw(&self, path: &str, content_type: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
        let resp = self
            .http
            .post(format!("{}{}", self.base, path))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub async fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.call(method, path, body).await;
        assert!((200..300).contains(&status), "{method} {path}: {status} {v}");
        v
    }

    /// Starts a run and waits until it has finished; returns the run.
    pub async fn run_batch(&self, view: &str) -> Value {
        let (status, run) = self.call("POST", &format!("/v1/views/{view}/runs"), None).await;
        assert_eq!(status, 202, "{run}");
        self.wait_run(run["id"].as_i64().unwrap()).await
    }

    /// Waits until a run has finished and, if it succeeded, until its version is served
    /// (the catalog commit comes a moment before the server installs the version).
    pub async fn wait_run(&self, id: i64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let run = self.ok("GET", &format!("/v1/runs/{id}"), None).await;
            let served = || async {
                let view = self.ok("GET", &format!("/v1/views/{}", run["view"].as_str().unwrap()), None).await;
                view["batch_version"].as_i64() >= run["version"].as_i64()
            };
            if run["status"] == "failed" || (run["status"] == "succeeded" && served().await) {
                return run;
            }
            assert!(Instant::now() < deadline, "run {id} did not finish: {run}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Creates the `pageviews` dataset and `view` over it.
    pub async fn create_pageviews(&self, view: Value) {
        self.ok("POST", "/v1/datasets", Some(pageviews_dataset())).await;
        self.ok("POST", "/v1/views", Some(view)).await;
    }

    pub async fn query(&self, view: &str, q: Value) -> Value {
        self.ok("POST", &format!("/v1/views/{view}/query"), Some(q)).await
    }

    /// Asks `q` for an Arrow answer (`Accept: application/vnd.apache.arrow.stream`) and reads
    /// it back: `{"rows", "freshness"}` with each row as a JSON answer writes it (a timestamp
    /// in RFC 3339, an int64 as an integer, a float64 as a float), the freshness from the
    /// schema's metadata, and `"types"`: each column's name and Arrow type.
    pub async fn query_arrow(&self, view: &str, q: Value) -> Value {
        let accept = "application/vnd.apache.arrow.stream";
        arrow_answer(&self.query_as(view, q, accept, accept).await)
    }

    /// Asks `q` for a CSV answer (`Accept: text/csv`): its header and records, as text.
    pub async fn query_csv(&self, view: &str, q: Value) -> (Vec<String>, Vec<Vec<String>>) {
        let bytes = self.query_as(view, q, "text/csv", "text/csv; charset=utf-8; header=present").await;
        let mut reader = csv::Reader::from_reader(bytes.as_ref());
        let header = reader.headers().unwrap().iter().map(str::to_string).collect();
        let records = reader.records().map(|r| r.unwrap().iter().map(str::to_string).collect()).collect();
        (header, records)
    }

    /// Asks `q` with `Accept: accept`; checks the answer is a 200 of `content_type` and returns
    /// its bytes.
    async fn query_as(&self, view: &str, q: Value, accept: &str, content_type: &str) -> bytes::Bytes {
        let resp = self
            .http
            .post(format!("{}/v1/views/{view}/query", self.base))
            .header("accept", accept)
            .json(&q)
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 200, "{view} {q}");
        assert_eq!(resp.headers()["content-type"], content_type, "{view} {q}");
        resp.bytes().await.unwrap()
    }
}

/// A CSV answer's records as JSON rows, each field read as the type of the same cell of
/// `like` (the JSON answer to the same query): empty for null, the text of a number or bool.
/// A field that does not read as that type stays text, and so fails a comparison.
pub fn csv_rows(header: &[String], records: &[Vec<String>], like: &Value) -> Value {
    let like = like.as_array().unwrap();
    assert_eq!(records.len(), like.len(), "as many CSV records as JSON rows");
    let typed = |field: &str, like: &Value| -> Value {
        let parsed = match like {
            Value::Null => field.is_empty().then_some(Value::Null),
            Value::Bool(_) => field.parse::<bool>().ok().map(Value::Bool),
            Value::Number(n) if n.is_f64() => field.parse::<f64>().ok().map(|f| json!(f)),
            Value::Number(_) => field.parse::<i64>().ok().map(|i| json!(i)),
            _ => None,
        };
        parsed.unwrap_or_else(|| Value::String(field.to_string()))
    };
    let rows = records.iter().zip(like).map(|(record, row)| {
        assert_eq!(record.len(), header.len(), "a CSV record has a field for each column");
        let object = header.iter().zip(record).map(|(name, field)| (name.clone(), typed(field, &row[name])));
        Value::Object(object.collect())
    });
    Value::Array(rows.collect())
}

/// An Arrow answer as [`TestServer::query_arrow`] returns it.
pub fn arrow_answer(bytes: &[u8]) -> Value {
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::{DataType, Float64Type, Int64Type, TimestampMicrosecondType};
    use datafusion::arrow::ipc::reader::StreamReader;

    let reader = StreamReader::try_new(bytes, None).expect("an Arrow IPC stream");
    let schema = reader.schema();
    let freshness: Value = serde_json::from_str(&schema.metadata()["freshness"]).expect("freshness is JSON");
    let types: Vec<Value> = schema.fields().iter().map(|f| json!([f.name(), f.data_type().to_string()])).collect();
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.expect("a record batch");
        for r in 0..batch.num_rows() {
            let mut row = serde_json::Map::new();
            for (field, column) in schema.fields().iter().zip(batch.columns()) {
                let value = if column.is_null(r) {
                    Value::Null
                } else {
                    match field.data_type() {
                        DataType::Utf8 => json!(column.as_string::<i32>().value(r)),
                        DataType::Int64 => json!(column.as_primitive::<Int64Type>().value(r)),
                        DataType::Float64 => json!(column.as_primitive::<Float64Type>().value(r)),
                        DataType::Boolean => json!(column.as_boolean().value(r)),
                        // in the column's time zone, as the JSON answer writes it
                        DataType::Timestamp(_, zone) => {
                            let micros = column.as_primitive::<TimestampMicrosecondType>().value(r);
                            let t = chrono::DateTime::from_timestamp_micros(micros).unwrap();
                            match zone.as_deref() {
                                Some("UTC") => json!(t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)),
                                Some(zone) => {
                                    let zone: chrono_tz::Tz = zone.parse().expect("an IANA time zone");
                                    json!(t.with_timezone(&zone).to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false))
                                }
                                None => panic!("column {} is a timestamp without a time zone", field.name()),
                            }
                        }
                        other => panic!("column {} has unexpected type {other}", field.name()),
                    }
                };
                row.insert(field.name().clone(), value);
            }
            rows.push(Value::Object(row));
        }
    }
    json!({"rows": rows, "freshness": freshness, "types": types})
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A view counting all events by day.
pub fn count_view() -> Value {
    json!({"name": "v", "dataset": "pageviews", "granularity": "day", "measures": {"n": "count"}})
}

pub fn pageviews_dataset() -> Value {
    json!({"name": "pageviews", "time_field": "ts", "id_field": "event_id",
           "fields": {"ts": "timestamp", "event_id": "string", "country": "string", "duration_ms": "float64", "bytes": "int64", "bot": "bool"}})
}

/// The files under `dir` (at any depth) whose name ends in `.extension`, sorted by path.
pub fn files_under(dir: &Path, extension: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(files_under(&path, extension));
        } else if path.extension().is_some_and(|e| e == extension) {
            found.push(path);
        }
    }
    found.sort();
    found
}

/// `VmHWM` (peak) or `VmRSS` of a process, in bytes, as the kernel reports it.
pub fn memory(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}
