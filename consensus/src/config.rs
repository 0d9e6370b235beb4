//! openraft settings for Carillon's clusters: timings that suit WAN links between sites,
//! pre-vote, and snapshot-then-purge log compaction.

use std::sync::Arc;

use openraft::{Config, ConfigError, SnapshotPolicy};

/// Election timeouts for links between sites. openraft lets a follower campaign only
/// after a leader lease (= the maximum) plus its own timeout, so a dead leader is replaced
/// after min+max..2*max = 1.05 to 1.2 s from its last heartbeat: WAN-tolerant (a
/// heartbeat may be late by 0.9 s before anyone campaigns), and the whole failover, with
/// the election and the next commit, stays under 1.5 s.
pub const ELECTION_TIMEOUT_MIN_MS_DEFAULT: u64 = 450;
pub const ELECTION_TIMEOUT_MAX_MS_DEFAULT: u64 = 600;
/// Heartbeats every 100 ms: a dead leader's last one is at most this old when it dies.
pub const HEARTBEAT_MS_DEFAULT: u64 = 100;
/// Entries applied since the last snapshot before a new one is built.
pub const SNAPSHOT_AFTER_LOGS_DEFAULT: u64 = 10_000;
/// Entries already in a snapshot that stay in the log, so a follower a little behind
/// catches up from the log instead of a whole snapshot.
pub const LOGS_KEPT_BEHIND_SNAPSHOT_MAX: u64 = 1000;
/// Time to send and install a whole snapshot over a WAN link.
pub const INSTALL_SNAPSHOT_TIMEOUT_MS: u64 = 30_000;

/// Builds and validates the Raft config. Pre-vote is on (openraft's `enable_pre_vote`): a
/// node back from a partition asks before it bumps the term, so it cannot unseat a healthy
/// leader. Snapshots are built every `snapshot_after_logs` applied entries; older log
/// entries are then purged, keeping at most [`LOGS_KEPT_BEHIND_SNAPSHOT_MAX`].
pub fn raft_config(
    election_timeout_min_ms: u64,
    election_timeout_max_ms: u64,
    heartbeat_ms: u64,
    snapshot_after_logs: u64,
) -> Result<Arc<Config>, ConfigError> {
    let snapshot_after_logs = snapshot_after_logs.max(1);
    let config = Config {
        cluster_name: "carillon".to_string(),
        election_timeout_min: election_timeout_min_ms,
        election_timeout_max: election_timeout_max_ms,
        heartbeat_interval: heartbeat_ms,
        install_snapshot_timeout: INSTALL_SNAPSHOT_TIMEOUT_MS,
        enable_pre_vote: Some(true),
        snapshot_policy: SnapshotPolicy::LogsSinceLast(snapshot_after_logs),
        max_in_snapshot_log_to_keep: LOGS_KEPT_BEHIND_SNAPSHOT_MAX.min(snapshot_after_logs),
        // A follower further behind than this gets a snapshot; it must exceed the snapshot
        // interval or a snapshot would not close the gap.
        replication_lag_threshold: snapshot_after_logs.saturating_mul(2),
        ..Config::default()
    };
    Ok(Arc::new(config.validate()?))
}

/// [`raft_config`] with the WAN defaults.
pub fn default_raft_config() -> Arc<Config> {
    // The defaults satisfy validate(): 450 < 600 and 100 < 450 (checked by a test).
    raft_config(
        ELECTION_TIMEOUT_MIN_MS_DEFAULT,
        ELECTION_TIMEOUT_MAX_MS_DEFAULT,
        HEARTBEAT_MS_DEFAULT,
        SNAPSHOT_AFTER_LOGS_DEFAULT,
    )
    .expect("the default timings are valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_enable_pre_vote() {
        let c = default_raft_config();
        assert_eq!(c.enable_pre_vote, Some(true));
        assert_eq!(c.election_timeout_min, 450);
        assert_eq!(c.heartbeat_interval, 100);
        assert!(matches!(
            c.snapshot_policy,
            SnapshotPolicy::LogsSinceLast(10_000)
        ));
    }

    #[test]
    fn bad_timings_are_refused() {
        assert!(raft_config(2000, 1000, 250, 100).is_err());
        assert!(raft_config(200, 400, 250, 100).is_err());
    }
}
