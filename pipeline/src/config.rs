//! The configuration tree: one TOML file plus `PEERGRAPH__SECTION__KEY` environment overrides,
//! loaded with the `config` crate. Every field has a default, so an empty file is a valid config
//! for a broker on localhost.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use peergraph_connectors::ConnectConfig;
use peergraph_schemas::adapters::{Adapter, InputFormat};
use std::sync::Arc;

use peergraph_schemas::codec::{Decoder, RegistryConfig, SchemaRegistry, WireFormat};
use peergraph_topology::{
    DetectorsConfig, LifecycleConfig, PeerGroupsConfig, ResolverConfig, TimeConfig, TopologyConfig,
};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub topics: TopicsConfig,
    pub input: InputConfig,
    pub run: RunConfig,
    /// Event time: tick, window, allowed lateness.
    pub time: TimeConfig,
    /// Entity resolution: which networks are internal.
    pub entities: ResolverConfig,
    /// Peer groups: workloads and asset roles, and served-port profiles for unlabelled entities.
    pub peer_groups: PeerGroupsConfig,
    /// Detector parameters, one section per detector.
    pub detectors: DetectorsConfig,
    /// How findings become alert events (learning period).
    pub lifecycle: LifecycleConfig,
    pub simulate: crate::simulate::SimulateConfig,
    pub connect: ConnectConfig,
    pub metrics: MetricsConfig,
    /// The graph query API (the service graph now and as it was; see `time.graph_retention`).
    pub api: ApiConfig,
    /// The pcap flow sensor.
    pub sensor: crate::sensor::SensorConfig,
    /// The Confluent-compatible schema registry: writer schemas of `avro-confluent` flows, schema
    /// ids of `avro-confluent` alerts and graph edges. See docs/schema-registry.md.
    pub schema_registry: RegistryConfig,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma separated ("host:port,host:port").
    pub brokers: String,
    /// librdkafka client properties passed through unchanged to every client (TLS, SASL, ...),
    /// e.g. `"security.protocol" = "SASL_SSL"`.
    pub properties: BTreeMap<String, String>,
    /// How long to keep retrying when the brokers cannot be reached at start.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            properties: BTreeMap::new(),
            connect_timeout: Duration::from_secs(60),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopicsConfig {
    /// Flow records from sensors.
    pub flows: String,
    /// Alert lifecycle events, keyed by alert id.
    pub alerts: String,
    /// The service graph's changes, keyed by edge (created compacted: the latest state of every
    /// edge, tombstones for edges that left the window). Empty: not produced.
    pub service_graph: String,
    /// The inventory (compacted, keyed by network; `Asset` records); read whole by one worker.
    /// Empty: no inventory.
    pub assets: String,
    /// Threat-intel indicators (compacted, keyed by network; `Indicator` records). Empty: none.
    pub indicators: String,
    /// Where undecodable, invalid and (with `input.late = "dead-letter"`) late flows go, with the
    /// reason in the headers. Empty: such records are counted, logged and skipped.
    pub dead_letter: String,
    /// The pipeline's own state (compacted): the long-horizon history of workload edges, one
    /// record per (workload edge, coarse epoch) until its time to live runs out, read back whole
    /// at start so a restart does not forget it. Empty: nothing is persisted (a restart starts
    /// the history and the learning periods again). See docs/running.md, "Restarts".
    pub state: String,
    /// Create missing topics at start (with `partitions` partitions and `replication_factor`).
    pub create: bool,
    pub partitions: i32,
    pub replication_factor: i32,
}

impl Default for TopicsConfig {
    fn default() -> Self {
        TopicsConfig {
            flows: "peergraph.flows".into(),
            alerts: "peergraph.alerts".into(),
            service_graph: "peergraph.service-graph".into(),
            assets: "peergraph.assets".into(),
            indicators: "peergraph.indicators".into(),
            dead_letter: String::new(),
            state: "peergraph.state".into(),
            create: true,
            partitions: 4,
            replication_factor: 1,
        }
    }
}

