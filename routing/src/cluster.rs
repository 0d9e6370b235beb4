//! The nodes of the cluster as routing sees them: who is alive, by lease.
//!
//! Every node proposes a `NodeLease` about once a second; the leader's `Tick` marks a node
//! down once its last lease is older than the cluster's `lease_ms`. Only nodes that have
//! leased at least once are watched, so a single node that never leases (tests, a lone
//! node) is never marked down.

use serde::{Deserialize, Serialize};

use crate::canon::{Canon, Fnv};
use crate::Millis;

/// Default lease length until `ConfigureCluster` says otherwise.
pub const LEASE_MS_DEFAULT: u64 = 3_000;

/// One registered node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub site: String,
    /// False once its lease lapsed, until it leases again.
    pub up: bool,
    pub last_lease_at: Millis,
}

impl Canon for NodeStatus {
    fn canon(&self, h: &mut Fnv) {
        let NodeStatus {
            site,
            up,
            last_lease_at,
        } = self;
        site.canon(h);
        up.canon(h);
        last_lease_at.canon(h);
    }
}
