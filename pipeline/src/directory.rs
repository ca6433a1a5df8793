//! The entity directory: what the sensors said of each entity they labelled (its workload, its
//! Kubernetes labels), for the activity map's search by label and its drill-down from a workload to
//! its pods (`GET /entities`). The dataflow never sees labels; only the flows' endpoint metadata
//! carries them, so the source reports each labelled entity here the first time one of its flows
//! is accepted (a set lookup per flow with metadata; the lock is taken once per poll batch).
//!
//! Bounded: at most `api.max_entities` entities; beyond it a new entity is refused and counted
//! (`peergraph_api_entities_dropped_total`): a sensor forging a million pod names cannot grow it.
//! An entity's labels are those of its first accepted flow with metadata in this process (pods'
//! labels seldom change; a relabelled pod shows its old labels until the process restarts).

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;

use peergraph_schemas::EndpointMeta;
use peergraph_topology::entity::Endpoint;
use peergraph_topology::name::Name;
use serde::Serialize;

use crate::metrics::Metrics;

/// What is known of one entity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EntityInfo {
    pub entity: String,
    /// Its workload (its peer group when it is a replica), if it has one.
    pub workload: Option<String>,
    pub labels: BTreeMap<String, String>,
}

impl EntityInfo {
    /// Whether `query` (lower case) is part of its name, its workload or one of its labels
    /// (`key=value`).
    fn matches(&self, query: &str) -> bool {
        let has = |text: &str| text.to_lowercase().contains(query);
        has(&self.entity)
            || self.workload.as_deref().is_some_and(has)
            || self.labels.iter().any(|(key, value)| has(&format!("{key}={value}")))
    }
}

/// The entities of one process, shared by its workers and the HTTP server.
pub struct EntityDirectory {
    max_entities: usize,
    entries: Mutex<BTreeMap<String, EntityInfo>>,
}

/// What `GET /entities` answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EntitiesAnswer {
    pub entities: Vec<EntityInfo>,
    /// More matched than `limit`.
    pub truncated: bool,
    /// Entities the directory holds.
    pub held: usize,
}

impl EntityDirectory {
    pub fn new(max_entities: usize) -> EntityDirectory {
        EntityDirectory { max_entities, entries: Mutex::new(BTreeMap::new()) }
    }

    /// Adds what a worker learnt; entities beyond the budget are refused and counted.
    pub fn add(&self, learnt: Vec<EntityInfo>, metrics: &Metrics) {
        if learnt.is_empty() {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        for info in learnt {
            if entries.len() >= self.max_entities && !entries.contains_key(&info.entity) {
                metrics.api_entities_dropped.inc();
                continue;
            }
            entries.entry(info.entity.clone()).or_insert(info);
        }
        metrics.api_entities_held.set(entries.len() as i64);
    }

    /// The entities matching `query` (case-insensitive, in the name, the workload or a
    /// `key=value` label; empty matches all) and, if given, in `workload`; at most `limit`.
    pub fn search(&self, query: &str, workload: Option<&str>, limit: usize) -> EntitiesAnswer {
        let query = query.to_lowercase();
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let mut matching = entries
            .values()
            .filter(|info| workload.is_none_or(|w| info.workload.as_deref() == Some(w)))
            .filter(|info| query.is_empty() || info.matches(&query));
        let entities: Vec<EntityInfo> = matching.by_ref().take(limit).cloned().collect();
        let truncated = matching.next().is_some();
        EntitiesAnswer { entities, truncated, held: entries.len() }
    }
}

/// A worker's side of the directory: the entities it has reported (so a flow costs one set
/// lookup) and those waiting for the next [`DirectoryFeed::flush`].
pub struct DirectoryFeed {
    reported: HashSet<Name>,
    max_entities: usize,
    pending: Vec<EntityInfo>,
}

impl DirectoryFeed {
    pub fn new(max_entities: usize) -> DirectoryFeed {
        DirectoryFeed { reported: HashSet::new(), max_entities, pending: Vec::new() }
    }

    /// Notes a resolved end of an accepted flow with the sensor's metadata of it. Only labelled
    /// ends (metadata with labels or a workload) are reported, each once.
    pub fn observe(&mut self, end: &Endpoint, meta: Option<&EndpointMeta>) {
        let Some(meta) = meta else { return };
        if (meta.labels.is_empty() && end.workload.is_none()) || self.reported.contains(&end.entity) {
            return;
        }
        // Past the budget the directory refuses anyway; stop remembering (and counting) here too.
        if self.reported.len() >= self.max_entities {
            return;
        }
        self.reported.insert(end.entity.clone());
        self.pending.push(EntityInfo {
            entity: end.entity.to_string(),
            workload: end.workload.as_ref().map(|w| w.to_string()),
            labels: meta.labels.clone(),
        });
    }

    /// Hands what was learnt since the last flush to the directory.
    pub fn flush(&mut self, directory: &EntityDirectory, metrics: &Metrics) {
        if !self.pending.is_empty() {
            directory.add(std::mem::take(&mut self.pending), metrics);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(labels: &[(&str, &str)]) -> EndpointMeta {
        EndpointMeta {
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..EndpointMeta::default()
        }
    }

    #[test]
    fn labelled_entities_are_found_by_label_name_or_workload_each_reported_once() {
        let metrics = Metrics::default();
        let directory = EntityDirectory::new(10);
        let mut feed = DirectoryFeed::new(10);
        let web = Endpoint::new("pod:shop/web-1", Some("workload:shop/Deployment/web"));
        let db = Endpoint::new("pod:shop/db-0", Some("workload:shop/StatefulSet/db"));
        feed.observe(&web, Some(&meta(&[("app", "web"), ("tier", "front")])));
        feed.observe(&web, Some(&meta(&[("app", "web")])));
        feed.observe(&db, Some(&meta(&[("app", "db")])));
        feed.observe(&Endpoint::new("host:10.0.0.1", None), Some(&meta(&[])));
        feed.observe(&Endpoint::new("host:10.0.0.2", None), None);
        feed.flush(&directory, &metrics);
        assert_eq!(directory.search("", None, 100).held, 2, "labelled ends only, each once");
        let front = directory.search("TIER=front", None, 100);
        assert_eq!(front.entities.iter().map(|e| e.entity.as_str()).collect::<Vec<_>>(), ["pod:shop/web-1"]);
        let db = directory.search("", Some("workload:shop/StatefulSet/db"), 100);
        assert_eq!(db.entities.len(), 1);
        assert!(directory.search("shop", None, 1).truncated);
    }

    #[test]
    fn the_directory_is_bounded_and_counts_what_it_refuses() {
        let metrics = Metrics::default();
        let directory = EntityDirectory::new(2);
        let mut feed = DirectoryFeed::new(100);
        for i in 0..5 {
            feed.observe(&Endpoint::new(&format!("pod:x/p-{i}"), Some("workload:x/Deployment/p")), Some(&meta(&[])));
        }
        feed.flush(&directory, &metrics);
        assert_eq!(directory.search("", None, 100).held, 2);
        assert_eq!(metrics.api_entities_dropped.get(), 3);
    }
}