/// How flows are read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InputConfig {
    /// Consumer group under which `run` commits its progress (for monitoring and restarts).
    pub group_id: String,
    /// What the sensors on the flows topic publish: "peergraph" (peergraph's own Flow records,
    /// JSON or Avro, detected per message), "goflow2-json", "goflow2-protobuf", "zeek-conn-json",
    /// "zeek-conn-tsv", "suricata-eve", "hubble", "aws-vpc", "pmacct-json". See docs/inputs.md.
    pub format: InputFormat,
    /// Sensor id given to flows whose format names none.
    pub sensor_id: Option<String>,
    /// Column order for header-less zeek-conn-tsv and aws-vpc records (space-separated names).
    pub fields: Option<String>,
    /// Messages larger than this are refused (counted, dead-lettered when configured).
    pub max_message_bytes: usize,
    /// What to do with a record older than its partition's watermark.
    pub late: LatePolicy,
    /// Most messages taken from Kafka per poll round, per worker; a round is decoded,
    /// pre-aggregated and handed to the dataflow as one batch.
    pub max_batch: usize,
    /// A flow ending further than this ahead of the wall clock is refused ("future_timestamp"):
    /// one such record would otherwise push its partition's watermark ahead and make everything
    /// else late.
    #[serde(with = "humantime_serde")]
    pub max_future: Duration,
    /// How far ahead of its partition's event time a flow may end and still move it. A flow
    /// further ahead is refused ("ahead_of_partition", counted per sensor in
    /// `peergraph_flows_ahead_of_partition`) and leaves the partition's watermark where it
    /// was, so that one forged or mis-clocked record cannot make the honest ones late; unless
    /// `skew_support` of the partition's last 1,000 records ran ahead together, which is the
    /// stream moving on (the time then jumps to them). "0s" turns the check off. See
    /// docs/configuration.md.
    #[serde(with = "humantime_serde")]
    pub max_skew: Duration,
    /// How many records ahead of the skew, among a partition's last 1,000, move its time to them.
    pub skew_support: usize,
    /// A flow ending before this instant (RFC 3339, UTC) is refused ("ancient_timestamp"): a
    /// sensor whose clock never synced (1970), a time in seconds taken for milliseconds, or a
    /// negative time would otherwise fall into one epoch far behind every other flow (times
    /// before 1970 cannot be epochs at all). An absolute bound, not an age, so that archived
    /// traffic can still be replayed; raise it to refuse anything older than you keep.
    #[serde(with = "humantime_serde")]
    pub earliest_end: SystemTime,
    /// A flow claiming more bytes than this in one direction is refused ("absurd_volume").
    pub max_flow_bytes: i64,
    /// Most distinct destinations one source entity may have in the window, per worker; further
    /// destinations are folded into one overflow destination, which the `entity_cap` detector
    /// alerts on. Bounds the memory one scanning or misbehaving source can take.
    pub max_destinations_per_source: usize,
    /// Most distinct address-based source entities (`host:` and `ext:`, not pods) a worker keeps
    /// as themselves in the window; flows from further sources count as from one overflow source
    /// (`overflow:sources`), which the `entity_cap` detector alerts on at their destination. Bounds
    /// the memory a flood of spoofed sources can take (without the cap 200,000 sources took
    /// 1.76 GB, about 9 KB each; docs/reliability.md row 3). 0: no cap.
    pub max_sources: usize,
}

impl Default for InputConfig {
    fn default() -> Self {
        InputConfig {
            group_id: "peergraph-pipeline".into(),
            format: InputFormat::Peergraph,
            sensor_id: None,
            fields: None,
            max_message_bytes: 1 << 20,
            late: LatePolicy::Drop,
            max_batch: 20_000,
            max_future: Duration::from_secs(3600),
            max_skew: Duration::from_secs(300),
            skew_support: 3,
            earliest_end: earliest_end_default(),
            max_flow_bytes: 1 << 40,
            max_destinations_per_source: 10_000,
            max_sources: 50_000,
        }
    }
}

impl InputConfig {
    /// `earliest_end` in ms since 1970 (0 for an instant before it; saturating far ahead).
    pub fn earliest_end_ms(&self) -> i64 {
        let since_1970 = self.earliest_end.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        i64::try_from(since_1970.as_millis()).unwrap_or(i64::MAX)
    }
}

/// The default of `input.earliest_end`, 2000-01-01T00:00:00Z: older than any flow record a live
/// network exports, younger than the clock of a sensor that never synced.
pub fn earliest_end_default() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(946_684_800)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LatePolicy {
    Drop,
    DeadLetter,
}

