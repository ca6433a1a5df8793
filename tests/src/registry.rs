//! A local receiver of the Confluent Schema Registry REST API subset peergraph and Confluent's own
//! clients use, for the registry tests (no Confluent-compatible registry server can be installed
//! from the package registries this project builds from; see docs/schema-registry.md):
//!
//! - `POST /subjects/{subject}/versions`: register (ids are global and shared by equal schemas, as
//!   in Confluent's registry: equal means the same Avro parsing canonical form);
//! - `POST /subjects/{subject}`: look a schema up under a subject (40401 / 40403 when absent);
//! - `GET /schemas/ids/{id}`: a schema by id (40403 when absent);
//! - `GET /subjects`, `GET /subjects/{subject}/versions/{version|latest}`.
//!
//! It checks what a real registry checks and a client can get wrong: the content type of request
//! bodies, the body's shape and that the schema is valid Avro, HTTP basic auth (when configured),
//! and it can serve HTTPS with a certificate from a private CA. It records every request, and can
//! be told to fail the next requests (for the retry tests).
//!
//! It runs on its own tokio runtime on a background thread, so the blocking registry client can be
//! used from the test's own thread.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, PoisonError};

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// One request the receiver saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeenRequest {
    /// "GET", "POST".
    pub method: String,
    /// Path and query, as sent.
    pub path: String,
    /// The `Content-Type` header, if any.
    pub content_type: Option<String>,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
}

/// How to start a [`LocalRegistry`].
#[derive(Clone, Debug, Default)]
pub struct RegistryOptions {
    /// Require HTTP basic auth with this user and password.
    pub basic_auth: Option<(String, String)>,
    /// Serve HTTPS with a certificate for 127.0.0.1 from a private CA ([`LocalRegistry::ca_file`]).
    pub tls: bool,
}

#[derive(Default)]
struct Store {
    /// Schema text by id - 1.
    schemas: Vec<String>,
    /// Parsing canonical form → id.
    by_canonical: HashMap<String, u32>,
    /// Subject → ids of its versions, in version order.
    subjects: BTreeMap<String, Vec<u32>>,
}

struct Shared {
    store: Mutex<Store>,
    seen: Mutex<Vec<SeenRequest>>,
    fail_next: Mutex<VecDeque<StatusCode>>,
    /// The `Authorization` header value required, when basic auth is on.
    authorization: Option<String>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running receiver; stopped when dropped.
pub struct LocalRegistry {
    url: String,
    shared: Arc<Shared>,
    ca_file: Option<PathBuf>,
    _certificates: Option<tempfile::TempDir>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LocalRegistry {
    /// A plain-HTTP receiver without auth.
    pub fn start() -> LocalRegistry {
        LocalRegistry::start_with(RegistryOptions::default())
    }

    /// A receiver as `options` say.
    pub fn start_with(options: RegistryOptions) -> LocalRegistry {
        let authorization = options.basic_auth.as_ref().map(|(user, password)| {
            format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
        });
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::default()),
            seen: Mutex::new(Vec::new()),
            fail_next: Mutex::new(VecDeque::new()),
            authorization,
        });
        let (certificates, acceptor) = match options.tls {
            true => {
                let (dir, acceptor) = tls_acceptor();
                (Some(dir), Some(acceptor))
            }
            false => (None, None),
        };
        let ca_file = certificates.as_ref().map(|dir| dir.path().join("ca.pem"));
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).expect("bind the local registry");
        let address = listener.local_addr().expect("address");
        let scheme = if acceptor.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{address}");
        let app = router(shared.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("local-schema-registry".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let stopped = async {
                        let _ = stopped.await;
                    };
                    match acceptor {
                        Some(acceptor) => axum::serve(TlsListener { listener, acceptor }, app)
                            .with_graceful_shutdown(stopped)
                            .await
                            .expect("serve"),
                        None => axum::serve(listener, app).with_graceful_shutdown(stopped).await.expect("serve"),
                    }
                })
            })
            .expect("spawn the local registry");
        LocalRegistry { url, shared, ca_file, _certificates: certificates, stop: Some(stop), thread: Some(thread) }
    }

    /// The base URL (`http://127.0.0.1:PORT`, or `https://…` with TLS).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The PEM file of the CA that signed the HTTPS certificate (with TLS).
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    /// Every request seen so far, in order.
    pub fn requests(&self) -> Vec<SeenRequest> {
        lock(&self.shared.seen).clone()
    }

    /// Answers the next requests with these statuses (and an error body), one each, before serving again.
    pub fn fail_next(&self, statuses: &[u16]) {
        let mut queue = lock(&self.shared.fail_next);
        queue.extend(statuses.iter().map(|status| StatusCode::from_u16(*status).expect("status code")));
    }

    /// The subjects and the ids of their versions.
    pub fn subjects(&self) -> BTreeMap<String, Vec<u32>> {
        lock(&self.shared.store).subjects.clone()
    }

    /// The schema text registered under `id`.
    pub fn schema_text(&self, id: u32) -> Option<String> {
        lock(&self.shared.store).schemas.get(id.checked_sub(1)? as usize).cloned()
    }
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/subjects", get(list_subjects))
        .route("/subjects/{subject}", post(lookup))
        .route("/subjects/{subject}/versions", post(register))
        .route("/subjects/{subject}/versions/{version}", get(version))
        .route("/schemas/ids/{id}", get(by_id))
        // Other endpoints (e.g. the newer subject associations) are not served, as by registries
        // that predate them: 404 in the registry's error format.
        .fallback(|| async { error(StatusCode::NOT_FOUND, 404, "HTTP 404 Not Found") })
        .layer(middleware::from_fn_with_state(shared.clone(), gate))
        .with_state(shared)
}

