//! What every HTTP sink shares: the client (rustls, certificates verified unless a sink opts out),
//! and the one classification of responses and transport errors into retryable or permanent.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};

use crate::sink::SinkError;

/// TLS settings of one sink.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Accept any certificate and host name. Only for testing; an attacker on the path can read and
    /// change everything sent.
    pub insecure_skip_verify: bool,
    /// A PEM file of extra CA certificates to trust (a private CA), besides the Mozilla roots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

/// Settings every HTTP sink has.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Longest time one request may take, connecting included.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// TLS settings.
    pub tls: TlsConfig,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig { timeout: Duration::from_secs(30), tls: TlsConfig::default() }
    }
}

/// Builds the client of one sink.
pub(crate) fn client(config: &HttpConfig) -> Result<reqwest::Client, SinkError> {
    let mut builder = reqwest::Client::builder()
        .timeout(config.timeout)
        .connect_timeout(config.timeout.min(Duration::from_secs(10)))
        .user_agent(concat!("peergraph-connect/", env!("CARGO_PKG_VERSION")));
    if config.tls.insecure_skip_verify {
        tracing::warn!("TLS certificate verification is disabled for a sink (tls.insecure_skip_verify)");
        builder = builder.danger_accept_invalid_certs(true);
    }
    if let Some(path) = &config.tls.ca_file {
        let pem = std::fs::read(path)
            .map_err(|error| SinkError::permanent(format!("read tls.ca_file {}: {error}", path.display())))?;
        for certificate in reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|error| SinkError::permanent(format!("parse tls.ca_file {}: {error}", path.display())))?
        {
            builder = builder.add_root_certificate(certificate);
        }
    }
    builder.build().map_err(|error| SinkError::permanent(format!("build the HTTP client: {error}")))
}

/// Validates a base URL setting; `what` names it ("pagerduty url").
pub(crate) fn parse_url(what: &str, url: &str) -> Result<reqwest::Url, String> {
    let parsed = reqwest::Url::parse(url).map_err(|error| format!("{what}: {url:?} is not a URL: {error}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("{what}: {url:?} is not an http(s) URL"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(format!("{what}: put credentials in the sink's secret settings, not in the URL"));
    }
    Ok(parsed)
}

/// Joins `path` ("/v2/enqueue") onto a base URL that may carry a path prefix of its own.
pub(crate) fn join(base: &reqwest::Url, path: &str) -> reqwest::Url {
    let mut url = base.clone();
    let joined = format!("{}/{}", base.path().trim_end_matches('/'), path.trim_start_matches('/'));
    url.set_path(&joined);
    url
}

/// A transport failure (no response): timeouts, refused or reset connections are worth a retry; a
/// request that could not even be built is not. The message names what was being done, never the
/// URL's query or any header.
pub(crate) fn transport_error(what: &str, error: reqwest::Error) -> SinkError {
    let timed_out = error.is_timeout();
    let error = error.without_url();
    let mut reason = format!("{what}: {error}");
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        reason.push_str(": ");
        reason.push_str(&cause.to_string());
        source = cause.source();
    }
    if timed_out {
        reason.push_str(" (timed out)");
    }
    if error.is_builder() {
        SinkError::permanent(reason)
    } else {
        SinkError::retryable(reason)
    }
}

/// How long a `Retry-After` header asks to wait (delta-seconds; an HTTP date is read as 1 s).
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    match value.parse::<u64>() {
        Ok(seconds) => Some(Duration::from_secs(seconds)),
        Err(_) => humantime::parse_rfc3339_weak(value)
            .ok()
            .and_then(|at| at.duration_since(std::time::SystemTime::now()).ok())
            .or(Some(Duration::from_secs(1))),
    }
}

/// Whether a status is worth retrying: 408, 425, 429 and every 5xx except 501 / 505.
pub(crate) fn is_retryable_status(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 425 | 429) || (status.is_server_error() && !matches!(status.as_u16(), 501 | 505))
}

/// The error for a non-success response, with the start of its body for context.
pub(crate) fn status_error(what: &str, status: StatusCode, headers: &HeaderMap, body: &str) -> SinkError {
    let reason = format!("{what}: HTTP {status}: {}", excerpt(body));
    if is_retryable_status(status) {
        SinkError::retryable_after(reason, retry_after(headers))
    } else {
        SinkError::permanent(reason)
    }
}

/// Sends `request`; a success status gives the body, anything else the classified error.
pub(crate) async fn send(what: &str, request: reqwest::RequestBuilder) -> Result<(StatusCode, String), SinkError> {
    let response = request.send().await.map_err(|error| transport_error(what, error))?;
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.text().await.map_err(|error| transport_error(what, error))?;
    if status.is_success() {
        Ok((status, body))
    } else {
        Err(status_error(what, status, &headers, &body))
    }
}

/// The first 300 characters of a response body, on one line.
pub(crate) fn excerpt(body: &str) -> String {
    let mut shown: String = body.chars().take(300).map(|c| if c.is_control() { ' ' } else { c }).collect();
    if body.chars().count() > 300 {
        shown.push('…');
    }
    shown
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    #[test]
    fn statuses_are_retryable_only_when_waiting_can_help() {
        for code in [408, 425, 429, 500, 502, 503, 504] {
            assert!(is_retryable_status(StatusCode::from_u16(code).expect("code")), "{code}");
        }
        for code in [400, 401, 403, 404, 409, 413, 422, 501, 505] {
            assert!(!is_retryable_status(StatusCode::from_u16(code).expect("code")), "{code}");
        }
    }

    #[test]
    fn retry_after_seconds_are_carried_on_the_error() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("12"));
        let error = status_error("post", StatusCode::TOO_MANY_REQUESTS, &headers, "slow down");
        assert_eq!(error.retry_after(), Some(Duration::from_secs(12)));
        assert!(error.to_string().contains("429") && error.to_string().contains("slow down"), "{error}");
        let error = status_error("post", StatusCode::UNAUTHORIZED, &HeaderMap::new(), "bad token");
        assert!(!error.is_retryable());
    }

    #[test]
    fn urls_with_credentials_are_refused_and_paths_join_onto_prefixes() {
        assert!(parse_url("u", "https://user:pw@example.com").unwrap_err().contains("secret settings"));
        assert!(parse_url("u", "ftp://example.com").is_err());
        let base = parse_url("u", "http://127.0.0.1:8080/prefix/").expect("url");
        assert_eq!(join(&base, "/v2/enqueue").as_str(), "http://127.0.0.1:8080/prefix/v2/enqueue");
        let base = parse_url("u", "http://127.0.0.1:8080").expect("url");
        assert_eq!(join(&base, "v2/enqueue").as_str(), "http://127.0.0.1:8080/v2/enqueue");
    }
}