/// The timely cluster.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunConfig {
    /// Worker threads per process.
    pub workers: usize,
    /// Processes in the cluster.
    pub processes: usize,
    /// This process's index, 0..processes.
    pub process: usize,
    /// File with one `host:port` per line, one per process (required when processes > 1).
    pub hostfile: Option<PathBuf>,
    /// A partition with no data for this long stops holding back the event-time frontier.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Stop once every partition has been read up to its end as of the start (batch mode, for
    /// benchmarks and replays), instead of running until interrupted.
    pub stop_at_end: bool,
    /// Stop reading flows while the output frontier is more than this far (event time) behind
    /// the input frontier, so that a backlog (a restart's replay, a benchmark) is handed to the
    /// dataflow a few epochs at a time, as a live stream is, instead of all its epochs at once;
    /// 0: no bound (read as fast as Kafka delivers).
    #[serde(with = "humantime_serde")]
    pub max_lag: Duration,
    /// Format the alerts and service-graph edges are written in; `avro-confluent` needs
    /// `[schema_registry]`.
    pub alert_format: WireFormat,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            workers: 1,
            processes: 1,
            process: 0,
            hostfile: None,
            idle_timeout: Duration::from_secs(10),
            stop_at_end: false,
            max_lag: Duration::ZERO,
            alert_format: WireFormat::Json,
        }
    }
}