fn error(status: StatusCode, error_code: u32, message: impl Into<String>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/vnd.schemaregistry.v1+json")],
        Json(json!({
            "error_code": error_code,
            "message": message.into(),
        })),
    )
        .into_response()
}

fn answer(body: Value) -> Response {
    ([(header::CONTENT_TYPE, "application/vnd.schemaregistry.v1+json")], Json(body)).into_response()
}

/// Records the request, then applies injected failures and basic auth.
async fn gate(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    // The parts only: a `&Request` held across the await below would make the future not `Send`.
    let (parts, body) = request.into_parts();
    let header_text =
        |name: header::HeaderName| parts.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let seen = SeenRequest {
        method: parts.method.to_string(),
        path: parts.uri.path_and_query().map(|p| p.to_string()).unwrap_or_default(),
        content_type: header_text(header::CONTENT_TYPE),
        authorization: header_text(header::AUTHORIZATION),
    };
    let authorized = match &shared.authorization {
        Some(required) => seen.authorization.as_deref() == Some(required.as_str()),
        None => true,
    };
    lock(&shared.seen).push(seen);
    let injected = lock(&shared.fail_next).pop_front();
    if let Some(status) = injected {
        return error(status, status.as_u16() as u32, "injected failure");
    }
    if !authorized {
        return error(StatusCode::UNAUTHORIZED, 401, "Unauthorized");
    }
    next.run(Request::from_parts(parts, body)).await
}

/// Why a request body is refused: status, registry error code, message.
type Refusal = (StatusCode, u32, String);

/// The schema in a registration or lookup body, checked as a registry checks it: its text and
/// its parsing canonical form.
fn schema_of(headers: &HeaderMap, body: &[u8]) -> Result<(String, String), Refusal> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let media = content_type.split(';').next().unwrap_or("").trim();
    if !matches!(
        media,
        "application/vnd.schemaregistry.v1+json" | "application/vnd.schemaregistry+json" | "application/json"
    ) {
        return Err((StatusCode::UNSUPPORTED_MEDIA_TYPE, 415, format!("unsupported content type {content_type:?}")));
    }
    let unprocessable = |message: String| (StatusCode::UNPROCESSABLE_ENTITY, 42201, message);
    let body: Value = serde_json::from_slice(body).map_err(|e| unprocessable(format!("body is not JSON: {e}")))?;
    let text = body
        .get("schema")
        .and_then(Value::as_str)
        .ok_or_else(|| unprocessable("the body has no \"schema\" string".into()))?;
    if let Some(kind) = body.get("schemaType").and_then(Value::as_str).filter(|kind| *kind != "AVRO") {
        return Err(unprocessable(format!("only AVRO schemas here, not {kind}")));
    }
    let schema = apache_avro::Schema::parse_str(text).map_err(|e| unprocessable(format!("Invalid schema: {e}")))?;
    Ok((text.to_owned(), schema.canonical_form()))
}

