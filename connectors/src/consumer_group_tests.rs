//! Two `connect` instances in one consumer group on the real broker (PEERGRAPH_KAFKA_BROKERS):
//! they share the partitions of an alerts topic; one is killed while the ServiceNow receiver holds
//! its insert. The other takes over the killed one's partitions and redelivers what it had not
//! committed: every alert event reaches the file sinks at least once, and the ticketing receiver
//! holds exactly one incident per alert.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use peergraph_schemas::{Alert, AlertEvent};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

use crate::servicenow::tests::{receiver, sink_config, ServiceNow};
use crate::sinks::{SinkConfig, SinkKind};
use crate::test_support::alert;
use crate::{ConnectConfig, RetryConfig};

fn brokers() -> String {
    std::env::var("PEERGRAPH_KAFKA_BROKERS").unwrap_or_else(|_| {
        panic!(
            "PEERGRAPH_KAFKA_BROKERS is not set: this test needs a real Kafka broker. Run the tests with \
             scripts/test (which starts one and sets it), or start deploy/kafka/kafka.sh and export it"
        )
    })
}

fn client(brokers: &str) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", brokers)
        // A killed member is noticed within seconds, not the default 45.
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500");
    client
}

async fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", brokers).create().expect("admin client");
    let results = admin
        .create_topics(&[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))], &AdminOptions::new())
        .await
        .unwrap_or_else(|error| panic!("create topic {topic} on {brokers}: {error}"));
    for result in results {
        result.unwrap_or_else(|(topic, code)| panic!("create topic {topic}: {code}"));
    }
}

fn read_file_sink(path: &Path) -> Vec<Alert> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

/// An instance's configuration: a file sink of its own and the shared ServiceNow receiver, logging
/// in as `user` (so the receiver can hold one instance's inserts).
fn instance(
    group: &str,
    file: PathBuf,
    receiver_url: &str,
    dir: &Path,
    user: &str,
    timeout: Duration,
) -> ConnectConfig {
    let mut servicenow = sink_config(receiver_url, dir);
    servicenow.username = Some(user.into());
    servicenow.timeout = timeout;
    let mut ticketing = SinkConfig::new("servicenow", SinkKind::ServiceNow(servicenow));
    ticketing.retry = Some(RetryConfig {
        max_attempts: 50,
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(500),
    });
    ConnectConfig {
        group_id: group.into(),
        console: false,
        file: Some(file),
        batch_max: 5,
        batch_timeout: Duration::from_millis(200),
        sinks: vec![ticketing],
        ..ConnectConfig::default()
    }
}

