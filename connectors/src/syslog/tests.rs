//! The syslog sink against a real rsyslog (Debian's `rsyslog` and `rsyslog-gnutls`) listening on
//! loopback over UDP, TCP and TLS, configured by `deploy/rsyslog/test-collector.sh`: rsyslog's own
//! RFC 5424 parser must read our header fields and structured data, and the CEF / LEEF payloads
//! must parse back to the alert's text, hostile characters included.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use peergraph_schemas::AlertEvent;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::process::{Child, Command};

use super::*;
use crate::test_support::alert;

/// A running rsyslogd owned by the test; killed when dropped.
struct Collector {
    dir: tempfile::TempDir,
    _rsyslogd: Child,
    udp: u16,
    tcp: u16,
    tls: u16,
}

fn rsyslogd_binary() -> PathBuf {
    for candidate in ["/usr/sbin/rsyslogd", "/sbin/rsyslogd"] {
        if Path::new(candidate).exists() {
            return candidate.into();
        }
    }
    panic!(
        "rsyslogd is not installed: the syslog sink is tested against a real rsyslog. Install the Debian \
         packages rsyslog and rsyslog-gnutls (scripts/test does this)"
    );
}

async fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").await.expect("bind").local_addr().expect("address").port()
}

/// Waits for `condition`, checking every 50 ms, for at most `limit`.
async fn wait_for(what: &str, limit: Duration, mut condition: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !condition().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_owned).collect()
}

impl Collector {
    async fn start() -> Collector {
        let binary = rsyslogd_binary();
        let dir = tempfile::tempdir().expect("dir");
        let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind").local_addr().expect("address").port();
        let (tcp, tls) = (free_tcp_port().await, free_tcp_port().await);
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/rsyslog/test-collector.sh");
        let prepared = Command::new("bash")
            .arg(&script)
            .arg(dir.path())
            .args([udp.to_string(), tcp.to_string(), tls.to_string()])
            .output()
            .await
            .expect("run test-collector.sh");
        assert!(prepared.status.success(), "test-collector.sh failed: {}", String::from_utf8_lossy(&prepared.stderr));
        let log = std::fs::File::create(dir.path().join("rsyslogd.out")).expect("log file");
        let rsyslogd = Command::new(binary)
            .arg("-n")
            .arg("-f")
            .arg(dir.path().join("rsyslog.conf"))
            .arg("-i")
            .arg(dir.path().join("rsyslogd.pid"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start rsyslogd");
        let collector = Collector { dir, _rsyslogd: rsyslogd, udp, tcp, tls };
        for port in [tcp, tls] {
            wait_for("rsyslog to listen", Duration::from_secs(15), async || {
                TcpStream::connect(("127.0.0.1", port)).await.is_ok()
            })
            .await;
        }
        // UDP has no handshake: send probes until one is written.
        let probe = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let udp_log = collector.file("udp");
        wait_for("rsyslog to receive UDP", Duration::from_secs(15), async || {
            let _ = probe.send_to(b"<13>1 - - probe - - - ready", ("127.0.0.1", udp)).await;
            lines(&udp_log).iter().any(|line| line.contains("ready"))
        })
        .await;
        collector
    }

    fn file(&self, input: &str) -> PathBuf {
        self.dir.path().join(format!("{input}.log"))
    }

    /// The lines of `input`'s file from our app, once there are `count`.
    async fn received(&self, input: &str, count: usize) -> Vec<String> {
        let path = self.file(input);
        let ours = |path: &Path| -> Vec<String> {
            lines(path).into_iter().filter(|line| fields(line)["app"] == "peergraph").collect()
        };
        wait_for(&format!("{count} messages on {input}"), Duration::from_secs(15), async || ours(&path).len() >= count)
            .await;
        ours(&path)
    }
}

/// Splits at `separator` where it is not escaped by a backslash.
fn split_unescaped(text: &str, separator: char, limit: usize) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            parts.last_mut().expect("part").push(c);
            if let Some(next) = chars.next() {
                parts.last_mut().expect("part").push(next);
            }
        } else if c == separator && parts.len() < limit {
            parts.push(String::new());
        } else {
            parts.last_mut().expect("part").push(c);
        }
    }
    parts
}

