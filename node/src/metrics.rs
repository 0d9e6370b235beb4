//! Prometheus metrics at `/metrics`, through the `metrics` crate and its Prometheus
//! exporter (recorder only; the node's own HTTP server serves the text).
//!
//! Two kinds of series. Events are counted where they happen: SIP responses by method
//! and class ([`sip_transaction`]), calls by disposition and RTP packets when a call's
//! record is stored ([`call_recorded`]), routing command latency ([`ProposeTimer`]).
//! Levels are read from the node's state when scraped ([`render`]): queue depth and
//! longest wait, agents by state and site, service level, Raft term, leader and lag,
//! recording disk use. Series names start with `carillon_`, units are last.
//!
//! The recorder is process-wide (the `metrics` macros use one global); a test process
//! that runs several nodes in-process sees their event counters summed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use carillon_ops::records::Cdr;
use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::node::Shared;

/// A call answered within this wait counts toward the service level (the common
/// 80/20 target's 20 seconds).
pub const SERVICE_LEVEL_THRESHOLD_MS: u64 = 20_000;

/// Latency buckets in seconds: routing commands commit in well under a millisecond
/// standalone and in milliseconds to a second through Raft over a WAN.
const LATENCY_BUCKETS_S: &[f64] = &[
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// Queue wait buckets in seconds.
const WAIT_BUCKETS_S: &[f64] = &[1.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
/// Answered within the threshold, and every call that was answered or abandoned, for
/// the service level.
static SL_WITHIN: AtomicU64 = AtomicU64::new(0);
static SL_OFFERED: AtomicU64 = AtomicU64::new(0);
/// Label sets set on earlier scrapes, so a level that vanished reads 0 instead of
/// keeping its last value.
static SEEN: Mutex<BTreeSet<(&'static str, String, String)>> = Mutex::new(BTreeSet::new());

/// Installs the process-wide recorder (once) and returns its handle.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new();
        // Both calls fail only for an empty bucket list, and ours are constants.
        let builder = builder
            .set_buckets_for_metric(
                Matcher::Full("carillon_routing_apply_seconds".into()),
                LATENCY_BUCKETS_S,
            )
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("carillon_call_wait_seconds".into()),
                    WAIT_BUCKETS_S,
                )
            })
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(carillon_consensus::log_store::APPEND_SECONDS_METRIC.into()),
                    LATENCY_BUCKETS_S,
                )
            })
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(crate::watchdog::LAG_METRIC.into()),
                    LATENCY_BUCKETS_S,
                )
            })
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("another metrics recorder is installed; /metrics shows levels only");
        }
        describe();
        handle
    })
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "carillon_calls_total",
        "Calls this node owned that ended, by disposition (answered, abandoned, lost...)."
    );
    describe_counter!(
        "carillon_sip_transactions_total",
        "SIP requests this node answered, by method and response class (2xx, 4xx...)."
    );
    describe_counter!(
        "carillon_rtp_packets_total",
        "RTP packets relayed between caller and agent, by direction (counted as calls end)."
    );
    describe_histogram!(
        "carillon_routing_apply_seconds",
        Unit::Seconds,
        "From proposing a routing command to its being applied (commit and apply through Raft in a cluster)."
    );
    describe_histogram!(
        carillon_consensus::log_store::APPEND_SECONDS_METRIC,
        Unit::Seconds,
        "Raft log group commits on this node: one redb write and fsync for every append queued meanwhile, which Raft waits on before it acknowledges or commits."
    );
    describe_histogram!(
        crate::watchdog::LAG_METRIC,
        Unit::Seconds,
        "How late the node's runtime woke a task asking to wake every 10 ms: over 0.1 s, tasks (Raft timers, SIP retransmissions) waited that long, and the node logs a stall."
    );
    describe_histogram!(
        "carillon_call_wait_seconds",
        Unit::Seconds,
        "Queue wait of calls this node owned, as they end."
    );
    describe_gauge!(
        "carillon_queue_depth",
        "Calls waiting in line per queue (not yet ringing an agent)."
    );
    describe_gauge!(
        "carillon_queue_longest_wait_seconds",
        Unit::Seconds,
        "The longest current wait among unanswered calls per queue."
    );
    describe_gauge!("carillon_agents", "Agents by routing state and site.");
    describe_counter!(
        "carillon_announcements_total",
        "Place-in-line and expected-wait announcements played to waiting callers."
    );
    describe_counter!(
        "carillon_holds_total",
        "Holds of calls, by side: caller or agent (their phones), api (CallService.Hold)."
    );
    describe_counter!(
        "carillon_transfers_total",
        "Transfers through the API, by target kind: queue, agent, number."
    );
    describe_counter!(
        "carillon_transfers_failed_total",
        "Blind transfers to a number that did not answer (the caller went back to the agent)."
    );
    describe_counter!(
        "carillon_consults_total",
        "Consultations through the API, by outcome: answered, unanswered, cancelled, \
         third-hung-up, conference (made a three-way call), completed (handed over)."
    );
    describe_gauge!(
        "carillon_service_level_ratio",
        "Calls answered within 20 s over calls answered or abandoned, on this node since start."
    );
    describe_gauge!(
        "carillon_raft_commit_lag_entries",
        "Log entries this node holds but has not applied yet."
    );
    crate::recording::describe_metrics();
}

