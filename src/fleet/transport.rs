//! How repository files are fetched: `file://` (a folder, an air-gapped copy) through tough's
//! own filesystem transport, `http(s)://` through `ureq`.
//!
//! Why not tough's `http` feature: it brings reqwest with rustls on aws-lc-rs, and a second
//! rustls crypto provider in the gateway's build makes the MQTT client's TLS configuration
//! ambiguous. `ureq` uses rustls on ring, the provider the MQTT link already uses.
//!
//! A cut download resumes: when a response ends before its `Content-Length` (a dropped Wi-Fi,
//! a proxy timeout), the next attempt asks for the rest with `Range: bytes=<have>-`; a server
//! that answers `200` instead of `206` sends the whole file again and the bytes so far are
//! dropped. Nothing here decides whether bytes are good — tough checks every file's length
//! and sha256 against signed metadata after this returns, so a resumed download that was
//! spliced wrongly is refused like any tampered file.

use std::io::Read;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tough::{FilesystemTransport, Transport, TransportError, TransportErrorKind};
use url::Url;

/// The transport of [`super::client`]: files and HTTP(S) with resumed downloads.
#[derive(Debug, Clone)]
pub struct Fetcher {
    /// Requests per file before giving up (the first plus resumes/retries).
    pub attempts: u32,
    /// Pause before the first retry, doubled per retry.
    pub backoff: Duration,
    /// Largest file accepted (metadata and targets; tough enforces the signed lengths).
    pub max_bytes: u64,
}

impl Default for Fetcher {
    fn default() -> Self {
        Fetcher {
            attempts: 6,
            backoff: Duration::from_millis(250),
            max_bytes: 512 << 20,
        }
    }
}

#[async_trait]
impl Transport for Fetcher {
    async fn fetch(&self, url: Url) -> Result<tough::TransportStream, TransportError> {
        match url.scheme() {
            "file" => FilesystemTransport.fetch(url).await,
            "http" | "https" => {
                let this = self.clone();
                let u = url.clone();
                let bytes = tokio::task::spawn_blocking(move || this.get(&u))
                    .await
                    .map_err(|e| TransportError::new_with_cause(Other, url.as_str(), e))??;
                Ok(Box::pin(futures_util::stream::once(async move {
                    Ok(Bytes::from(bytes))
                })))
            }
            _ => Err(TransportError::new(
                TransportErrorKind::UnsupportedUrlScheme,
                url,
            )),
        }
    }
}

use TransportErrorKind::Other;

impl Fetcher {
    /// GET `url` whole, resuming after a cut. 404 (and 403, what object stores answer for a
    /// missing key without list permission) is "file not found", which TUF relies on to learn
    /// there is no newer root.
    fn get(&self, url: &Url) -> Result<Vec<u8>, TransportError> {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(15))
            .timeout_read(Duration::from_secs(30))
            .build();
        let mut body: Vec<u8> = Vec::new();
        let mut last = String::new();
        for attempt in 0..self.attempts.max(1) {
            if attempt > 0 {
                std::thread::sleep(self.backoff * 2u32.saturating_pow(attempt - 1).min(32));
                tracing::info!(
                    url = %url,
                    have = body.len(),
                    attempt = attempt + 1,
                    "download cut ({last}); resuming"
                );
            }
            let mut req = agent.get(url.as_str());
            if !body.is_empty() {
                req = req.set("Range", &format!("bytes={}-", body.len()));
            }
            let resp = match req.call() {
                Ok(r) => r,
                Err(ureq::Error::Status(404 | 403 | 410, _)) => {
                    return Err(TransportError::new(TransportErrorKind::FileNotFound, url))
                }
                Err(ureq::Error::Status(code, r)) if code >= 500 || code == 429 => {
                    last = format!("HTTP {code} {}", r.status_text());
                    continue;
                }
                Err(ureq::Error::Status(code, r)) => {
                    return Err(TransportError::new_with_cause(
                        Other,
                        url,
                        format!("HTTP {code} {}", r.status_text()),
                    ))
                }
                Err(e) => {
                    last = e.to_string();
                    continue;
                }
            };
            if resp.status() != 206 {
                // The whole file (first request, or a server without Range support).
                body.clear();
            }
            let expected = resp
                .header("Content-Length")
                .and_then(|v| v.parse::<u64>().ok())
                .map(|n| n + body.len() as u64);
            if expected.is_some_and(|n| n > self.max_bytes) {
                return Err(TransportError::new_with_cause(
                    Other,
                    url,
                    format!("larger than {} bytes", self.max_bytes),
                ));
            }
            let room = self.max_bytes.saturating_sub(body.len() as u64) + 1;
            let read = resp.into_reader().take(room).read_to_end(&mut body);
            if body.len() as u64 > self.max_bytes {
                return Err(TransportError::new_with_cause(
                    Other,
                    url,
                    format!("larger than {} bytes", self.max_bytes),
                ));
            }
            match (read, expected) {
                (Err(e), _) => last = e.to_string(),
                (Ok(_), Some(n)) if (body.len() as u64) < n => {
                    last = format!("{} of {n} bytes", body.len())
                }
                (Ok(_), _) => return Ok(body),
            }
        }
        Err(TransportError::new_with_cause(
            Other,
            url,
            format!("gave up after {} attempts: {last}", self.attempts),
        ))
    }
}