fn unescape(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('r') => out.push('\r'),
                Some(other) => out.push(other),
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A CEF message as an ArcSight parser reads it: 7 header fields, then `key=value` pairs where a
/// value runs up to the space before the next unescaped `key=`.
fn parse_cef(message: &str) -> (Vec<String>, BTreeMap<String, String>) {
    let parts = split_unescaped(message, '|', 8);
    assert_eq!(parts.len(), 8, "{message}");
    let header: Vec<String> = parts[..7].iter().map(|part| unescape(part)).collect();
    let extension = &parts[7];
    // Positions of unescaped '='.
    let bytes = extension.as_bytes();
    let mut equals = Vec::new();
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'\\' => index += 2,
            b'=' => {
                equals.push(index);
                index += 1
            }
            _ => index += 1,
        }
    }
    let mut fields = BTreeMap::new();
    for (n, &at) in equals.iter().enumerate() {
        let key_start = extension[..at].rfind(' ').map_or(0, |space| space + 1);
        let value_end = equals.get(n + 1).map_or(extension.len(), |&next| extension[..next].rfind(' ').unwrap_or(next));
        fields.insert(extension[key_start..at].to_owned(), unescape(&extension[at + 1..value_end]));
    }
    (header, fields)
}

/// A LEEF 2.0 message: 6 header fields (the last names the delimiter), then delimited attributes.
fn parse_leef(message: &str) -> (Vec<String>, BTreeMap<String, String>) {
    let parts = split_unescaped(message, '|', 7);
    assert_eq!(parts.len(), 7, "{message}");
    let header: Vec<String> = parts[..6].iter().map(|part| unescape(part)).collect();
    let delimiter = header[5].chars().next().expect("a delimiter");
    let attributes = split_unescaped(&parts[6], delimiter, usize::MAX)
        .into_iter()
        .filter_map(|pair| pair.split_once('=').map(|(key, value)| (key.to_owned(), unescape(value))))
        .collect();
    (header, attributes)
}

fn hostile(id: &str, event: AlertEvent) -> Alert {
    let mut alert = alert(id, event);
    alert.detector = "scan|sweep".into();
    alert.summary = "a=b | c\\d\nnext ] \"quoted\" ^caret é".into();
    alert.entity = "ip:10.0.0.5".into();
    alert
}

fn sink(collector: &Collector, transport: SyslogTransport, format: SyslogFormat) -> SyslogSink {
    let port = match transport {
        SyslogTransport::Udp => collector.udp,
        SyslogTransport::Tcp => collector.tcp,
        SyslogTransport::Tls => collector.tls,
    };
    let ca_file = (transport == SyslogTransport::Tls).then(|| collector.dir.path().join("ca.pem"));
    SyslogSinkConfig {
        address: format!("localhost:{port}"),
        transport,
        format,
        hostname: Some("ndr-test".into()),
        tls: crate::http::TlsConfig { ca_file, insecure_skip_verify: false },
        timeout: Duration::from_secs(5),
        ..SyslogSinkConfig::default()
    }
    .build()
    .expect("builds")
}

