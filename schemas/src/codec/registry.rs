//! A client of the Confluent Schema Registry REST API: the [`SchemaLookup`] that finds the writer
//! schemas of Confluent-framed messages by id, and the registration that gives peergraph's encoders
//! their schema ids. It speaks the documented subset any Confluent-compatible registry serves
//! (Confluent's own, Apicurio's `/apis/ccompat/v7`, Karapace, Redpanda):
//!
//! - `GET /schemas/ids/{id}`: the writer schema of a message (cached forever: ids are immutable;
//!   "not found" is cached for [`RegistryConfig::not_found_ttl`]);
//! - `POST /subjects/{subject}/versions`: register a schema, answering its id (with `auto_register`);
//! - `POST /subjects/{subject}`: look up the id of an already registered schema (without it).
//!
//! The client is blocking, built on `reqwest::blocking`: the decoder asks for schemas from timely
//! worker threads and the encoders register once at start, none of them inside an async runtime,
//! and reqwest (with the rustls settings the connectors use) is already in the tree. A blocking
//! reqwest client must not be built, used or dropped on a tokio runtime's thread; callers inside one
//! go through `spawn_blocking`.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use apache_avro::Schema;
use reqwest::blocking::{Client, RequestBuilder};
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};

use super::{DecodeError, Encoder, Record, SchemaLookup};
use crate::secret::{load_optional_secret, Secret};

/// The registry API's content type, sent with every request body.
pub const REGISTRY_CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";
/// What the client accepts, in the registry API's order of preference.
const ACCEPTED: &str = "application/vnd.schemaregistry.v1+json, application/vnd.schemaregistry+json; qs=0.9, \
                        application/json; qs=0.5";
/// The first retry waits this long; each further one twice as long, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// How the subject a schema is registered under is named, as in Confluent's serializers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubjectNameStrategy {
    /// `<topic>-value`: one schema lineage per topic (Confluent's default).
    #[default]
    TopicName,
    /// `<record full name>`: one lineage per record type, whatever the topic.
    RecordName,
    /// `<topic>-<record full name>`: one lineage per record type and topic.
    TopicRecordName,
}

impl SubjectNameStrategy {
    /// The subject for a message value of record type `record` (its Avro full name) on `topic`.
    pub fn subject(self, topic: &str, record: &str) -> String {
        match self {
            SubjectNameStrategy::TopicName => format!("{topic}-value"),
            SubjectNameStrategy::RecordName => record.to_owned(),
            SubjectNameStrategy::TopicRecordName => format!("{topic}-{record}"),
        }
    }
}

/// The `[schema_registry]` configuration section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// Base URL of the registry's Confluent-compatible API (`https://registry:8081`,
    /// `http://apicurio:8080/apis/ccompat/v7`). Empty: no registry.
    pub url: String,
    /// How subjects are named when registering or looking up peergraph's own schemas.
    pub subject_name_strategy: SubjectNameStrategy,
    /// Register peergraph's schemas when missing (`POST /subjects/{subject}/versions`). When false,
    /// the schema must already be registered under the subject (`POST /subjects/{subject}`).
    pub auto_register: bool,
    /// HTTP basic auth user; needs `password_env` or `password_file`.
    pub username: Option<String>,
    /// Environment variable holding the basic auth password.
    pub password_env: Option<String>,
    /// File holding the basic auth password (trailing newline trimmed).
    pub password_file: Option<PathBuf>,
    /// PEM file of CA certificates trusted in addition to the built-in (Mozilla) roots.
    pub ca_file: Option<PathBuf>,
    /// Accept any server certificate. For tests only: it lets anyone in the middle read the password.
    pub insecure_skip_verify: bool,
    /// Timeout of one request (connect included).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Retries of a request that failed transiently (connect error, timeout, 5xx, 429), with
    /// exponential backoff from 100 ms up to 2 s.
    pub retries: u32,
    /// How long "no schema with this id" is remembered before the registry is asked again.
    #[serde(with = "humantime_serde")]
    pub not_found_ttl: Duration,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            url: String::new(),
            subject_name_strategy: SubjectNameStrategy::TopicName,
            auto_register: true,
            username: None,
            password_env: None,
            password_file: None,
            ca_file: None,
            insecure_skip_verify: false,
            timeout: Duration::from_secs(10),
            retries: 3,
            not_found_ttl: Duration::from_secs(10),
        }
    }
}

impl RegistryConfig {
    /// Whether a registry is configured (`url` is set).
    pub fn is_enabled(&self) -> bool {
        !self.url.trim().is_empty()
    }
}