/// `[metrics]`: nothing left to set. `/metrics` and `/health` are served on `api.listen` with the
/// page and the API (one HTTP server); a configuration that still sets `metrics.listen` is
/// refused with a message that says so, rather than quietly listening elsewhere.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Removed: see `api.listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Address of the one HTTP server: the activity map page (`/`), `GET /graph` (the service
    /// graph at a time within `time.graph_retention`), `GET /graph/diff`, `GET /alerts`,
    /// `/metrics` (Prometheus) and `/health`. Empty disables it, and with it the graph's
    /// retention and its memory. `connect` serves its `/metrics` and `/health` here too.
    pub listen: String,
    /// Longest a query waits for the workers' answers before it fails with 504.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Alert ids the page's alert board holds (open, or cleared within `time.graph_retention`);
    /// beyond it cleared ones make room, and new ones are refused (counted in
    /// `peergraph_api_alerts_dropped_total`) while all are open.
    pub max_alerts: usize,
    /// Labelled entities (pods with their workload and labels, as the sensors report them) the
    /// entity directory holds for the page's search by label and drill-down; beyond it new ones
    /// are refused, counted in `peergraph_api_entities_dropped_total`.
    pub max_entities: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: "127.0.0.1:9465".into(),
            timeout: Duration::from_secs(10),
            max_alerts: 10_000,
            max_entities: 200_000,
        }
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot load configuration from {path}: {source}")]
    Load { path: String, source: config::ConfigError },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Loads `path` (if given) and then the `PEERGRAPH__SECTION__KEY` environment overrides.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut builder = config::Config::builder();
        let shown = path.map(|p| p.display().to_string()).unwrap_or_else(|| "(defaults)".into());
        if let Some(path) = path {
            builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
        }
        builder = builder.add_source(
            config::Environment::with_prefix("PEERGRAPH").prefix_separator("__").separator("__").try_parsing(true),
        );
        let raw = builder.build().map_err(|source| ConfigError::Load { path: shown.clone(), source })?;
        // `time.allowed_lateness` not set anywhere: the input format's own (see
        // `InputFormat::typical_lateness`), so a Zeek or VPC-flow-log topic does not lose its
        // reordered records as late.
        let lateness_given = raw.get::<config::Value>("time.allowed_lateness").is_ok();
        let mut loaded: Config = raw.try_deserialize().map_err(|source| ConfigError::Load { path: shown, source })?;
        if !lateness_given {
            loaded.time.allowed_lateness = loaded.input.format.typical_lateness();
        }
        loaded.validate()?;
        Ok(loaded)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.time.validate().map_err(|e| ConfigError::Invalid(e.to_string()))?;
        self.entities.validate().map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let run = &self.run;
        if run.workers == 0 {
            return Err(ConfigError::Invalid("run.workers must be at least 1".into()));
        }
        if run.process >= run.processes {
            return Err(ConfigError::Invalid(format!(
                "run.process ({}) must be below run.processes ({})",
                run.process, run.processes
            )));
        }
        if run.processes > 1 && run.hostfile.is_none() {
            return Err(ConfigError::Invalid("run.hostfile is required when run.processes > 1".into()));
        }
        if let Some(listen) = &self.metrics.listen {
            return Err(ConfigError::Invalid(format!(
                "metrics.listen ({listen:?}) was removed: /metrics and /health are now served on api.listen (default \"127.0.0.1:9465\") with the page and the graph API; move the address there and delete metrics.listen"
            )));
        }
        if self.input.max_batch == 0 {
            return Err(ConfigError::Invalid("input.max_batch must be at least 1".into()));
        }
        if self.input.late == LatePolicy::DeadLetter && self.topics.dead_letter.is_empty() {
            return Err(ConfigError::Invalid("input.late = \"dead-letter\" needs topics.dead_letter".into()));
        }
        if run.alert_format == WireFormat::AvroConfluent && !self.schema_registry.is_enabled() {
            return Err(ConfigError::Invalid(
                "run.alert_format = \"avro-confluent\" needs a schema registry (schema_registry.url)".into(),
            ));
        }
        Ok(())
    }

    /// The schema registry client `[schema_registry]` configures, if it sets a URL. Reads the
    /// password and CA file; makes no request. Build it once and share it: it caches schemas and ids.
    /// (Blocking client: call from a plain thread, not from inside a tokio runtime.)
    pub fn schema_registry(&self) -> Result<Option<Arc<SchemaRegistry>>, ConfigError> {
        if !self.schema_registry.is_enabled() {
            return Ok(None);
        }
        let registry = SchemaRegistry::new(&self.schema_registry).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        Ok(Some(Arc::new(registry)))
    }

    /// The adapter that reads the flows topic, as `[input]` configures it. peergraph's own flows
    /// find the writer schemas of Confluent-framed messages in `registry`, when there is one.
    pub fn adapter(&self, registry: Option<&Arc<SchemaRegistry>>) -> Result<Adapter, ConfigError> {
        let mut adapter = match (self.input.format, registry) {
            (InputFormat::Peergraph, Some(registry)) => Adapter::native(Decoder::new(registry.clone())),
            (format, _) => Adapter::new(format),
        };
        if let Some(id) = &self.input.sensor_id {
            adapter = adapter.with_sensor_id(id.clone());
        }
        if let Some(fields) = &self.input.fields {
            adapter = adapter.with_fields(fields).map_err(|e| ConfigError::Invalid(format!("input.fields: {e}")))?;
        }
        Ok(adapter)
    }

    /// How far before the resume point a restart replays the flows, in ms of event time: one
    /// window (to refill it), the allowed lateness, and the longest lifecycle timer that reaches
    /// back from an event (`min_duration`, `clear_after`), so alerts due just after the resume
    /// point are decided on the same findings as without the restart.
    pub fn replay_horizon_ms(&self) -> u64 {
        let lifecycle = self.lifecycle.min_duration.max(self.lifecycle.clear_after).as_millis() as u64;
        self.time.window_ms() + self.time.lateness_ms() + lifecycle
    }

    pub fn topology(&self) -> TopologyConfig {
        TopologyConfig {
            time: self.time.clone(),
            entities: self.entities.clone(),
            peer_groups: self.peer_groups.clone(),
            detectors: self.detectors.clone(),
            lifecycle: self.lifecycle.clone(),
            complete_from: 0,
        }
    }

    /// The effective configuration as TOML, with secrets replaced by "<redacted>": every value
    /// whose key names a credential (Kafka properties, sink headers such as `Authorization`, any
    /// `password` / `token` / `secret` / `api_key` field; not the `*_env` / `*_file` settings that
    /// only say where a secret is), and the user-info of every URL (`https://user:pass@host/`).
    pub fn to_redacted_toml(&self) -> String {
        let mut shown = match toml::Value::try_from(self) {
            Ok(value) => value,
            Err(e) => return format!("# cannot render configuration: {e}"),
        };
        redact(&mut shown, None);
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render configuration: {e}"))
    }
}

/// What a redacted value is shown as.
const REDACTED: &str = "<redacted>";

/// Redacts, in place, every string under `value` that is a credential by its key, and the
/// user-info of every URL.
fn redact(value: &mut toml::Value, key: Option<&str>) {
    match value {
        toml::Value::String(text) => {
            if key.is_some_and(is_secret) {
                *text = REDACTED.into();
            } else if let Some(shown) = without_user_info(text) {
                *text = shown;
            }
        }
        toml::Value::Array(items) => items.iter_mut().for_each(|item| redact(item, key)),
        toml::Value::Table(table) => table.iter_mut().for_each(|(name, item)| redact(item, Some(name))),
        _ => {}
    }
}

