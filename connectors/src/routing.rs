//! Routing: which sink instances an alert event goes to. Rules match on severity, detector,
//! namespace, entity and labels; an alert goes to every sink a matching rule names, and a sink that no
//! rule names takes every alert (so a config without routes sends everything everywhere).

use std::collections::{BTreeMap, BTreeSet};

use peergraph_schemas::{Alert, Severity};
use serde::{Deserialize, Serialize};

/// One routing rule: alert events matching every condition given go to `sinks`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouteConfig {
    /// Names of the sink instances (`[[connect.sinks]] name`, or "console" / "file") to send to.
    pub sinks: Vec<String>,
    /// Only alerts at least this severe ("info", "low", "medium", "high", "critical").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_severity: Option<Severity>,
    /// Only alerts from these detectors; empty: any detector.
    pub detectors: Vec<String>,
    /// Only alerts about entities in these Kubernetes namespaces (from `pod:<namespace>/…` entities
    /// or `workload:<namespace>/…` peer groups); empty: any.
    pub namespaces: Vec<String>,
    /// Only alerts whose entity starts with one of these ("ip:10.", "host:db-"); empty: any.
    pub entity_prefixes: Vec<String>,
    /// Only alerts carrying all these labels, as evidence entries `label.<key>` (or `<key>`) = value.
    pub labels: BTreeMap<String, String>,
}

impl RouteConfig {
    /// Whether `alert` satisfies every condition of this rule.
    pub fn matches(&self, alert: &Alert) -> bool {
        if self.min_severity.is_some_and(|minimum| alert.severity < minimum) {
            return false;
        }
        if !self.detectors.is_empty() && !self.detectors.contains(&alert.detector) {
            return false;
        }
        if !self.namespaces.is_empty() {
            let namespace = namespace_of(alert);
            if !self.namespaces.iter().any(|wanted| Some(wanted.as_str()) == namespace) {
                return false;
            }
        }
        if !self.entity_prefixes.is_empty()
            && !self.entity_prefixes.iter().any(|p| alert.entity.starts_with(p.as_str()))
        {
            return false;
        }
        self.labels.iter().all(|(key, value)| {
            let found = alert.evidence.get(&format!("label.{key}")).or_else(|| alert.evidence.get(key));
            found == Some(value)
        })
    }
}

/// The Kubernetes namespace of the alert's entity, or of its peer group.
pub fn namespace_of(alert: &Alert) -> Option<&str> {
    fn namespace<'a>(name: &'a str, kind: &str) -> Option<&'a str> {
        let rest = name.strip_prefix(kind)?.strip_prefix(':')?;
        rest.split_once('/').map(|(namespace, _)| namespace).filter(|namespace| !namespace.is_empty())
    }
    namespace(&alert.entity, "pod")
        .or_else(|| alert.peer_group.as_deref().and_then(|group| namespace(group, "workload")))
}

/// Rules compiled against the sink instances' positions.
#[derive(Clone, Debug)]
pub(crate) struct Router {
    rules: Vec<(RouteConfig, Vec<usize>)>,
    /// Sinks named by no rule: they take everything.
    unrouted: Vec<usize>,
}

impl Router {
    /// Compiles `routes` for sinks named `sink_names` (in the order the sinks are kept).
    pub fn new(routes: &[RouteConfig], sink_names: &[String]) -> Result<Router, String> {
        let mut named = BTreeSet::new();
        let mut rules = Vec::with_capacity(routes.len());
        for (index, route) in routes.iter().enumerate() {
            if route.sinks.is_empty() {
                return Err(format!("routes[{index}] names no sink"));
            }
            let mut targets = Vec::new();
            for name in &route.sinks {
                let position = sink_names
                    .iter()
                    .position(|sink| sink == name)
                    .ok_or_else(|| format!("routes[{index}] names sink {name:?}, which is not configured"))?;
                named.insert(position);
                targets.push(position);
            }
            rules.push((route.clone(), targets));
        }
        let unrouted = (0..sink_names.len()).filter(|position| !named.contains(position)).collect();
        Ok(Router { rules, unrouted })
    }

