//! `Asset` and `Indicator`: the two reference collections the pipeline joins flows against, each
//! read from a compacted topic (keyed by the network; a tombstone withdraws it).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What the inventory knows about an address or a network.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Asset {
    /// An address or a network in CIDR form ("10.0.4.7", "10.0.4.0/24"); the longest match wins.
    pub network: String,
    /// The asset's id; endpoints in `network` become the entity "asset:<id>".
    pub id: String,
    /// The asset's role ("domain-controller", "build-agent"); assets sharing a role form a peer group.
    #[serde(default)]
    pub role: Option<String>,
    /// Business criticality, 0 (lowest) to 5 (crown jewels); 2 is normal. Raises the severity of
    /// alerts about the asset.
    #[serde(default = "normal_criticality")]
    pub criticality: i32,
    /// Free-form labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

fn normal_criticality() -> i32 {
    2
}

/// A threat-intel indicator: a known-bad address or network.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Indicator {
    /// An address or a network in CIDR form.
    pub network: String,
    /// The feed it comes from.
    pub source: String,
    /// What it is ("emotet C2", "tor exit").
    #[serde(default)]
    pub description: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{Decoder, Encoder, WireFormat};

    #[test]
    fn assets_and_indicators_round_trip_in_every_format() {
        let asset = Asset {
            network: "10.0.4.0/24".into(),
            id: "dc-1".into(),
            role: Some("domain-controller".into()),
            criticality: 5,
            labels: BTreeMap::from([("site".into(), "fra".into())]),
        };
        let indicator = Indicator { network: "203.0.113.66".into(), source: "abuse.ch".into(), description: None };
        for format in [WireFormat::Json, WireFormat::AvroSingleObject] {
            let bytes = Encoder::<Asset>::new(format).unwrap().encode_to_vec(&asset).unwrap();
            assert_eq!(Decoder::<Asset>::default().decode(&bytes).unwrap(), asset);
            let bytes = Encoder::<Indicator>::new(format).unwrap().encode_to_vec(&indicator).unwrap();
            assert_eq!(Decoder::<Indicator>::default().decode(&bytes).unwrap(), indicator);
        }
        let minimal: Asset = serde_json::from_str(r#"{"network": "10.0.0.1", "id": "printer"}"#).unwrap();
        assert_eq!((minimal.criticality, minimal.role), (2, None));
    }
}