/// Waits until the consumer group is stable with `members` members.
async fn wait_for_members(brokers: &str, group: &str, members: usize) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let observer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", brokers).create().expect("consumer");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let described = observer
            .fetch_group_list(Some(group), Duration::from_secs(5))
            .map(|list| list.groups().iter().map(|g| (g.state().to_owned(), g.members().len())).collect::<Vec<_>>());
        if let Ok(groups) = &described {
            if groups.iter().any(|(state, count)| state == "Stable" && *count == members) {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "group {group} never had {members} stable members: {described:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits for `condition` (checked every 100 ms) or fails after `limit`, describing the state.
async fn wait_for(what: &str, limit: Duration, condition: impl Fn() -> Result<(), String>) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match condition() {
            Ok(()) => return,
            Err(state) if tokio::time::Instant::now() >= deadline => panic!("timed out waiting for {what}: {state}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_instance_loses_nothing_and_the_survivor_opens_no_second_ticket() {
    let brokers = brokers();
    let unique = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
    );
    let topic = format!("peergraph-connect-group-test-{unique}");
    let group = format!("peergraph-connect-group-test-{unique}");
    create_topic(&brokers, &topic, 4).await;

    let (receiver, state) = receiver().await;
    // Instance A's inserts are stored, then answered only after a minute: A is mid-batch when killed.
    state.lock().expect("state").slow_users.insert("instance-a".into(), Duration::from_secs(60));
    let dir = tempfile::tempdir().expect("dir");
    let (file_a, file_b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
    let config_a = instance(&group, file_a.clone(), &receiver.url, dir.path(), "instance-a", Duration::from_secs(120));
    let config_b = instance(&group, file_b.clone(), &receiver.url, dir.path(), "instance-b", Duration::from_secs(5));

    let (stop_b, stopped_b) = tokio::sync::oneshot::channel::<()>();
    let a = {
        let (client, topic) = (client(&brokers), topic.clone());
        tokio::spawn(async move { crate::run(client, &topic, &config_a, std::future::pending()).await })
    };
    let b = {
        let (client, topic) = (client(&brokers), topic.clone());
        tokio::spawn(async move {
            crate::run(client, &topic, &config_b, async {
                let _ = stopped_b.await;
            })
            .await
        })
    };

    // Only once both have joined and split the partitions do the alerts arrive, so neither can
    // take everything before the other is there.
    wait_for_members(&brokers, &group, 2).await;
    // 30 alerts raised, 10 of them cleared afterwards; keyed by alert id, so each alert's events
    // share a partition and keep their order.
    let mut events: Vec<Alert> = (0..30).map(|n| alert(&format!("alert-{n:02}"), AlertEvent::Raised)).collect();
    events.extend((0..10).map(|n| alert(&format!("alert-{n:02}"), AlertEvent::Cleared)));
    let producer: FutureProducer = client(&brokers).create().expect("producer");
    for event in &events {
        let payload = serde_json::to_vec(event).expect("json");
        producer
            .send(FutureRecord::to(&topic).key(&event.alert_id).payload(&payload), Duration::from_secs(10))
            .await
            .unwrap_or_else(|(error, _)| panic!("produce to {topic}: {error}"));
    }

    // Both instances have partitions (each opened incidents), and A is holding an insert it has not
    // been answered for.
    let shared: Arc<Mutex<ServiceNow>> = Arc::clone(&state);
    wait_for("both instances at work and A held mid-batch", Duration::from_secs(60), || {
        let state = shared.lock().expect("state");
        let by_user = &state.inserts_by_user;
        if by_user.contains_key("instance-a") && by_user.contains_key("instance-b") {
            Ok(())
        } else {
            Err(format!("inserts so far: {by_user:?}"))
        }
    })
    .await;
    a.abort();
    let killed = a.await;
    assert!(killed.as_ref().err().is_some_and(|error| error.is_cancelled()), "A was killed, not finished: {killed:?}");

    // B takes over A's partitions and redelivers what A had not committed.
    let expected: BTreeSet<(String, AlertEvent)> =
        events.iter().map(|event| (event.alert_id.clone(), event.event)).collect();
    let (paths, shared) = ([file_a.clone(), file_b.clone()], Arc::clone(&state));
    wait_for("every alert in the files and every ticket settled", Duration::from_secs(90), || {
        let in_files: BTreeSet<(String, AlertEvent)> =
            paths.iter().flat_map(|path| read_file_sink(path)).map(|event| (event.alert_id, event.event)).collect();
        let missing: Vec<_> = expected.difference(&in_files).collect();
        let state = shared.lock().expect("state");
        let tickets = state.incidents_per_alert();
        let resolved = (0..10).filter(|n| state.state_of(&format!("alert-{n:02}")).as_deref() == Some("6")).count();
        if missing.is_empty() && tickets.len() == 30 && resolved == 10 {
            Ok(())
        } else {
            Err(format!("missing from files: {missing:?}; tickets: {}; resolved: {resolved}", tickets.len()))
        }
    })
    .await;
    let _ = stop_b.send(());
    let report = b.await.expect("B ran").expect("B stopped cleanly");

    let state = state.lock().expect("state");
    let tickets = state.incidents_per_alert();
    let duplicated: BTreeMap<&String, &usize> = tickets.iter().filter(|(_, &count)| count != 1).collect();
    assert!(duplicated.is_empty(), "alerts with more than one incident: {duplicated:?}");
    assert_eq!(tickets.len(), 30);
    assert!(state.inserts_by_user.get("instance-a").is_some_and(|&n| n >= 1));
    assert!(report.delivered() > 0, "{report:?}");
    // A never committed the batch it was held on, so B read it again: every alert whose incident A
    // opened reached B's file sink too (at least once), and B found the incident instead of opening one.
    let from_b: BTreeSet<String> = read_file_sink(&file_b).into_iter().map(|event| event.alert_id).collect();
    let opened_by_a: Vec<String> = state
        .records
        .values()
        .filter(|record| record.inserted_by == "instance-a")
        .filter_map(|record| record.fields["correlation_id"].as_str().map(str::to_owned))
        .collect();
    assert!(!opened_by_a.is_empty());
    let not_redelivered: Vec<&String> = opened_by_a.iter().filter(|id| !from_b.contains(*id)).collect();
    assert!(not_redelivered.is_empty(), "A's held alerts that B did not redeliver: {not_redelivered:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_a_sink_rejects_go_to_the_dead_letter_topic_with_the_error_and_are_committed() {
    dead_letters_round_trip(true).await;
}

/// Row 4 of docs/reliability.md: with the dead-letter topic missing (the broker does not
/// auto-create topics), the first give-up used to stop delivery for every sink. `connect` now
/// creates it at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_dead_letter_topic_is_created_at_start() {
    dead_letters_round_trip(false).await;
}

async fn dead_letters_round_trip(create_dead_letter_topic: bool) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Headers;
    use rdkafka::{Message, Offset, TopicPartitionList};

    let brokers = brokers();
    let unique = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
    );
    let (topic, dead_letters, group) =
        (format!("peergraph-dlq-test-{unique}"), format!("peergraph-dlq-test-{unique}.dlq"), format!("dlq-{unique}"));
    create_topic(&brokers, &topic, 1).await;
    if create_dead_letter_topic {
        create_topic(&brokers, &dead_letters, 1).await;
    }
    let producer: FutureProducer = client(&brokers).create().expect("producer");
    for n in 0..3 {
        let event = alert(&format!("rejected-{n}"), AlertEvent::Raised);
        let payload = serde_json::to_vec(&event).expect("json");
        producer
            .send(FutureRecord::to(&topic).key(&event.alert_id).payload(&payload), Duration::from_secs(10))
            .await
            .unwrap_or_else(|(error, _)| panic!("produce: {error}"));
    }

    let dir = tempfile::tempdir().expect("dir");
    let hook = crate::exec::ExecSinkConfig {
        command: "bash".into(),
        args: vec![
            "-c".into(),
            r#"while IFS= read -r line; do echo '{"ok": false, "retry": false, "error": "project SEC is archived"}'; done"#
                .into(),
        ],
        ..Default::default()
    };
    let config = ConnectConfig {
        group_id: group.clone(),
        console: false,
        file: Some(dir.path().join("alerts.jsonl")),
        batch_timeout: Duration::from_millis(200),
        idle_exit: Some(Duration::from_secs(3)),
        dead_letter_topic: Some(dead_letters.clone()),
        sinks: vec![SinkConfig::new("hook", SinkKind::Exec(hook))],
        ..ConnectConfig::default()
    };
    let report = crate::run(client(&brokers), &topic, &config, std::future::pending()).await.expect("runs");
    assert_eq!((report.raised, report.dead_lettered), (3, 3), "{report:?}");
    assert_eq!(read_file_sink(&dir.path().join("alerts.jsonl")).len(), 3, "the file sink got them all");

    let reader: BaseConsumer = client(&brokers)
        .set("group.id", format!("{group}-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    reader.subscribe(&[&dead_letters]).expect("subscribe");
    let mut letters = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while letters.len() < 3 && std::time::Instant::now() < deadline {
        if let Some(Ok(message)) = reader.poll(Duration::from_millis(200)) {
            let headers = message.headers().expect("headers");
            let header = |name: &str| {
                headers
                    .iter()
                    .find(|h| h.key == name)
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            };
            assert_eq!(header("peergraph.sink").as_deref(), Some("hook"));
            assert_eq!(header("peergraph.attempts").as_deref(), Some("1"));
            let letter: crate::DeadLetter =
                serde_json::from_slice(message.payload().expect("payload")).expect("a letter");
            assert_eq!(message.key(), Some(letter.alert.alert_id.as_bytes()));
            letters.push(letter);
        }
    }
    assert_eq!(letters.len(), 3, "{letters:?}");
    assert!(letters.iter().all(|l| l.error.contains("project SEC is archived") && !l.retryable && l.sink == "hook"));

    let committer: BaseConsumer = client(&brokers).set("group.id", &group).create().expect("consumer");
    let mut partitions = TopicPartitionList::new();
    partitions.add_partition(&topic, 0);
    let committed = committer.committed_offsets(partitions, Duration::from_secs(10)).expect("committed");
    let offset = committed.elements()[0].offset();
    assert_eq!(offset, Offset::Offset(3), "dead-lettered events count as acknowledged");
}