    /// The positions of the sinks `alert` goes to, ascending, without repeats.
    pub fn route(&self, alert: &Alert) -> Vec<usize> {
        let mut targets: BTreeSet<usize> = self.unrouted.iter().copied().collect();
        for (rule, sinks) in &self.rules {
            if rule.matches(alert) {
                targets.extend(sinks.iter().copied());
            }
        }
        targets.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use peergraph_schemas::AlertEvent;

    use super::*;

    fn alert(detector: &str, severity: Severity, entity: &str) -> Alert {
        Alert {
            alert_id: "a1".into(),
            event: AlertEvent::Raised,
            detector: detector.into(),
            severity,
            score: 50.0,
            entity: entity.into(),
            peer_group: None,
            summary: "s".into(),
            evidence: BTreeMap::from([("label.team".to_string(), "payments".to_string())]),
            techniques: vec![],
            first_seen_ms: 0,
            last_seen_ms: 0,
            event_time_ms: 0,
        }
    }

    fn names(names: &[&str]) -> Vec<String> {
        names.iter().map(|name| name.to_string()).collect()
    }

    #[test]
    fn namespaces_come_from_pod_entities_or_workload_peer_groups() {
        assert_eq!(namespace_of(&alert("d", Severity::Low, "pod:shop/web-1")), Some("shop"));
        let mut by_group = alert("d", Severity::Low, "ip:10.0.0.1");
        assert_eq!(namespace_of(&by_group), None);
        by_group.peer_group = Some("workload:billing/Deployment/api".into());
        assert_eq!(namespace_of(&by_group), Some("billing"));
        assert_eq!(namespace_of(&alert("d", Severity::Low, "pod:noslash")), None);
    }

    #[test]
    fn alerts_go_to_every_sink_of_every_matching_rule_and_to_sinks_no_rule_names() {
        let routes = vec![
            RouteConfig { sinks: names(&["pagerduty"]), min_severity: Some(Severity::High), ..RouteConfig::default() },
            RouteConfig {
                sinks: names(&["jira", "pagerduty"]),
                detectors: names(&["beaconing"]),
                namespaces: names(&["shop"]),
                ..RouteConfig::default()
            },
            RouteConfig {
                sinks: names(&["servicenow"]),
                labels: BTreeMap::from([("team".to_string(), "payments".to_string())]),
                entity_prefixes: names(&["host:"]),
                ..RouteConfig::default()
            },
        ];
        let router = Router::new(&routes, &names(&["file", "pagerduty", "jira", "servicenow"])).expect("valid");
        assert_eq!(router.route(&alert("scan", Severity::Low, "ip:10.0.0.1")), [0], "only the catch-all");
        assert_eq!(router.route(&alert("scan", Severity::Critical, "ip:10.0.0.1")), [0, 1]);
        assert_eq!(router.route(&alert("beaconing", Severity::Low, "pod:shop/web")), [0, 1, 2]);
        assert_eq!(router.route(&alert("beaconing", Severity::Low, "pod:dev/web")), [0]);
        assert_eq!(router.route(&alert("scan", Severity::Low, "host:db-1")), [0, 3]);
        let mut unlabelled = alert("scan", Severity::Low, "host:db-1");
        unlabelled.evidence.clear();
        assert_eq!(router.route(&unlabelled), [0]);
    }

    #[test]
    fn a_rule_naming_an_unknown_sink_is_refused() {
        let routes = vec![RouteConfig { sinks: names(&["nowhere"]), ..RouteConfig::default() }];
        let error = Router::new(&routes, &names(&["file"])).expect_err("unknown sink");
        assert!(error.contains("nowhere"), "{error}");
        let error = Router::new(&[RouteConfig::default()], &names(&["file"])).expect_err("no sinks");
        assert!(error.contains("names no sink"), "{error}");
    }
}
