//! The throughput and latency loops' HTTP/1.1 client: one keep-alive connection, requests
//! written whole from prepared bytes, responses read by their `Content-Length` into a buffer
//! kept between requests.
//!
//! The load generator runs on the same two cores as the server, so every microsecond it
//! spends per request is taken from the server. With `reqwest` (connection pool, header
//! maps, a body stream per response) the load generator used 43 % of the CPU both processes
//! used during single-event ingest, about 24 µs per request against the server's 31 µs.
//! This client does what those loops need and nothing else: tandem's answers always carry a
//! `Content-Length`, and the loops only read status and body.

use anyhow::{Context, bail};
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A request of `path`, with a body of a content type or none, as the bytes to send.
pub fn request(host: &str, method: &str, path: &str, body: Option<(&str, &[u8])>) -> Bytes {
    request_with(host, method, path, &[], body)
}

/// [`request`] with more headers (name and value each).
pub fn request_with(
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<(&str, &[u8])>,
) -> Bytes {
    let mut request = format!("{method} {path} HTTP/1.1\r\nhost: {host}\r\n").into_bytes();
    for (name, value) in headers {
        request.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    if let Some((content_type, body)) = body {
        request.extend_from_slice(
            format!("content-type: {content_type}\r\ncontent-length: {}\r\n\r\n", body.len()).as_bytes(),
        );
        request.extend_from_slice(body);
    } else {
        request.extend_from_slice(b"\r\n");
    }
    Bytes::from(request)
}

/// One keep-alive connection.
pub struct Connection {
    stream: TcpStream,
    /// The response being read (kept between requests, so as not to allocate for each).
    buf: Vec<u8>,
}

impl Connection {
    /// Connects to `host` (`ip:port`).
    pub async fn open(host: &str) -> anyhow::Result<Connection> {
        let stream = TcpStream::connect(host).await.with_context(|| format!("connecting to {host}"))?;
        stream.set_nodelay(true)?;
        Ok(Connection { stream, buf: Vec::with_capacity(4096) })
    }

    /// Sends a prepared request and returns the response's status and body.
    pub async fn send(&mut self, request: &[u8]) -> anyhow::Result<(u16, &[u8])> {
        self.stream.write_all(request).await?;
        self.buf.clear();
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            self.read_more().await?;
        };
        let head = std::str::from_utf8(&self.buf[..head_end]).context("response head is not UTF-8")?;
        let status: u16 = head
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .with_context(|| format!("bad status line in {head:?}"))?;
        let length: usize = head
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length").then(|| value.trim().parse().ok())?
            })
            .with_context(|| format!("no content-length in {head:?}"))?;
        while self.buf.len() < head_end + length {
            self.read_more().await?;
        }
        if self.buf.len() > head_end + length {
            bail!("bytes after the response: one request at a time is in flight");
        }
        Ok((status, &self.buf[head_end..]))
    }

    async fn read_more(&mut self) -> anyhow::Result<()> {
        self.buf.reserve(4096);
        if self.stream.read_buf(&mut self.buf).await? == 0 {
            bail!("the server closed the connection");
        }
        Ok(())
    }
}
