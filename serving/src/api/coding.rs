//! Content codings, both ways: the compressed bodies ingest takes (`Content-Encoding`) and
//! the compressed answers queries give (`Accept-Encoding`), gzip or zstd either way.
//!
//! The other routes that answer rows or lists have their answers compressed by tower-http's
//! layer (`super::compression`); a query's answer is compressed whole by
//! [`Coding::compress`], on a blocking thread (`super::views`), because the layer compresses
//! on the connection's task: about 10 ms of CPU for the bench's 30-day answer, during which
//! the ingest requests queued on that async worker wait (`bench/HISTORY.md`, session 54).

use std::io::{Read, Write};

use axum::http::header::{ACCEPT_ENCODING, CONTENT_ENCODING};
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;

use super::error::{ApiError, ApiResult};

/// An answer of at least this many bytes is compressed (gzip or zstd, at their fastest
/// levels) when the request's `Accept-Encoding` allows it.
pub const COMPRESS_FROM: usize = 1024;

/// In the order of preference when a request weighs them alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Coding {
    Gzip,
    Zstd,
}

impl Coding {
    pub fn name(self) -> &'static str {
        match self {
            Coding::Gzip => "gzip",
            Coding::Zstd => "zstd",
        }
    }

    /// A request body's `Content-Encoding`: `None` for none (or `identity`), else `gzip`
    /// (`x-gzip`) or `zstd`; any other, or more than one coding, is 415.
    pub fn of_body(headers: &HeaderMap) -> ApiResult<Option<Coding>> {
        let mut codings = headers
            .get_all(CONTENT_ENCODING)
            .iter()
            .flat_map(|v| v.to_str().unwrap_or("?").split(','))
            .map(|c| c.trim().to_ascii_lowercase())
            .filter(|c| !c.is_empty() && c != "identity");
        let coding = match codings.next().as_deref() {
            None => None,
            Some("gzip" | "x-gzip") => Some(Coding::Gzip),
            Some("zstd") => Some(Coding::Zstd),
            Some(other) => return Err(unsupported_encoding(format!("content-encoding {other:?} is not gzip or zstd"))),
        };
        match codings.next() {
            None => Ok(coding),
            Some(_) => Err(unsupported_encoding("a body is taken in one content-encoding, gzip or zstd, not several")),
        }
    }

    /// The coding to answer in, from the request's `Accept-Encoding`: the one of gzip
    /// (`x-gzip`) and zstd with the highest weight above 0, zstd when they tie; `None` (the
    /// answer as it is) when neither is named. `*` is not taken to name either.
    pub fn accepted(headers: &HeaderMap) -> Option<Coding> {
        weighted(headers, ACCEPT_ENCODING.as_str())
            .filter(|(_, q)| *q > 0.0)
            .filter_map(|(name, q)| match name.as_str() {
                "zstd" => Some((q, Coding::Zstd)),
                "gzip" | "x-gzip" => Some((q, Coding::Gzip)),
                _ => None,
            })
            .max_by(|(qa, a), (qb, b)| qa.total_cmp(qb).then(a.cmp(b)))
            .map(|(_, coding)| coding)
    }

    /// `pieces` compressed as one body, at the coding's fastest level; each piece is let go
    /// once compressed, so that a large answer is not held twice over.
    pub fn compress(self, pieces: Vec<Bytes>) -> std::io::Result<Bytes> {
        let len: usize = pieces.iter().map(Bytes::len).sum();
        let out = Vec::with_capacity(len / 4);
        let out = match self {
            Coding::Gzip => {
                let mut encoder = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
                pieces.into_iter().try_for_each(|piece| encoder.write_all(&piece))?;
                encoder.finish()?
            }
            Coding::Zstd => {
                let mut encoder = zstd::stream::write::Encoder::new(out, 1)?;
                encoder.include_contentsize(true)?;
                encoder.set_pledged_src_size(Some(len as u64))?;
                pieces.into_iter().try_for_each(|piece| encoder.write_all(&piece))?;
                encoder.finish()?
            }
        };
        Ok(Bytes::from(out))
    }

    /// A reader of `raw` decoded.
    pub fn decoder<'r>(self, raw: &'r [u8]) -> std::io::Result<Box<dyn Read + Send + 'r>> {
        Ok(match self {
            Coding::Gzip => Box::new(flate2::read::MultiGzDecoder::new(raw)),
            Coding::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(raw)?),
        })
    }
}

fn unsupported_encoding(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_encoding", message)
}

/// The entries of a header that lists weighted values (`Accept`, `Accept-Encoding`): each
/// value lowercased, without its parameters, with its weight (`q`, 1 when absent or unreadable).
pub fn weighted<'h>(headers: &'h HeaderMap, name: &str) -> impl Iterator<Item = (String, f64)> + 'h {
    headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).filter_map(|entry| {
        let mut parts = entry.split(';');
        let value = parts.next()?.trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q=").and_then(|q| q.trim().parse::<f64>().ok()))
            .next_back()
            .unwrap_or(1.0);
        (!value.is_empty()).then_some((value, q))
    })
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn accepting(value: &str) -> Option<Coding> {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT_ENCODING, HeaderValue::from_str(value).unwrap());
        Coding::accepted(&headers)
    }

    #[test]
    fn the_answer_takes_the_heaviest_accepted_coding() {
        assert_eq!(Coding::accepted(&HeaderMap::new()), None);
        assert_eq!(accepting("gzip, deflate, br"), Some(Coding::Gzip));
        assert_eq!(accepting("gzip, zstd"), Some(Coding::Zstd));
        assert_eq!(accepting("zstd;q=0.5, gzip"), Some(Coding::Gzip));
        assert_eq!(accepting("ZSTD;q=0, x-gzip;q=0.1"), Some(Coding::Gzip));
        assert_eq!(accepting("zstd;q=0, gzip;q=0"), None);
        assert_eq!(accepting("identity, *"), None);
        assert_eq!(accepting("br"), None);
    }

    #[test]
    fn a_compressed_answer_decodes_to_its_pieces() {
        let pieces: Vec<Bytes> = (0..50).map(|i| Bytes::from(format!("{{\"row\":{i}}},").repeat(40))).collect();
        let whole = pieces.concat();
        for coding in [Coding::Gzip, Coding::Zstd] {
            let packed = coding.compress(pieces.clone()).unwrap();
            assert!(packed.len() < whole.len() / 4, "{coding:?}: {} of {}", packed.len(), whole.len());
            let mut back = Vec::new();
            coding.decoder(&packed).unwrap().read_to_end(&mut back).unwrap();
            assert_eq!(back, whole, "{coding:?}");
        }
    }
}