async fn register(
    State(shared): State<Arc<Shared>>,
    UrlPath(subject): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (text, canonical) = match schema_of(&headers, &body) {
        Ok(schema) => schema,
        Err((status, code, message)) => return error(status, code, message),
    };
    let mut store = lock(&shared.store);
    let id = match store.by_canonical.get(&canonical) {
        Some(id) => *id,
        None => {
            store.schemas.push(text);
            let id = store.schemas.len() as u32;
            store.by_canonical.insert(canonical, id);
            id
        }
    };
    let versions = store.subjects.entry(subject).or_default();
    if !versions.contains(&id) {
        versions.push(id);
    }
    answer(json!({ "id": id }))
}

async fn lookup(
    State(shared): State<Arc<Shared>>,
    UrlPath(subject): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (_, canonical) = match schema_of(&headers, &body) {
        Ok(schema) => schema,
        Err((status, code, message)) => return error(status, code, message),
    };
    let store = lock(&shared.store);
    let Some(versions) = store.subjects.get(&subject) else {
        return error(StatusCode::NOT_FOUND, 40401, format!("Subject '{subject}' not found."));
    };
    let found = store.by_canonical.get(&canonical).and_then(|id| versions.iter().position(|v| v == id));
    match found {
        Some(index) => {
            let id = versions[index];
            answer(json!({
                "subject": subject,
                "version": index + 1,
                "id": id,
                "schema": store.schemas[id as usize - 1],
            }))
        }
        None => error(StatusCode::NOT_FOUND, 40403, "Schema not found"),
    }
}

async fn by_id(State(shared): State<Arc<Shared>>, UrlPath(id): UrlPath<u32>) -> Response {
    let store = lock(&shared.store);
    match id.checked_sub(1).and_then(|index| store.schemas.get(index as usize)) {
        Some(text) => answer(json!({ "schema": text })),
        None => error(StatusCode::NOT_FOUND, 40403, "Schema not found"),
    }
}

async fn list_subjects(State(shared): State<Arc<Shared>>) -> Response {
    answer(json!(lock(&shared.store).subjects.keys().collect::<Vec<_>>()))
}

async fn version(
    State(shared): State<Arc<Shared>>,
    UrlPath((subject, version)): UrlPath<(String, String)>,
) -> Response {
    let store = lock(&shared.store);
    let Some(versions) = store.subjects.get(&subject) else {
        return error(StatusCode::NOT_FOUND, 40401, format!("Subject '{subject}' not found."));
    };
    let index = match version.as_str() {
        "latest" | "-1" => versions.len().checked_sub(1),
        number => number.parse::<usize>().ok().and_then(|v| v.checked_sub(1)).filter(|i| *i < versions.len()),
    };
    match index {
        Some(index) => {
            let id = versions[index];
            answer(json!({
                "subject": subject,
                "version": index + 1,
                "id": id,
                "schema": store.schemas[id as usize - 1],
            }))
        }
        None => error(StatusCode::NOT_FOUND, 40402, "Version not found."),
    }
}

/// Accepts TCP connections and completes the TLS handshake (failed handshakes are skipped).
struct TlsListener {
    listener: TcpListener,
    acceptor: TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((stream, address)) = self.listener.accept().await else { continue };
            if let Ok(stream) = self.acceptor.accept(stream).await {
                return (stream, address);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

/// A private CA and a server certificate for 127.0.0.1 signed by it, made with the `openssl`
/// command (scripts/test installs it); the directory holds `ca.pem`.
fn tls_acceptor() -> (tempfile::TempDir, TlsAcceptor) {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};

    let dir = tempfile::tempdir().expect("dir");
    let run = |args: &[&str]| {
        let output = Command::new("openssl").args(args).current_dir(dir.path()).output().unwrap_or_else(|error| {
            panic!("cannot run openssl ({error}); install it (scripts/test does: apt-get install openssl)")
        });
        assert!(output.status.success(), "openssl {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    };
    let subject_ca = "/CN=peergraph test registry CA";
    run(&[
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", subject_ca, "-keyout", "ca.key",
        "-out", "ca.pem",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        dir.path().join("server.ext"),
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n",
    )
    .expect("write");
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "server.pem",
    ]);
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.path().join("server.pem"))
        .expect("server.pem")
        .collect::<Result<_, _>>()
        .expect("certificates");
    let key = PrivateKeyDer::from_pem_file(dir.path().join("server.key")).expect("server.key");
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .expect("server certificate");
    (dir, TlsAcceptor::from(Arc::new(config)))
}