/// A schema registry request failed. Messages name the URL, subject or id, never the password.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The `[schema_registry]` section is not usable.
    #[error("schema_registry: {0}")]
    Config(String),
    /// No answer: connection refused, TLS failure, timeout (after the retries).
    #[error("schema registry request {method} {url} failed: {reason}")]
    Transport {
        /// HTTP method.
        method: &'static str,
        /// The request URL.
        url: String,
        /// What failed, with its causes.
        reason: String,
    },
    /// The subject or schema id does not exist (HTTP 404).
    #[error("schema registry {url}: {what} not found (error {error_code}: {message})")]
    NotFound {
        /// The request URL.
        url: String,
        /// "schema id 7", "subject peergraph.alerts-value", "schema under subject …".
        what: String,
        /// The registry's error code (40401 subject, 40403 schema), 0 when it gave none.
        error_code: i64,
        /// The registry's message.
        message: String,
    },
    /// The credentials were refused (HTTP 401 or 403).
    #[error("schema registry {url} refused the request with {status} (check username and password): {message}")]
    Unauthorized {
        /// The request URL.
        url: String,
        /// 401 or 403.
        status: u16,
        /// The registry's message.
        message: String,
    },
    /// The schema is not compatible with the versions registered under the subject (HTTP 409).
    #[error("schema registry {url}: the schema is incompatible with subject {subject}'s versions: {message}")]
    Incompatible {
        /// The request URL.
        url: String,
        /// The subject.
        subject: String,
        /// The registry's message.
        message: String,
    },
    /// Any other error status (after the retries, for 5xx and 429).
    #[error("schema registry {url} answered {status} (error {error_code}): {message}")]
    Status {
        /// The request URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The registry's error code, 0 when it gave none.
        error_code: i64,
        /// The registry's message.
        message: String,
    },
    /// A success status with a body that is not what the API documents.
    #[error("schema registry {url}: unexpected response: {reason}")]
    BadResponse {
        /// The request URL.
        url: String,
        /// What was wrong.
        reason: String,
    },
    /// The registry's schema cannot be used: not Avro, has references, or does not parse.
    #[error("schema registry {url}: schema id {id} is not usable: {reason}")]
    BadSchema {
        /// The request URL.
        url: String,
        /// The schema id.
        id: u32,
        /// Why.
        reason: String,
    },
}

impl RegistryError {
    /// A short stable name for metric labels and tests.
    pub fn kind(&self) -> &'static str {
        match self {
            RegistryError::Config(_) => "config",
            RegistryError::Transport { .. } => "transport",
            RegistryError::NotFound { .. } => "not_found",
            RegistryError::Unauthorized { .. } => "unauthorized",
            RegistryError::Incompatible { .. } => "incompatible",
            RegistryError::Status { .. } => "status",
            RegistryError::BadResponse { .. } => "bad_response",
            RegistryError::BadSchema { .. } => "bad_schema",
        }
    }
}

/// What the registry answers to `GET /schemas/ids/{id}`.
#[derive(Deserialize)]
struct SchemaById {
    schema: String,
    #[serde(default, rename = "schemaType")]
    schema_type: Option<String>,
    #[serde(default)]
    references: Vec<serde_json::Value>,
}

/// What the registry answers to a registration or a lookup under a subject (more fields are ignored).
#[derive(Deserialize)]
struct SchemaId {
    id: u32,
}

/// The registry's error body.
#[derive(Default, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    error_code: i64,
    #[serde(default)]
    message: String,
}

/// The body of a registration or lookup: an Avro schema (the default `schemaType`) without references.
#[derive(Serialize)]
struct SchemaBody<'a> {
    schema: &'a str,
}

/// A Confluent Schema Registry client; see the module documentation. Share it (`Arc`): its caches
/// serve every decoder and encoder built from it.
pub struct SchemaRegistry {
    http: Client,
    /// The base URL without a trailing slash.
    base: String,
    auth: Option<(String, Secret)>,
    strategy: SubjectNameStrategy,
    auto_register: bool,
    retries: u32,
    not_found_ttl: Duration,
    by_id: Mutex<HashMap<u32, Arc<Schema>>>,
    /// Ids the registry said it does not have, and when.
    missing: Mutex<HashMap<u32, Instant>>,
    /// (subject, schema text) → id.
    registered: Mutex<HashMap<(String, String), u32>>,
    requests: AtomicU64,
}