/// One SIP request answered with `status`.
pub fn sip_transaction(method: &str, status: u16) {
    let class = match status / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        5 => "5xx",
        6 => "6xx",
        _ => "other",
    };
    counter!("carillon_sip_transactions_total", "method" => method.to_string(), "class" => class)
        .increment(1);
}

/// A call's record was stored: count it by disposition, its media and its wait.
pub fn call_recorded(cdr: &Cdr) {
    counter!("carillon_calls_total", "disposition" => cdr.disposition.clone()).increment(1);
    counter!("carillon_rtp_packets_total", "direction" => "caller_to_agent")
        .increment(cdr.rtp_caller_to_agent);
    counter!("carillon_rtp_packets_total", "direction" => "agent_to_caller")
        .increment(cdr.rtp_agent_to_caller);
    histogram!("carillon_call_wait_seconds").record(cdr.wait_ms as f64 / 1000.0);
    match cdr.disposition.as_str() {
        "answered" => {
            SL_OFFERED.fetch_add(1, Ordering::Relaxed);
            if cdr.wait_ms <= SERVICE_LEVEL_THRESHOLD_MS {
                SL_WITHIN.fetch_add(1, Ordering::Relaxed);
            }
        }
        "abandoned" => {
            SL_OFFERED.fetch_add(1, Ordering::Relaxed);
        }
        _ => {}
    }
}

/// Times one routing proposal; records when dropped.
pub struct ProposeTimer(std::time::Instant);

impl ProposeTimer {
    pub fn start() -> Self {
        ProposeTimer(crate::clock::instant())
    }
}

impl Drop for ProposeTimer {
    fn drop(&mut self) {
        histogram!("carillon_routing_apply_seconds").record(self.0.elapsed().as_secs_f64());
    }
}

/// The Prometheus text: levels refreshed from `shared`, then every series.
pub fn render(shared: &Shared) -> String {
    let handle = install();
    refresh(shared);
    handle.render()
}

