//! Peer groups: the sets of entities expected to behave alike. Here, the replicas of one
//! workload. Membership is windowed like everything else: a replica that stopped talking leaves
//! its group when its last flow leaves the window.

use differential_dataflow::VecCollection;

use crate::graph::Edge;
use crate::time::Epoch;
use crate::volume::Volume;

/// `(entity, group)` for every entity seen in the window that belongs to a workload.
pub fn membership<'s>(edges: VecCollection<'s, Epoch, Edge, Volume>) -> VecCollection<'s, Epoch, (String, String)> {
    edges
        .flat_map(|edge| {
            [edge.src, edge.dst].into_iter().filter_map(|end| end.workload.map(|group| (end.entity, group)))
        })
        .distinct()
}

/// `(group, members)` for every group, counting the members seen in the window.
pub fn group_sizes<'s>(
    members: VecCollection<'s, Epoch, (String, String)>,
) -> VecCollection<'s, Epoch, (String, isize)> {
    members.map(|(_entity, group)| group).count()
}