impl SchemaRegistry {
    /// A client for the registry `config` names. Reads the password and the CA file now; makes no
    /// request yet.
    pub fn new(config: &RegistryConfig) -> Result<SchemaRegistry, RegistryError> {
        let base = config.url.trim().trim_end_matches('/').to_owned();
        let parsed =
            reqwest::Url::parse(&base).map_err(|error| RegistryError::Config(format!("url {base:?}: {error}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(RegistryError::Config(format!("url {base:?}: only http and https are supported")));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(RegistryError::Config(
                "url: put credentials in username and password_env / password_file, not in the URL".into(),
            ));
        }
        let password = load_optional_secret(
            "schema_registry password",
            config.password_env.as_deref(),
            config.password_file.as_ref(),
        )
        .map_err(RegistryError::Config)?;
        let auth = match (&config.username, password) {
            (Some(user), Some(password)) => Some((user.clone(), password)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(RegistryError::Config("username needs password_env or password_file".into()))
            }
            (None, Some(_)) => return Err(RegistryError::Config("a password is configured without a username".into())),
        };
        let mut builder = Client::builder()
            .use_rustls_tls()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .user_agent(concat!("peergraph/", env!("CARGO_PKG_VERSION")))
            .danger_accept_invalid_certs(config.insecure_skip_verify);
        if let Some(path) = &config.ca_file {
            let pem = std::fs::read(path)
                .map_err(|error| RegistryError::Config(format!("ca_file {}: {error}", path.display())))?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|error| RegistryError::Config(format!("ca_file {}: {error}", path.display())))?;
            if certificates.is_empty() {
                return Err(RegistryError::Config(format!("ca_file {}: no PEM certificate in it", path.display())));
            }
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let http = builder.build().map_err(|error| RegistryError::Config(format!("HTTP client: {error}")))?;
        Ok(SchemaRegistry {
            http,
            base,
            auth,
            strategy: config.subject_name_strategy,
            auto_register: config.auto_register,
            retries: config.retries,
            not_found_ttl: config.not_found_ttl,
            by_id: Mutex::new(HashMap::new()),
            missing: Mutex::new(HashMap::new()),
            registered: Mutex::new(HashMap::new()),
            requests: AtomicU64::new(0),
        })
    }

    /// The base URL requests go to.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// HTTP requests sent so far (retries included): what the caches save shows here.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// The subject record type `T`'s schema goes under on `topic`, by the configured strategy.
    pub fn subject_for<T: Record>(&self, topic: &str) -> String {
        self.strategy.subject(topic, T::NAME)
    }

    /// An encoder writing `T` on `topic` in the Confluent wire format, with the id of `T`'s schema
    /// under the strategy's subject: registered when `auto_register` is on, looked up otherwise.
    pub fn encoder<T: Record>(&self, topic: &str) -> Result<Encoder<T>, RegistryError> {
        let subject = self.subject_for::<T>(topic);
        let id = if self.auto_register {
            self.register(&subject, T::SCHEMA_JSON)?
        } else {
            self.lookup_id(&subject, T::SCHEMA_JSON)?
        };
        Ok(Encoder::confluent(id))
    }