/// `url` with its user-info replaced, if it has any (`scheme://user:pass@host…`); several URLs in
/// one string (a comma-separated broker list) are each treated.
fn without_user_info(url: &str) -> Option<String> {
    let mut changed = false;
    let parts: Vec<String> = url
        .split(',')
        .map(|part| {
            let Some(scheme_end) = part.find("://") else { return part.to_owned() };
            let rest = &part[scheme_end + 3..];
            let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            match rest[..authority_end].rfind('@') {
                Some(at) => {
                    changed = true;
                    format!("{}://{REDACTED}@{}", &part[..scheme_end], &rest[at + 1..])
                }
                None => part.to_owned(),
            }
        })
        .collect();
    changed.then(|| parts.join(","))
}

/// Keys whose values are credentials: librdkafka properties, sink settings and HTTP headers. A key
/// ending in `_env` or `_file` names where a secret is, not the secret, and is shown.
pub fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    if key.ends_with("_env") || key.ends_with("_file") || key.ends_with(".location") {
        return false;
    }
    [
        "password",
        "passwd",
        "secret",
        "sasl.oauthbearer.config",
        "ssl.key.pem",
        "ssl_key",
        "token",
        "authorization",
        "api_key",
        "api-key",
        "apikey",
        "credential",
        "private_key",
        "cookie",
    ]
    .iter()
    .any(|s| key.contains(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_gives_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.toml");
        std::fs::write(&path, "").unwrap();
        let loaded = Config::load(Some(&path)).unwrap();
        assert_eq!(loaded.topics.flows, "peergraph.flows");
        assert_eq!(loaded.time.window, Duration::from_secs(300));
    }

    #[test]
    fn file_values_and_durations_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[kafka]\nbrokers = \"k:1\"\n[kafka.properties]\n\"sasl.password\" = \"hunter2\"\n[time]\nwindow = \"2m\"\n[detectors.peer_unique_destination]\nmin_group_size = 4\n",
        )
        .unwrap();
        let loaded = Config::load(Some(&path)).unwrap();
        assert_eq!(loaded.kafka.brokers, "k:1");
        assert_eq!(loaded.time.window, Duration::from_secs(120));
        assert_eq!(loaded.detectors.peer_unique_destination.min_group_size, 4);
        let shown = loaded.to_redacted_toml();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"));
    }

    /// Issue 12: 5–30 % of a real Zeek log was refused as late with the 5 s default.
    #[test]
    fn allowed_lateness_defaults_to_the_input_formats_own_unless_set() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("zeek.toml");
        std::fs::write(&path, "[input]\nformat = \"zeek-conn-tsv\"\n").unwrap();
        assert_eq!(Config::load(Some(&path)).unwrap().time.allowed_lateness, Duration::from_secs(300));
        std::fs::write(&path, "[input]\nformat = \"zeek-conn-tsv\"\n[time]\nallowed_lateness = \"20s\"\n").unwrap();
        assert_eq!(Config::load(Some(&path)).unwrap().time.allowed_lateness, Duration::from_secs(20));
        std::fs::write(&path, "").unwrap();
        assert_eq!(Config::load(Some(&path)).unwrap().time.allowed_lateness, Duration::from_secs(5));
    }

    /// `/metrics` moved to the one HTTP server: an old `metrics.listen` is refused, naming `api.listen`.
    #[test]
    fn the_removed_metrics_listen_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.toml");
        std::fs::write(&path, "[metrics]\nlisten = \"0.0.0.0:9464\"\n").unwrap();
        let error = Config::load(Some(&path)).and_then(|c| c.validate().map(|()| c)).unwrap_err().to_string();
        assert!(error.contains("metrics.listen") && error.contains("api.listen"), "{error}");
        assert!(Config::default().validate().is_ok());
    }

    /// Row 10 of docs/reliability.md: credentials inside URLs and in header values were printed.
    #[test]
    fn config_print_redacts_url_user_info_and_credential_headers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[schema_registry]\nurl = \"https://reg-user:reg-pass@registry:8081\"\n\
             [[connect.sinks]]\nname = \"hook\"\ntype = \"webhook\"\nurl = \"https://hook-user:hook-pass@hooks.example/x?q=1\"\n\
             secret_env = \"HOOK_SECRET\"\n[connect.sinks.headers]\nX-Team = \"soc\"\nX-Api-Key = \"key-123\"\n",
        )
        .unwrap();
        let loaded = Config::load(Some(&path)).unwrap();
        let shown = loaded.to_redacted_toml();
        for secret in ["reg-pass", "reg-user", "hook-pass", "key-123"] {
            assert!(!shown.contains(secret), "{secret} printed:\n{shown}");
        }
        for kept in ["registry:8081", "hooks.example/x?q=1", "HOOK_SECRET", "soc"] {
            assert!(shown.contains(kept), "{kept} missing:\n{shown}");
        }
        assert_eq!(
            without_user_info("kafka://a:b@k1:9092,kafka://k2:9092").unwrap(),
            "kafka://<redacted>@k1:9092,kafka://k2:9092"
        );
        assert_eq!(without_user_info("https://host/path@x"), None, "an @ after the host is not user-info");
    }

    #[test]
    fn unknown_keys_and_bad_windows_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[time]\nwindow = \"1500ms\"\n").unwrap();
        let err = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("multiple of time.tick"), "{err}");
        std::fs::write(&path, "[kafka]\nbrokerz = \"x\"\n").unwrap();
        let err = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("brokerz"), "{err}");
    }

    #[test]
    fn external_groups_are_read_from_entities_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[entities]\ninternal_networks = [\"10.0.0.0/8\"]\n\
             [[entities.external_groups]]\nname = \"salesforce\"\nnetworks = [\"13.108.0.0/14\", \"96.43.144.0/20\", \"2a01:111::/32\"]\n\
             [[entities.external_groups]]\nname = \"cdn\"\nnetworks = [\"151.101.0.0/16\"]\n",
        )
        .unwrap();
        let loaded = Config::load(Some(&path)).unwrap();
        let groups = &loaded.entities.external_groups;
        assert_eq!(groups.iter().map(|g| g.name.as_str()).collect::<Vec<_>>(), vec!["salesforce", "cdn"]);
        assert_eq!(groups[0].networks[2], "2a01:111::/32".parse::<ipnet::IpNet>().unwrap());
        // The topology resolves with them, and the effective configuration shows them.
        let resolver = peergraph_topology::EntityResolver::new(&loaded.topology().entities);
        assert_eq!(resolver.resolve("96.43.150.1", None).node(), "ext-group:salesforce");
        let shown = loaded.to_redacted_toml();
        assert!(shown.contains("[[entities.external_groups]]") && shown.contains("151.101.0.0/16"), "{shown}");
        // Refused: a bad CIDR (by the parser, naming the value), a duplicate name, a network
        // inside an internal network.
        std::fs::write(&path, "[[entities.external_groups]]\nname = \"cdn\"\nnetworks = [\"151.101.0.0/33\"]\n")
            .unwrap();
        let err = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("invalid IP address syntax"), "{err}");
        assert!(err.contains("external_groups[0]") && err.contains("networks[0]"), "{err}");
        std::fs::write(
            &path,
            "[[entities.external_groups]]\nname = \"cdn\"\nnetworks = [\"151.101.0.0/16\"]\n\
             [[entities.external_groups]]\nname = \"cdn\"\nnetworks = [\"199.232.0.0/16\"]\n",
        )
        .unwrap();
        let err = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("\"cdn\" is used by more than one group"), "{err}");
        std::fs::write(&path, "[[entities.external_groups]]\nname = \"vpn\"\nnetworks = [\"192.168.8.0/24\"]\n")
            .unwrap();
        let err = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("inside the internal network 192.168.0.0/16"), "{err}");
    }

    #[test]
    fn the_schema_registry_section_is_read_and_avro_confluent_output_needs_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[run]\nalert_format = \"avro-confluent\"\n").unwrap();
        let err = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("schema_registry.url"), "{err}");
        std::fs::write(
            &path,
            "[run]\nalert_format = \"avro-confluent\"\n[schema_registry]\nurl = \"https://registry:8081\"\n\
             subject_name_strategy = \"record_name\"\nusername = \"peergraph\"\npassword_env = \"REGISTRY_PASSWORD\"\n",
        )
        .unwrap();
        let loaded = Config::load(Some(&path)).unwrap();
        let registry = &loaded.schema_registry;
        assert_eq!(registry.url, "https://registry:8081");
        assert_eq!(registry.subject_name_strategy, peergraph_schemas::codec::SubjectNameStrategy::RecordName);
        assert_eq!(registry.password_env.as_deref(), Some("REGISTRY_PASSWORD"));
        assert_eq!(registry.timeout, Duration::from_secs(10));
        // Without the password variable set, building the client names the variable.
        let err = loaded.schema_registry().unwrap_err().to_string();
        assert!(err.contains("REGISTRY_PASSWORD"), "{err}");
        assert!(Config::default().schema_registry().unwrap().is_none(), "no url, no registry");
    }
}