/// rsyslog's view of one message: `pri`, `app`, `procid`, `msgid`, `sd` (structured data), `msg`.
fn fields(line: &str) -> BTreeMap<String, String> {
    serde_json::from_str(line).unwrap_or_else(|error| panic!("rsyslog wrote {line:?}, not JSON: {error}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsyslog_receives_escaped_cef_and_leef_over_udp_tcp_and_tls() {
    let collector = Collector::start().await;
    let batch =
        vec![hostile("a1", AlertEvent::Raised), hostile("a2", AlertEvent::Updated), hostile("a1", AlertEvent::Cleared)];

    let mut udp = sink(&collector, SyslogTransport::Udp, SyslogFormat::Cef);
    let mut tcp = sink(&collector, SyslogTransport::Tcp, SyslogFormat::Leef);
    let mut tls = sink(&collector, SyslogTransport::Tls, SyslogFormat::Cef);
    for sink in [&mut udp, &mut tcp, &mut tls] {
        sink.health_check().await.expect("reachable");
        sink.deliver(&batch).await.expect("delivered");
        sink.deliver(&batch[..1]).await.expect("delivered on the same connection");
        sink.close().await.expect("closed");
    }

    for input in ["udp", "tls"] {
        let received = collector.received(input, 4).await;
        assert_eq!(received.len(), 4, "{received:#?}");
        let first = fields(&received[0]);
        // local0 (16) * 8 + err (3): rsyslog parsed our header as RFC 5424.
        let header_fields: Vec<&str> = ["pri", "app", "procid", "msgid"].iter().map(|f| first[*f].as_str()).collect();
        assert_eq!(header_fields, ["131", "peergraph", &std::process::id().to_string(), "raised"], "{received:#?}");
        assert_eq!(
            first["sd"],
            "[peergraph@32473 alertId=\"a1\" event=\"raised\" detector=\"scan|sweep\" severity=\"high\"]"
        );
        let (header, extension) = parse_cef(&first["msg"]);
        assert_eq!(header[0], "CEF:0");
        assert_eq!(header[4], "scan|sweep");
        assert_eq!(header[5], "a=b | c\\d next ] \"quoted\" ^caret é", "header line breaks become spaces");
        assert_eq!(header[6], "8");
        assert_eq!(extension["msg"], "a=b | c\\d\nnext ] \"quoted\" ^caret é");
        assert_eq!(extension["externalId"], "a1");
        assert_eq!(extension["cs1"], "ip:10.0.0.5");
        assert_eq!(extension["src"], "10.0.0.5");
        assert_eq!(extension["act"], "raised");
        let msgids: Vec<String> = received.iter().map(|line| fields(line)["msgid"].clone()).collect();
        assert_eq!(msgids, ["raised", "updated", "cleared", "raised"]);
    }

    let received = collector.received("tcp", 4).await;
    assert_eq!(received.len(), 4, "{received:#?}");
    let (header, attributes) = parse_leef(&fields(&received[1])["msg"]);
    assert_eq!(&header[..6], ["LEEF:2.0", "peergraph", "peergraph", env!("CARGO_PKG_VERSION"), "scan|sweep", "^"]);
    assert_eq!(attributes["msg"], "a=b | c\\d\nnext ] \"quoted\" ^caret é");
    assert_eq!(attributes["alertId"], "a2");
    assert_eq!(attributes["action"], "updated");
    assert_eq!(attributes["devTime"], "2023-11-14T22:13:50.000Z");
    assert_eq!(attributes["sev"], "8");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_refuses_a_collector_whose_certificate_it_cannot_verify() {
    let collector = Collector::start().await;
    // No ca_file: the private CA is not among the Mozilla roots.
    let mut untrusting = SyslogSinkConfig {
        address: format!("localhost:{}", collector.tls),
        transport: SyslogTransport::Tls,
        timeout: Duration::from_secs(5),
        ..SyslogSinkConfig::default()
    }
    .build()
    .expect("builds");
    let error = untrusting.health_check().await.expect_err("unknown issuer");
    assert!(error.to_string().contains("certificate") || error.to_string().contains("UnknownIssuer"), "{error}");
    assert!(!error.is_retryable(), "{error}");
    // The wrong name fails too, even with the right CA.
    let mut misnamed = SyslogSinkConfig {
        address: format!("127.0.0.1:{}", collector.tls),
        transport: SyslogTransport::Tls,
        server_name: Some("collector.example.com".into()),
        tls: crate::http::TlsConfig { ca_file: Some(collector.dir.path().join("ca.pem")), insecure_skip_verify: false },
        timeout: Duration::from_secs(5),
        ..SyslogSinkConfig::default()
    }
    .build()
    .expect("builds");
    assert!(misnamed.health_check().await.is_err());
    // Opting out of verification connects.
    let mut insecure = SyslogSinkConfig {
        address: format!("127.0.0.1:{}", collector.tls),
        transport: SyslogTransport::Tls,
        tls: crate::http::TlsConfig { ca_file: None, insecure_skip_verify: true },
        timeout: Duration::from_secs(5),
        ..SyslogSinkConfig::default()
    }
    .build()
    .expect("builds");
    insecure.health_check().await.expect("connects without verification");
}