    /// Registers the Avro schema `schema` (its JSON text) under `subject` and returns its id: a new
    /// version, or the id it already has. Cached per subject and schema text.
    pub fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        self.id_under(subject, schema, true)
    }

    /// The id `schema` is registered under `subject` with, without registering it
    /// ([`RegistryError::NotFound`] when it is not). Cached per subject and schema text.
    pub fn lookup_id(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        self.id_under(subject, schema, false)
    }

    fn id_under(&self, subject: &str, schema: &str, register: bool) -> Result<u32, RegistryError> {
        let key = (subject.to_owned(), schema.to_owned());
        if let Some(id) = lock(&self.registered).get(&key) {
            return Ok(*id);
        }
        let path = if register {
            format!("/subjects/{}/versions", encode_segment(subject))
        } else {
            format!("/subjects/{}", encode_segment(subject))
        };
        let url = format!("{}{path}", self.base);
        let body = serde_json::to_vec(&SchemaBody { schema }).map_err(|error| RegistryError::BadResponse {
            url: url.clone(),
            reason: format!("cannot encode the request: {error}"),
        })?;
        let (status, text) = self.send("POST", &url, || {
            self.http.post(&url).header(CONTENT_TYPE, REGISTRY_CONTENT_TYPE).body(body.clone())
        })?;
        if !status.is_success() {
            let what = if register { format!("subject {subject}") } else { format!("schema under subject {subject}") };
            return Err(self.status_error(&url, status, &text, what, Some(subject)));
        }
        let answer: SchemaId = serde_json::from_str(&text)
            .map_err(|error| RegistryError::BadResponse { url: url.clone(), reason: format!("{error} in {text:?}") })?;
        lock(&self.registered).insert(key, answer.id);
        Ok(answer.id)
    }

    /// The schema registered under `id`, parsed. Found schemas are cached for good, "not found" for
    /// `not_found_ttl`.
    pub fn schema(&self, id: u32) -> Result<Arc<Schema>, RegistryError> {
        if let Some(schema) = lock(&self.by_id).get(&id) {
            return Ok(Arc::clone(schema));
        }
        let url = format!("{}/schemas/ids/{id}", self.base);
        if let Some(since) = lock(&self.missing).get(&id) {
            if since.elapsed() < self.not_found_ttl {
                return Err(RegistryError::NotFound {
                    url,
                    what: format!("schema id {id}"),
                    error_code: 40403,
                    message: format!("remembered from less than {:?} ago", self.not_found_ttl),
                });
            }
        }
        let (status, text) = self.send("GET", &url, || self.http.get(&url))?;
        if !status.is_success() {
            let error = self.status_error(&url, status, &text, format!("schema id {id}"), None);
            if let RegistryError::NotFound { .. } = error {
                lock(&self.missing).insert(id, Instant::now());
            }
            return Err(error);
        }
        let answer: SchemaById = serde_json::from_str(&text)
            .map_err(|error| RegistryError::BadResponse { url: url.clone(), reason: format!("{error} in {text:?}") })?;
        let bad = |reason: String| RegistryError::BadSchema { url: url.clone(), id, reason };
        if let Some(kind) = answer.schema_type.as_deref().filter(|kind| !kind.eq_ignore_ascii_case("AVRO")) {
            return Err(bad(format!("it is a {kind} schema, not Avro")));
        }
        if !answer.references.is_empty() {
            return Err(bad("schema references are not supported".into()));
        }
        let schema = Arc::new(Schema::parse_str(&answer.schema).map_err(|error| bad(error.to_string()))?);
        lock(&self.missing).remove(&id);
        Ok(Arc::clone(lock(&self.by_id).entry(id).or_insert(schema)))
    }

    /// Sends the request `build` makes, with auth and `Accept`, retrying transient failures.
    fn send(
        &self,
        method: &'static str,
        url: &str,
        build: impl Fn() -> RequestBuilder,
    ) -> Result<(StatusCode, String), RegistryError> {
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 0;
        loop {
            let mut request = build().header(ACCEPT, ACCEPTED);
            if let Some((user, password)) = &self.auth {
                request = request.basic_auth(user, Some(password.expose()));
            }
            self.requests.fetch_add(1, Ordering::Relaxed);
            let outcome = request.send().and_then(|response| {
                let status = response.status();
                response.text().map(|text| (status, text))
            });
            let retry = match &outcome {
                Ok((status, _)) => status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS,
                Err(error) => error.is_connect() || error.is_timeout() || error.is_request() || error.is_body(),
            };
            if !retry || attempt >= self.retries {
                return outcome.map_err(|error| RegistryError::Transport {
                    method,
                    url: url.to_owned(),
                    reason: error_chain(&error.without_url()),
                });
            }
            attempt += 1;
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    fn status_error(
        &self,
        url: &str,
        status: StatusCode,
        text: &str,
        what: String,
        subject: Option<&str>,
    ) -> RegistryError {
        let body: ErrorBody = serde_json::from_str(text)
            .unwrap_or_else(|_| ErrorBody { error_code: 0, message: text.chars().take(200).collect() });
        let url = url.to_owned();
        match (status, subject) {
            (StatusCode::NOT_FOUND, _) => {
                RegistryError::NotFound { url, what, error_code: body.error_code, message: body.message }
            }
            (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN, _) => {
                RegistryError::Unauthorized { url, status: status.as_u16(), message: body.message }
            }
            (StatusCode::CONFLICT, Some(subject)) => {
                RegistryError::Incompatible { url, subject: subject.to_owned(), message: body.message }
            }
            _ => RegistryError::Status {
                url,
                status: status.as_u16(),
                error_code: body.error_code,
                message: body.message,
            },
        }
    }
}

impl SchemaLookup for SchemaRegistry {
    fn writer_schema(&self, id: u32) -> Result<Arc<Schema>, DecodeError> {
        self.schema(id).map_err(|error| match error {
            RegistryError::NotFound { .. } => DecodeError::UnknownSchemaId { id, looked_up_in: self.to_string() },
            other => DecodeError::SchemaLookup { id, reason: other.to_string() },
        })
    }
}

impl fmt::Display for SchemaRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the schema registry at {}", self.base)
    }
}

impl fmt::Debug for SchemaRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SchemaRegistry")
            .field("url", &self.base)
            .field("user", &self.auth.as_ref().map(|(user, _)| user))
            .field("strategy", &self.strategy)
            .field("auto_register", &self.auto_register)
            .finish_non_exhaustive()
    }
}

