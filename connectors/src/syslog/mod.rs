//! The syslog sink: RFC 5424 messages with CEF, LEEF or JSON payloads over UDP (one datagram per
//! message), TCP or TLS (octet-counted frames on one long-lived connection). Syslog has no
//! acknowledgements: a batch counts as delivered once written (and flushed) to the socket, and a
//! connection that fails is dropped and opened again on the retry, which sends the batch again.

mod config;
mod encoder;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use async_trait::async_trait;
use peergraph_schemas::Alert;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio_rustls::rustls;
use tokio_rustls::TlsConnector;

pub use config::{SyslogFormat, SyslogSinkConfig, SyslogTransport};
pub use encoder::{
    cef, escape_cef_header, escape_cef_value, escape_leef_header, escape_leef_value, escape_sd_value, event_severity,
    leef, octet_counted, rfc5424, syslog_severity,
};

use crate::sink::{Sink, SinkError};

type Stream = Box<dyn AsyncWrite + Send + Sync + Unpin>;

enum Connection {
    Udp(UdpSocket),
    Stream(Stream),
}

/// Sends alert events to one syslog collector.
pub struct SyslogSink {
    config: SyslogSinkConfig,
    hostname: String,
    tls: Option<TlsConnector>,
    connection: Option<Connection>,
}

/// The machine's host name, for the HOSTNAME field.
fn local_hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|name| !name.is_empty())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|name| name.trim().to_owned()))
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "-".into())
}

/// Accepts any server certificate: only with `tls.insecure_skip_verify = true`.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The TLS client: the Mozilla roots plus `tls.ca_file`, or no verification at all when asked.
fn tls_connector(config: &SyslogSinkConfig) -> Result<TlsConnector, SinkError> {
    use rustls_pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|error| SinkError::permanent(format!("syslog TLS setup: {error}")))?;
    let client = if config.tls.insecure_skip_verify {
        tracing::warn!("TLS certificate verification is disabled for the syslog sink (tls.insecure_skip_verify)");
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
            .with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        if let Some(path) = &config.tls.ca_file {
            let certificates = rustls_pki_types::CertificateDer::pem_file_iter(path)
                .map_err(|error| SinkError::permanent(format!("read tls.ca_file {}: {error}", path.display())))?;
            for certificate in certificates {
                let certificate = certificate
                    .map_err(|error| SinkError::permanent(format!("parse tls.ca_file {}: {error}", path.display())))?;
                roots
                    .add(certificate)
                    .map_err(|error| SinkError::permanent(format!("use tls.ca_file {}: {error}", path.display())))?;
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(TlsConnector::from(Arc::new(client)))
}

impl SyslogSink {
    pub(crate) fn new(config: SyslogSinkConfig) -> Result<SyslogSink, SinkError> {
        let tls = match config.transport {
            SyslogTransport::Tls => Some(tls_connector(&config)?),
            _ => None,
        };
        let hostname = config.hostname.clone().unwrap_or_else(local_hostname);
        Ok(SyslogSink { config, hostname, tls, connection: None })
    }

    fn io_error(&self, what: &str, error: std::io::Error) -> SinkError {
        // A refused or reset connection is the collector restarting: worth a retry.
        SinkError::retryable(format!("syslog {what} {}: {error}", self.config.address))
    }

    async fn connect(&self) -> Result<Connection, SinkError> {
        let timeout = self.config.timeout;
        let address = self.config.address.as_str();
        let timed_out = || SinkError::retryable(format!("syslog connect to {address}: timed out after {timeout:?}"));
        match self.config.transport {
            SyslogTransport::Udp => {
                let target = tokio::net::lookup_host(address)
                    .await
                    .map_err(|error| self.io_error("resolve", error))?
                    .next()
                    .ok_or_else(|| SinkError::retryable(format!("syslog: {address} resolves to nothing")))?;
                let local = if target.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" };
                let socket = UdpSocket::bind(local).await.map_err(|error| self.io_error("bind for", error))?;
                socket.connect(target).await.map_err(|error| self.io_error("connect to", error))?;
                Ok(Connection::Udp(socket))
            }
            SyslogTransport::Tcp => {
                let stream = tokio::time::timeout(timeout, TcpStream::connect(address))
                    .await
                    .map_err(|_| timed_out())?
                    .map_err(|error| self.io_error("connect to", error))?;
                let _ = stream.set_nodelay(true);
                Ok(Connection::Stream(Box::new(stream)))
            }
            SyslogTransport::Tls => {
                let name = self.config.server_name.clone().unwrap_or_else(|| self.config.host().to_owned());
                let server_name = rustls_pki_types::ServerName::try_from(name.clone())
                    .map_err(|error| SinkError::permanent(format!("syslog: server name {name:?}: {error}")))?;
                let connector = self.tls.clone().ok_or_else(|| SinkError::permanent("syslog: TLS is not set up"))?;
                let handshake = async {
                    let stream =
                        TcpStream::connect(address).await.map_err(|error| self.io_error("connect to", error))?;
                    let _ = stream.set_nodelay(true);
                    connector.connect(server_name, stream).await.map_err(|error| {
                        // A certificate the server cannot prove is a configuration problem.
                        let reason = format!("syslog TLS handshake with {address} ({name}): {error}");
                        if error.get_ref().is_some_and(|inner| inner.to_string().contains("certificate")) {
                            SinkError::permanent(reason)
                        } else {
                            SinkError::retryable(reason)
                        }
                    })
                };
                let stream = tokio::time::timeout(timeout, handshake).await.map_err(|_| timed_out())??;
                Ok(Connection::Stream(Box::new(stream)))
            }
        }
    }

    async fn send(&mut self, messages: &[String]) -> Result<(), SinkError> {
        if self.connection.is_none() {
            self.connection = Some(self.connect().await?);
        }
        let timeout = self.config.timeout;
        let result = match self.connection.as_mut() {
            Some(Connection::Udp(socket)) => {
                let mut result = Ok(());
                for message in messages {
                    if let Err(error) = socket.send(message.as_bytes()).await {
                        result = Err(error);
                        break;
                    }
                }
                result
            }
            Some(Connection::Stream(stream)) => {
                let mut frames = Vec::with_capacity(messages.iter().map(|m| m.len() + 8).sum());
                for message in messages {
                    octet_counted(message, &mut frames);
                }
                match tokio::time::timeout(timeout, async {
                    stream.write_all(&frames).await?;
                    stream.flush().await
                })
                .await
                {
                    Ok(result) => result,
                    Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "write timed out")),
                }
            }
            None => Ok(()),
        };
        if let Err(error) = result {
            // The connection is in an unknown state: start over on the retry.
            self.connection = None;
            return Err(self.io_error("write to", error));
        }
        Ok(())
    }
}

#[async_trait]
impl Sink for SyslogSink {
    fn name(&self) -> &str {
        "syslog"
    }

    /// Opens the connection (TCP connect and TLS handshake, or UDP resolve and bind).
    async fn health_check(&mut self) -> Result<(), SinkError> {
        self.connection = Some(self.connect().await?);
        Ok(())
    }

    async fn deliver(&mut self, batch: &[Alert]) -> Result<(), SinkError> {
        let pid = std::process::id();
        let messages: Vec<String> =
            batch.iter().map(|alert| rfc5424(alert, &self.config, &self.hostname, pid)).collect();
        self.send(&messages).await
    }

    async fn close(&mut self) -> Result<(), SinkError> {
        if let Some(Connection::Stream(mut stream)) = self.connection.take() {
            let _ = stream.shutdown().await;
        }
        Ok(())
    }
}