fn refresh(shared: &Shared) {
    let status = shared.status();
    let acd = &status.acd;
    let mut levels: Vec<(&'static str, String, String, f64)> = Vec::new();
    for (queue, q) in &acd.queues {
        levels.push((
            "carillon_queue_depth",
            queue.clone(),
            String::new(),
            q.waiting as f64,
        ));
        levels.push((
            "carillon_queue_offering",
            queue.clone(),
            String::new(),
            q.offering as f64,
        ));
        levels.push((
            "carillon_queue_connected",
            queue.clone(),
            String::new(),
            q.connected as f64,
        ));
        levels.push((
            "carillon_queue_longest_wait_seconds",
            queue.clone(),
            String::new(),
            q.longest_wait_ms as f64 / 1000.0,
        ));
    }
    for ((state, site), n) in agents_by_state_and_site(shared) {
        levels.push(("carillon_agents", state, site, n as f64));
    }
    set_levels(levels);

    let t = acd.totals;
    for (outcome, n) in [
        ("entered", t.entered),
        ("answered", t.answered),
        ("abandoned", t.abandoned),
        ("lost", t.lost),
        ("exited", t.exited),
    ] {
        // Replicated cluster-wide totals, so a gauge: a new node starts from the log.
        gauge!("carillon_routing_calls", "outcome" => outcome).set(n as f64);
    }
    let offered = SL_OFFERED.load(Ordering::Relaxed);
    let within = SL_WITHIN.load(Ordering::Relaxed);
    let sl = if offered == 0 {
        1.0
    } else {
        within as f64 / offered as f64
    };
    gauge!("carillon_service_level_ratio").set(sl);
    gauge!("carillon_calls_active").set(status.calls.active as f64);
    gauge!("carillon_agents_registered").set(status.agents_registered as f64);
    gauge!("carillon_rtp_ports_in_use").set(status.rtp_ports_in_use as f64);
    counter!("carillon_sip_requests_total").absolute(status.sip_requests);
    counter!("carillon_sip_shed_total").absolute(status.sip_shed);
    counter!("carillon_sip_malformed_total").absolute(status.sip_malformed);
    gauge!("carillon_routing_applied_entries").set(shared.routing.applied() as f64);
    if let Some(cluster) = shared.routing.cluster() {
        let f = cluster.raft_figures();
        gauge!("carillon_raft_term").set(f.term as f64);
        gauge!("carillon_raft_leader").set(f.leader.unwrap_or(0) as f64);
        gauge!("carillon_raft_is_leader").set(if f.leader == Some(cluster.id()) {
            1.0
        } else {
            0.0
        });
        gauge!("carillon_raft_voters").set(f.voters as f64);
        let last_log = f.last_log_index.unwrap_or(0);
        let applied = f.last_applied.unwrap_or(0);
        gauge!("carillon_raft_last_log_index").set(last_log as f64);
        gauge!("carillon_raft_last_applied_index").set(applied as f64);
        gauge!("carillon_raft_commit_lag_entries").set(last_log.saturating_sub(applied) as f64);
    }
    crate::recording::refresh_metrics(shared);
}

/// Every configured agent the routing state knows, counted by state and site (every
/// state name appears for every site seen, so a state that empties reads 0).
fn agents_by_state_and_site(shared: &Shared) -> BTreeMap<(String, String), u64> {
    let ids: Vec<String> = shared
        .config
        .agent_accounts()
        .into_iter()
        .map(|a| a.id)
        .collect();
    let mut counts: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut sites: BTreeSet<String> = BTreeSet::new();
    shared.routing.read(|acd| {
        for id in &ids {
            let Some(state) = acd.agent_state(id) else {
                continue;
            };
            let site = acd.agent_site(id).unwrap_or("").to_string();
            sites.insert(site.clone());
            *counts.entry((state.name().to_string(), site)).or_insert(0) += 1;
        }
    });
    for site in sites {
        for state in carillon_routing::AgentState::NAMES {
            counts.entry((state.to_string(), site.clone())).or_insert(0);
        }
    }
    counts
}

/// Sets each level gauge, and zeroes the label sets an earlier scrape set that are gone.
fn set_levels(levels: Vec<(&'static str, String, String, f64)>) {
    let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    let now: BTreeSet<(&'static str, String, String)> = levels
        .iter()
        .map(|(n, a, b, _)| (*n, a.clone(), b.clone()))
        .collect();
    for (name, a, b) in seen.difference(&now) {
        set_one(name, a, b, 0.0);
    }
    for (name, a, b, v) in &levels {
        set_one(name, a, b, *v);
    }
    seen.extend(now);
}

fn set_one(name: &'static str, a: &str, b: &str, v: f64) {
    if name == "carillon_agents" {
        gauge!(name, "state" => a.to_string(), "site" => b.to_string()).set(v);
    } else {
        gauge!(name, "queue" => a.to_string()).set(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_sip_and_calls_into_prometheus_text() {
        let handle = install();
        sip_transaction("REGISTER", 401);
        sip_transaction("INVITE", 200);
        let cdr = Cdr {
            call_id: "c1".into(),
            sip_call_id: "s1".into(),
            caller: "555".into(),
            dialled: "100".into(),
            queue: "support".into(),
            agent: Some("1001".into()),
            arrived_at_ms: 1,
            offered_at_ms: Some(2),
            answered_at_ms: Some(3),
            ended_at_ms: 4,
            wait_ms: 2,
            disposition: "answered".into(),
            hangup_by: "caller".into(),
            cause: None,
            offers: 1,
            post_dial_us: None,
            rtp_caller_to_agent: 10,
            rtp_agent_to_caller: 12,
            node: "n1".into(),
            hold_ms: 0,
            ended_by: None,
            direction: "inbound".into(),
            transfer: None,
        };
        call_recorded(&cdr);
        let text = handle.render();
        assert!(
            text.contains(r#"carillon_sip_transactions_total{method="REGISTER",class="4xx"}"#),
            "{text}"
        );
        assert!(
            text.contains(r#"carillon_calls_total{disposition="answered"}"#),
            "{text}"
        );
        assert!(
            text.contains(r#"carillon_rtp_packets_total{direction="agent_to_caller"}"#),
            "{text}"
        );
    }
}