/// The caches are only ever inserted into or removed from whole, so a panic cannot leave them torn.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A subject as one URL path segment: percent-encodes everything but the unreserved characters.
fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// An error and its causes on one line ("error sending request: connection refused").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(error) = cause {
        let next = error.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        cause = error.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Alert, Flow, GraphEdge};

    #[test]
    fn subjects_follow_the_confluent_strategies() {
        let topic = "peergraph.alerts";
        assert_eq!(SubjectNameStrategy::TopicName.subject(topic, Alert::NAME), "peergraph.alerts-value");
        assert_eq!(SubjectNameStrategy::RecordName.subject(topic, Alert::NAME), Alert::NAME);
        assert_eq!(
            SubjectNameStrategy::TopicRecordName.subject(topic, GraphEdge::NAME),
            format!("peergraph.alerts-{}", GraphEdge::NAME)
        );
        assert_eq!(Flow::NAME, "io.peergraph.Flow");
    }

    #[test]
    fn strategies_are_configured_by_snake_case_names() {
        #[derive(Deserialize)]
        struct Section {
            schema_registry: RegistryConfig,
        }
        let section: Section = toml::from_str(
            "[schema_registry]\nurl = \"http://r:8081\"\nsubject_name_strategy = \"topic_record_name\"\ntimeout = \"3s\"\n",
        )
        .expect("parse");
        assert_eq!(section.schema_registry.subject_name_strategy, SubjectNameStrategy::TopicRecordName);
        assert_eq!(section.schema_registry.timeout, Duration::from_secs(3));
        assert!(section.schema_registry.auto_register, "registering is the default");
        let bad = toml::from_str::<Section>("[schema_registry]\nsubject_name_strategy = \"TopicName\"\n");
        assert!(bad.is_err(), "only the documented names are accepted");
    }

    #[test]
    fn subjects_are_one_url_path_segment() {
        assert_eq!(encode_segment("peergraph.alerts-value"), "peergraph.alerts-value");
        assert_eq!(encode_segment("a/b c?"), "a%2Fb%20c%3F");
    }

    #[test]
    fn unusable_configurations_are_refused_without_showing_the_password() {
        let config = |url: &str| RegistryConfig { url: url.into(), ..RegistryConfig::default() };
        let error = SchemaRegistry::new(&config("http://user:hunter2@registry:8081")).expect_err("userinfo");
        assert!(!error.to_string().contains("hunter2"), "{error}");
        assert_eq!(error.kind(), "config");
        assert!(SchemaRegistry::new(&config("ftp://registry")).is_err());
        assert!(SchemaRegistry::new(&config("not a url")).is_err());
        let dir = tempfile::tempdir().expect("dir");
        let password = dir.path().join("password");
        std::fs::write(&password, "hunter2\n").expect("write");
        let no_user = RegistryConfig { password_file: Some(password.clone()), ..config("http://registry:8081") };
        assert!(SchemaRegistry::new(&no_user).expect_err("no user").to_string().contains("without a username"));
        let no_password = RegistryConfig { username: Some("peergraph".into()), ..config("http://registry:8081") };
        assert!(SchemaRegistry::new(&no_password).is_err());
        let with_both = RegistryConfig { username: Some("peergraph".into()), ..no_user };
        let registry = SchemaRegistry::new(&with_both).expect("client");
        let shown = format!("{registry:?} {registry}");
        assert!(!shown.contains("hunter2") && shown.contains("peergraph"), "{shown}");
        let bad_ca = RegistryConfig { ca_file: Some(password), ..config("https://registry") };
        assert!(SchemaRegistry::new(&bad_ca).expect_err("no certificate").to_string().contains("ca_file"));
    }

    #[test]
    fn an_unreachable_registry_is_a_transport_error_naming_the_url_after_the_retries() {
        // Port 9 (discard) on loopback: nothing listens, the connection is refused at once.
        let config = RegistryConfig {
            url: "http://127.0.0.1:9/".into(),
            retries: 2,
            timeout: Duration::from_secs(2),
            ..RegistryConfig::default()
        };
        let registry = SchemaRegistry::new(&config).expect("client");
        let error = registry.schema(5).expect_err("nobody listens");
        assert_eq!(error.kind(), "transport");
        assert!(error.to_string().contains("GET http://127.0.0.1:9/schemas/ids/5"), "{error}");
        assert_eq!(registry.requests(), 3, "one request and two retries");
        let decode = registry.writer_schema(5).expect_err("lookup fails");
        assert_eq!(decode.kind(), "schema_lookup_failed");
    }
}
