//! Reference collections from compacted topics: the inventory (`topics.assets`) and threat intel
//! (`topics.indicators`). One worker reads each topic whole, from the beginning and then as it
//! changes, keeping the latest record per key so that a change is fed to the dataflow as a
//! retraction of the old record and an insertion of the new one (a tombstone retracts).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use peergraph_schemas::codec::{Decoder, Record};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::KafkaError;
use crate::config::KafkaConfig;
use crate::metrics::Metrics;

/// Turns a topic record into what the dataflow holds; `None` refuses it (counted, logged once).
pub type Convert<T, D> = fn(&T) -> Result<D, String>;

pub struct ReferenceReader<T: Record, D> {
    consumer: BaseConsumer,
    topic: String,
    partitions: i32,
    decoder: Decoder<T>,
    convert: Convert<T, D>,
    current: HashMap<Vec<u8>, D>,
    metrics: Arc<Metrics>,
    logged: bool,
    /// Read errors (a broker away) are logged once per interval, not once per poll.
    errors: super::LogEvery,
}

impl<T: Record, D: Clone + PartialEq> ReferenceReader<T, D> {
    pub fn open(
        kafka: &KafkaConfig,
        client: &ClientConfig,
        topic: &str,
        convert: Convert<T, D>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, KafkaError> {
        let partitions = super::partition_count(kafka, topic)?;
        let consumer: BaseConsumer = client
            .clone()
            .set("group.id", format!("peergraph-reference-{topic}"))
            .set("enable.auto.commit", "false")
            .create()
            .map_err(|source| KafkaError::Client { context: format!("creating the {topic} reader"), source })?;
        let mut assignment = TopicPartitionList::new();
        for p in 0..partitions {
            assignment
                .add_partition_offset(topic, p, Offset::Beginning)
                .map_err(|source| KafkaError::Client { context: format!("assigning {topic}"), source })?;
        }
        consumer
            .assign(&assignment)
            .map_err(|source| KafkaError::Client { context: format!("assigning {topic}"), source })?;
        Ok(ReferenceReader {
            consumer,
            topic: topic.to_owned(),
            partitions,
            decoder: Decoder::default(),
            convert,
            current: HashMap::new(),
            metrics,
            logged: false,
            errors: super::LogEvery::default(),
        })
    }

    /// Reads the topic up to the end it has now (each partition's high watermark, asked once), so
    /// that the inventory or the intel already published applies to the first flows read, as a
    /// reference table is loaded before a stream joins against it. Gives up after `within` (a
    /// broker away: the reader goes on in the background, as [`ReferenceReader::poll`] does), and
    /// says so once.
    pub fn catch_up(&mut self, within: Duration, mut change: impl FnMut(D, isize)) -> usize {
        let started = std::time::Instant::now();
        let mut ends = Vec::new();
        for partition in 0..self.partitions {
            match self.consumer.fetch_watermarks(&self.topic, partition, within) {
                Ok((low, high)) if high > low => ends.push((partition, high)),
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, topic = %self.topic, partition, "could not read the end of a reference topic; reading it as it comes");
                    return 0;
                }
            }
        }
        let mut read = 0;
        loop {
            let positions = self.consumer.position().ok();
            let behind = ends.iter().any(|(partition, high)| {
                positions
                    .as_ref()
                    .and_then(|positions| positions.find_partition(&self.topic, *partition))
                    .and_then(|p| p.offset().to_raw())
                    .is_none_or(|at| at < *high)
            });
            if !behind {
                return read;
            }
            if started.elapsed() >= within {
                tracing::warn!(topic = %self.topic, read, "a reference topic was not read to its end in time; reading the rest as it comes");
                return read;
            }
            read += self.poll_for(Duration::from_millis(50), &mut change);
        }
    }

    /// Reads what is there and hands each change to `change` as (record, +1 / −1).
    pub fn poll(&mut self, change: impl FnMut(D, isize)) -> usize {
        self.poll_for(Duration::ZERO, change)
    }

    /// As [`ReferenceReader::poll`], waiting up to `wait` for the first record.
    fn poll_for(&mut self, wait: Duration, mut change: impl FnMut(D, isize)) -> usize {
        let mut read = 0;
        let mut wait = wait;
        while let Some(result) = self.consumer.poll(std::mem::take(&mut wait)) {
            let message = match result {
                Ok(message) => message,
                Err(error) => {
                    if let Some(repeated) = self.errors.occurred(std::time::Instant::now()) {
                        tracing::warn!(%error, topic = %self.topic, repeated, "error reading a reference topic");
                    }
                    break;
                }
            };
            read += 1;
            let key = message.key().map(<[u8]>::to_vec).unwrap_or_default();
            let new = match message.payload() {
                None => None,
                Some(payload) => {
                    match self.decoder.decode(payload).map_err(|e| e.to_string()).and_then(|r| (self.convert)(&r)) {
                        Ok(record) => Some(record),
                        Err(reason) => {
                            self.metrics.reject(&format!(
                                "bad_{}_record",
                                self.topic.rsplit('.').next().unwrap_or("reference")
                            ));
                            if !std::mem::replace(&mut self.logged, true) {
                                tracing::warn!(topic = %self.topic, partition = message.partition(), offset = message.offset(), reason, "refused a reference record (logged once)");
                            }
                            continue;
                        }
                    }
                }
            };
            let old = match &new {
                Some(record) => self.current.insert(key, record.clone()),
                None => self.current.remove(&key),
            };
            if old == new {
                continue;
            }
            if let Some(old) = old {
                change(old, -1);
            }
            if let Some(new) = new {
                change(new, 1);
            }
        }
        read
    }
}

/// An inventory record as the dataflow holds it.
pub fn asset_record(asset: &peergraph_schemas::Asset) -> Result<peergraph_topology::AssetRecord, String> {
    Ok(peergraph_topology::AssetRecord {
        network: parse_network(&asset.network)?,
        id: asset.id.clone(),
        role: asset.role.clone(),
        criticality: u8::try_from(asset.criticality.clamp(0, 5)).unwrap_or(2),
    })
}

/// A threat-intel record as the dataflow holds it.
pub fn indicator_record(indicator: &peergraph_schemas::Indicator) -> Result<peergraph_topology::Indicator, String> {
    Ok(peergraph_topology::Indicator {
        network: parse_network(&indicator.network)?,
        source: indicator.source.clone(),
        description: indicator.description.clone().unwrap_or_default(),
    })
}

/// "10.0.0.0/8" or a bare address (a host network).
fn parse_network(text: &str) -> Result<ipnet::IpNet, String> {
    text.parse::<ipnet::IpNet>()
        .map(|net| net.trunc())
        .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{text:?} is neither an address nor a network"))
}
