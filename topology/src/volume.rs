//! `Volume`: the difference type that carries a flow aggregate's numbers, so that differential's
//! consolidation does the windowed arithmetic (a window's total is the sum of the +/- updates).

use differential_dataflow::difference::{Abelian, IsZero, Monoid, Multiply, Semigroup};
use serde::{Deserialize, Serialize};

/// Flows, bytes and packets, each way. Signed: a window retraction is a negative volume.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Volume {
    pub flows: i64,
    /// Flows that never carried data both ways (see [`ConnState::is_failed`](peergraph_schemas::ConnState::is_failed)).
    pub failed: i64,
    pub bytes_out: i64,
    pub bytes_in: i64,
    pub packets_out: i64,
    pub packets_in: i64,
}

impl Volume {
    pub fn of_flow(flow: &peergraph_schemas::Flow) -> Volume {
        Volume {
            flows: 1,
            failed: flow.conn_state.is_failed() as i64,
            bytes_out: flow.bytes_out,
            bytes_in: flow.bytes_in,
            packets_out: flow.packets_out,
            packets_in: flow.packets_in,
        }
    }

    pub fn negated(mut self) -> Volume {
        self.negate();
        self
    }
}

impl IsZero for Volume {
    fn is_zero(&self) -> bool {
        *self == Volume::default()
    }
}

impl Semigroup for Volume {
    fn plus_equals(&mut self, rhs: &Self) {
        self.flows += rhs.flows;
        self.failed += rhs.failed;
        self.bytes_out += rhs.bytes_out;
        self.bytes_in += rhs.bytes_in;
        self.packets_out += rhs.packets_out;
        self.packets_in += rhs.packets_in;
    }
}

impl Monoid for Volume {
    fn zero() -> Self {
        Volume::default()
    }
}

impl Abelian for Volume {
    fn negate(&mut self) {
        self.flows = -self.flows;
        self.failed = -self.failed;
        self.bytes_out = -self.bytes_out;
        self.bytes_in = -self.bytes_in;
        self.packets_out = -self.packets_out;
        self.packets_in = -self.packets_in;
    }
}

/// Scaling by a count, as `join` and `explode` need.
impl Multiply<isize> for Volume {
    type Output = Volume;
    fn multiply(self, rhs: &isize) -> Volume {
        let k = *rhs as i64;
        Volume {
            flows: self.flows * k,
            failed: self.failed * k,
            bytes_out: self.bytes_out * k,
            bytes_in: self.bytes_in * k,
            packets_out: self.packets_out * k,
            packets_in: self.packets_in * k,
        }
    }
}
