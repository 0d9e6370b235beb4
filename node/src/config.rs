//! The node's TOML configuration: parsing, defaults, and validation.
//!
//! Every error names the key at fault (`queues[1].ring_timeout_s: ...`) so an operator can
//! fix the file without reading code. Relative paths resolve against the config file's
//! directory, so `carillon run --config examples/single-node.toml` works from anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use carillon_routing::{
    Acd, Command, EscalationStep, ExitAction, OpenHours, QueueConfig, RoutingSettings, Schedule,
    Strategy, Vip, LEVEL_MAX, VIPS_MAX,
};
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: String, message: String },
    #[error("config {path}: {key}: {problem}")]
    Invalid {
        path: String,
        key: String,
        problem: String,
    },
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub node: NodeSection,
    pub sip: SipSection,
    pub rtp: RtpSection,
    pub http: HttpSection,
    #[serde(default)]
    pub grpc: Option<GrpcSection>,
    pub media: MediaSection,
    #[serde(default)]
    pub trunks: Vec<TrunkConfig>,
    #[serde(default)]
    pub agents: Vec<AgentGroup>,
    /// Supervisors' phones: they register like agents but take no calls from queues; they
    /// listen in, whisper, barge and take over ([`crate::call::supervise`]).
    #[serde(default)]
    pub supervisors: Vec<SupervisorAccount>,
    /// The feature codes a supervisor's phone dials to join a call.
    #[serde(default)]
    pub supervision: SupervisionSection,
    #[serde(default)]
    pub queues: Vec<QueueSection>,
    #[serde(default)]
    pub numbers: Vec<NumberConfig>,
    /// IVR flows that numbers may run before their calls queue ([`crate::ivr`]).
    #[serde(default)]
    pub flows: Vec<crate::ivr::config::FlowConfig>,
    #[serde(default)]
    pub blacklist: Blacklist,
    /// Caller numbers with a dedicated account manager.
    #[serde(default)]
    pub vip: Vec<VipConfig>,
    /// Cluster-wide routing rules (missed offers, fairness, last-agent affinity).
    #[serde(default)]
    pub routing: RoutingSection,
    /// How voicemail exits take their messages.
    #[serde(default)]
    pub voicemail: VoicemailSection,
    /// Call recording: on for every bridged call unless turned off here or per queue.
    #[serde(default)]
    pub recording: crate::recording::RecordingSection,
    /// Place-in-line and expected-wait announcements to waiting callers; absent: none.
    #[serde(default)]
    pub announcements: Option<crate::announce::AnnounceSection>,
    /// Callback in queue; absent: callers cannot ask to be called back.
    #[serde(default)]
    pub callback: Option<CallbackSection>,
    /// Present when the node is one member of a Raft cluster; absent, the node runs
    /// standalone with an in-process routing log.
    #[serde(default)]
    pub cluster: Option<ClusterSection>,
    /// The directory the config file sits in; relative paths resolve against it.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    pub id: String,
    #[serde(default = "default_site")]
    pub site: String,
    pub data_dir: PathBuf,
    #[serde(default = "default_max_calls")]
    pub max_concurrent_calls: usize,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SipSection {
    pub listen: SocketAddr,
    #[serde(default = "default_realm")]
    pub realm: String,
    #[serde(default = "default_expires_max")]
    pub registration_expires_max_s: u32,
    /// Requests waiting for the call-control task beyond this are shed with 503.
    #[serde(default = "default_pending_max")]
    pub pending_requests_max: usize,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RtpSection {
    pub ip: IpAddr,
    pub port_min: u16,
    pub port_max: u16,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    pub listen: SocketAddr,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcSection {
    pub listen: SocketAddr,
    /// The API's TLS certificate chain and key (PEM). Without them the API is served in
    /// plaintext, and only on a loopback address.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Bearer token -> what it may do. With no tokens every call is refused.
    #[serde(default)]
    pub tokens: BTreeMap<String, TokenConfig>,
}

/// One API token: its role (`agent`, `supervisor`, `admin`), the agent an agent token
/// acts as, and a name for the audit log.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    pub role: String,
    #[serde(default)]
    pub agent: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaSection {
    pub hold_music: PathBuf,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrunkConfig {
    pub name: String,
    pub allow: Vec<String>,
}

/// Either one agent (`id`, `password`) or a range sharing skills (`ids = "1001-1020"`,
/// `password_prefix = "pw"`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentGroup {
    pub id: Option<String>,
    pub password: Option<String>,
    pub ids: Option<String>,
    pub password_prefix: Option<String>,
    #[serde(default)]
    pub skills: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSection {
    pub name: String,
    pub skill: String,
    #[serde(default)]
    pub wrapup_s: f64,
    #[serde(default = "default_ring_timeout")]
    pub ring_timeout_s: f64,
    /// How long a call waits for an agent at its own site before any site's agent will
    /// do (0: any site at once; a local agent is still preferred among free ones).
    #[serde(default)]
    pub local_wait_s: f64,
    /// The priority of calls entering here when their number sets none (higher first).
    #[serde(default)]
    pub priority: u32,
    /// Minimum level (1-10) of `skill`; 0 or absent: any level.
    #[serde(default)]
    pub min_level: u8,
    /// Further required skills, `name` or `name:level`.
    #[serde(default)]
    pub extra_skills: Vec<String>,
    /// Steps that lower the required level as a call waits, `after_s` increasing.
    #[serde(default)]
    pub escalation: Vec<EscalationConfig>,
    /// longest_idle (default), round_robin, fewest_calls, least_talk_time, top_down,
    /// random, ring_all.
    #[serde(default)]
    pub strategy: Option<String>,
    /// For top_down: agent ids in the order they are tried.
    #[serde(default)]
    pub agent_order: Vec<String>,
    /// Cross-queue fairness weight (with `routing.fairness`); 0 means 1.
    #[serde(default)]
    pub weight: u32,
    /// A call waiting this long takes `max_wait_action` (0: no limit).
    #[serde(default)]
    pub max_wait_s: f64,
    #[serde(default)]
    pub max_wait_action: Option<ExitActionConfig>,
    /// A call arriving when this many wait takes `queue_full_action` (0: no limit).
    #[serde(default)]
    pub queue_len_max: usize,
    #[serde(default)]
    pub queue_full_action: Option<ExitActionConfig>,
    /// Move calls to `overflow_to` after this long (0: never by time)...
    #[serde(default)]
    pub overflow_after_s: f64,
    /// ...or when no logged-in agent could ever take them.
    #[serde(default)]
    pub overflow_when_no_agents: bool,
    #[serde(default)]
    pub overflow_to: Option<String>,
    /// Opening hours; absent: always open.
    #[serde(default)]
    pub schedule: Option<ScheduleConfig>,
    /// What a call arriving outside the schedule's hours gets (default: hang up).
    #[serde(default)]
    pub after_hours_action: Option<ExitActionConfig>,
    /// Attempts to reach a callback's customer before giving up (0 means 1).
    #[serde(default)]
    pub callback_attempts_max: u32,
    /// Least time between two callback attempts.
    #[serde(default)]
    pub callback_gap_s: f64,
    /// Record this queue's calls; absent: as `[recording].enabled` says.
    #[serde(default)]
    pub record: Option<bool>,
}

/// One escalation step: from `after_s` of waiting on, agents at `min_level` or above will do.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EscalationConfig {
    pub after_s: f64,
    pub min_level: u8,
}

/// What a call that leaves a queue without an agent gets: `action = "voicemail"` (into
/// `mailbox`, default the queue's name), `"hangup"` (after `prompt`, a WAV, if given) or
/// `"queue"` (moves to `queue`, keeping its arrival time).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExitActionConfig {
    pub action: String,
    #[serde(default)]
    pub mailbox: Option<String>,
    #[serde(default)]
    pub prompt: Option<PathBuf>,
    #[serde(default)]
    pub queue: Option<String>,
}

/// A queue's opening hours in its time zone.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// IANA zone name (`Europe/Paris`); default UTC.
    #[serde(default = "default_time_zone")]
    pub time_zone: String,
    #[serde(default)]
    pub hours: Vec<HoursConfig>,
    /// Closed all day, local dates `YYYY-MM-DD`.
    #[serde(default)]
    pub holidays: Vec<String>,
}

/// `days = "mon-fri"` (or `"sat"`, `"mon,wed,fri"`), `open = "09:00"`, `close = "17:30"`
/// (`"24:00"` for midnight).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoursConfig {
    pub days: String,
    pub open: String,
    pub close: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NumberConfig {
    pub number: String,
    /// Where calls queue; may be empty when `flow` is set (the flow names its queues).
    #[serde(default)]
    pub queue: String,
    /// An IVR flow (`[[flows]]` name) that calls to this number run before anything else.
    #[serde(default)]
    pub flow: Option<String>,
    /// Priority of calls to this number (higher first); absent: the queue's.
    #[serde(default)]
    pub priority: Option<u32>,
    /// Replaces the queue's required skills for these calls (`name` or `name:level`).
    #[serde(default)]
    pub skills: Vec<String>,
}

/// A VIP caller: waits up to `wait_s` for `agent`, then queues at `priority`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VipConfig {
    pub caller: String,
    #[serde(default)]
    pub agent: String,
    #[serde(default)]
    pub wait_s: f64,
    #[serde(default)]
    pub priority: u32,
}

/// Cluster-wide routing rules.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingSection {
    /// Missed offers in a row before an agent goes not ready `no-answer`.
    #[serde(default = "default_missed_offers")]
    pub missed_offers_max: u32,
    /// Serve the longest weighted wait first across queues (within a priority).
    #[serde(default)]
    pub fairness: bool,
    /// A caller served within this many days goes first to the same agent (0: off)...
    #[serde(default)]
    pub affinity_days: u32,
    /// ...if that agent is ready within this long.
    #[serde(default)]
    pub affinity_wait_s: f64,
    #[serde(default = "default_affinity_callers")]
    pub affinity_callers_max: usize,
}

impl Default for RoutingSection {
    fn default() -> Self {
        RoutingSection {
            missed_offers_max: default_missed_offers(),
            fairness: false,
            affinity_days: 0,
            affinity_wait_s: 0.0,
            affinity_callers_max: default_affinity_callers(),
        }
    }
}

/// Voicemail: the greeting, the beep, the longest message. Messages go to
/// `<data_dir>/voicemail/<mailbox>/<call id>.wav` with a JSON sidecar.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoicemailSection {
    /// A WAV greeting played before the beep (absent: the beep only).
    #[serde(default)]
    pub prompt: Option<PathBuf>,
    #[serde(default = "default_true")]
    pub beep: bool,
    #[serde(default = "default_message_length")]
    pub max_length_s: f64,
    /// New messages are refused (the caller hears the greeting, then is hung up on) once
    /// the mailboxes hold this much.
    #[serde(default = "default_voicemail_disk")]
    pub disk_limit_mb: u64,
}

/// Callback in queue: a waiting caller presses `key`, may type a number and `#` (else their
/// own number is kept), and hangs up keeping their place; at their turn the node calls the
/// agent, then the number through `gateway`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallbackSection {
    /// Where callback numbers are dialled: `sip:<number>@gateway`.
    pub gateway: SocketAddr,
    /// The DTMF key that asks for a callback (0-9, `*`, A-D).
    #[serde(default = "default_callback_key")]
    pub key: String,
    /// After the key, the caller's number is complete at `#` or after this long without a
    /// digit.
    #[serde(default = "default_digit_timeout")]
    pub digit_timeout_s: f64,
    /// How long the customer's phone rings before the attempt counts as unanswered.
    #[serde(default = "default_customer_ring")]
    pub ring_timeout_s: f64,
    /// Longest number a caller may type.
    #[serde(default = "default_number_digits")]
    pub number_digits_max: usize,
}

impl CallbackSection {
    /// The key as a character (validated at load).
    pub fn key_char(&self) -> char {
        self.key.chars().next().unwrap_or('*')
    }
}

impl Default for VoicemailSection {
    fn default() -> Self {
        VoicemailSection {
            prompt: None,
            beep: true,
            max_length_s: default_message_length(),
            disk_limit_mb: default_voicemail_disk(),
        }
    }
}

/// The node's place in a cluster: its Raft transport, its certificates, the members.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// Raft over QUIC listens here (UDP).
    pub listen: SocketAddr,
    /// Where the other members reach this node, when not at `listen` (behind a NAT, a
    /// load balancer or a fault proxy). This node's own entry in `members` must say it.
    #[serde(default)]
    pub advertise: Option<SocketAddr>,
    /// The cluster CA's certificate and this node's certificate and key (PEM), as made by
    /// `carillon certs`.
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Initialise the cluster from `members` when this node's log is empty. Every founding
    /// member may set it with the same member list.
    #[serde(default = "default_true")]
    pub bootstrap: bool,
    #[serde(default = "default_election_min")]
    pub election_timeout_min_ms: u64,
    #[serde(default = "default_election_max")]
    pub election_timeout_max_ms: u64,
    #[serde(default = "default_heartbeat")]
    pub heartbeat_ms: u64,
    /// A node whose liveness lease is older than this is declared down.
    #[serde(default = "default_lease")]
    pub lease_ms: u64,
    #[serde(default = "default_snapshot_logs")]
    pub snapshot_after_logs: u64,
    /// The founding members, this node included.
    pub members: Vec<MemberConfig>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberConfig {
    /// `n1`, `n2`... as in the node's certificate.
    pub id: String,
    pub raft: SocketAddr,
    pub sip: SocketAddr,
    pub http: SocketAddr,
    pub site: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Blacklist {
    #[serde(default)]
    pub callers: Vec<String>,
}

fn default_site() -> String {
    "default".into()
}
fn default_max_calls() -> usize {
    1000
}
fn default_realm() -> String {
    "carillon".into()
}
fn default_expires_max() -> u32 {
    3600
}
fn default_pending_max() -> usize {
    4096
}
fn default_ring_timeout() -> f64 {
    15.0
}
fn default_true() -> bool {
    true
}
fn default_time_zone() -> String {
    "UTC".into()
}
fn default_missed_offers() -> u32 {
    1
}
fn default_affinity_callers() -> usize {
    100_000
}
fn default_message_length() -> f64 {
    120.0
}
fn default_voicemail_disk() -> u64 {
    1024
}
fn default_callback_key() -> String {
    "*".into()
}
fn default_digit_timeout() -> f64 {
    5.0
}
fn default_customer_ring() -> f64 {
    30.0
}
fn default_number_digits() -> usize {
    20
}
// openraft lets a follower campaign only after one leader lease (= the election timeout
// maximum) plus its own election timeout, so a leader's death is noticed after
// min+max..2*max: 1.05 to 1.2 s with these.
fn default_election_min() -> u64 {
    carillon_consensus::config::ELECTION_TIMEOUT_MIN_MS_DEFAULT
}
fn default_election_max() -> u64 {
    carillon_consensus::config::ELECTION_TIMEOUT_MAX_MS_DEFAULT
}
fn default_heartbeat() -> u64 {
    carillon_consensus::config::HEARTBEAT_MS_DEFAULT
}
fn default_lease() -> u64 {
    3_000
}
fn default_snapshot_logs() -> u64 {
    10_000
}

/// `n3` or `3` to 3: the numeric id Raft uses for a node named in config or on the CLI.
pub fn parse_node_id(text: &str) -> Option<u64> {
    let digits = text.strip_prefix('n').unwrap_or(text);
    if digits.is_empty() || digits.len() > 18 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// An IPv4 or IPv6 network in CIDR form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Self, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("`{text}` is not an IP address or CIDR"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{text}`: prefix length must be 0 to {max}"))?,
            None => max,
        };
        Ok(Self { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => return false,
            },
            _ => ip,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// A supervisor's phone account (`[[supervisors]]`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupervisorAccount {
    pub id: String,
    pub password: String,
}

/// `[supervision]`: what a supervisor's phone dials, followed by the agent's id, to join
/// the call that agent is on.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupervisionSection {
    #[serde(default = "default_monitor_code")]
    pub monitor_code: String,
    #[serde(default = "default_whisper_code")]
    pub whisper_code: String,
    #[serde(default = "default_barge_code")]
    pub barge_code: String,
    /// How long the node rings a supervisor's phone for an API request.
    #[serde(default = "default_supervisor_ring")]
    pub ring_timeout_s: f64,
}

impl Default for SupervisionSection {
    fn default() -> Self {
        SupervisionSection {
            monitor_code: default_monitor_code(),
            whisper_code: default_whisper_code(),
            barge_code: default_barge_code(),
            ring_timeout_s: default_supervisor_ring(),
        }
    }
}

fn default_monitor_code() -> String {
    "*81".into()
}
fn default_whisper_code() -> String {
    "*82".into()
}
fn default_barge_code() -> String {
    "*83".into()
}
fn default_supervisor_ring() -> f64 {
    30.0
}

/// A configured agent with a resolved password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentAccount {
    pub id: String,
    pub password: String,
    pub skills: Vec<String>,
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        Self::from_toml(&text, &path.display().to_string(), base)
    }

    /// Parses and validates config text. `origin` names the source in errors.
    pub fn from_toml(text: &str, origin: &str, base_dir: PathBuf) -> Result<Self, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        config.base_dir = base_dir;
        config.validate(origin)?;
        Ok(config)
    }

    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base_dir.join(path)
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.resolve(&self.node.data_dir)
    }

    pub fn hold_music_path(&self) -> PathBuf {
        self.resolve(&self.media.hold_music)
    }

    /// Every trunk's allow list, parsed (validated at load, so this cannot fail).
    pub fn trunk_networks(&self) -> Vec<(String, Vec<Cidr>)> {
        self.trunks
            .iter()
            .map(|t| {
                let nets = t.allow.iter().filter_map(|a| Cidr::parse(a).ok()).collect();
                (t.name.clone(), nets)
            })
            .collect()
    }

    /// Whether `id` is a supervisor's account.
    pub fn is_supervisor(&self, id: &str) -> bool {
        self.supervisors.iter().any(|s| s.id == id)
    }

    /// Every account whose phone may register: the agents, then the supervisors.
    pub fn phone_accounts(&self) -> Vec<AgentAccount> {
        let mut out = self.agent_accounts();
        out.extend(self.supervisors.iter().map(|s| AgentAccount {
            id: s.id.clone(),
            password: s.password.clone(),
            skills: Vec::new(),
        }));
        out
    }

    /// Every configured agent (validated at load, so ranges are well formed).
    pub fn agent_accounts(&self) -> Vec<AgentAccount> {
        let mut out = Vec::new();
        for group in &self.agents {
            if let (Some(id), Some(pw)) = (&group.id, &group.password) {
                out.push(AgentAccount {
                    id: id.clone(),
                    password: pw.clone(),
                    skills: group.skills.clone(),
                });
            }
            if let (Some(range), Some(prefix)) = (&group.ids, &group.password_prefix) {
                if let Ok((lo, hi)) = parse_range(range) {
                    for n in lo..=hi {
                        out.push(AgentAccount {
                            id: n.to_string(),
                            password: format!("{prefix}{n}"),
                            skills: group.skills.clone(),
                        });
                    }
                }
            }
        }
        out
    }

    fn validate_supervisors(
        &self,
        agents: &BTreeSet<String>,
        bad: &dyn Fn(String, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        let mut ids = BTreeSet::new();
        for (i, s) in self.supervisors.iter().enumerate() {
            let user_ok = !s.id.is_empty()
                && s.id.len() <= 64
                && s.id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
            if !user_ok {
                return Err(bad(
                    format!("supervisors[{i}].id"),
                    "must be 1-64 letters, digits, `-`, `_` or `.`".into(),
                ));
            }
            if s.password.is_empty() {
                return Err(bad(
                    format!("supervisors[{i}].password"),
                    "must not be empty".into(),
                ));
            }
            if agents.contains(&s.id) {
                return Err(bad(
                    format!("supervisors[{i}].id"),
                    format!("`{}` is also an agent; a phone is one or the other", s.id),
                ));
            }
            if !ids.insert(s.id.clone()) {
                return Err(bad(
                    format!("supervisors[{i}].id"),
                    format!("supervisor `{}` is defined twice", s.id),
                ));
            }
        }
        let sup = &self.supervision;
        let codes = [
            ("supervision.monitor_code", &sup.monitor_code),
            ("supervision.whisper_code", &sup.whisper_code),
            ("supervision.barge_code", &sup.barge_code),
        ];
        for (key, code) in codes {
            let ok = (1..=8).contains(&code.len())
                && code
                    .chars()
                    .all(|c| c.is_ascii_digit() || c == '*' || c == '#');
            if !ok {
                return Err(bad(
                    key.into(),
                    format!("`{code}` must be 1-8 of the keys 0-9, `*` and `#`"),
                ));
            }
            for (other_key, other) in codes {
                if other_key != key && (other.starts_with(code.as_str())) {
                    return Err(bad(
                        key.into(),
                        format!("`{code}` is a prefix of {other_key} `{other}`; codes must differ"),
                    ));
                }
            }
        }
        if !(1.0..=300.0).contains(&sup.ring_timeout_s) {
            return Err(bad(
                "supervision.ring_timeout_s".into(),
                "must be between 1 and 300 seconds".into(),
            ));
        }
        Ok(())
    }

    fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let bad = |key: String, problem: String| ConfigError::Invalid {
            path: origin.to_string(),
            key,
            problem,
        };
        if self.node.id.trim().is_empty() {
            return Err(bad("node.id".into(), "must not be empty".into()));
        }
        if self.node.max_concurrent_calls == 0 {
            return Err(bad(
                "node.max_concurrent_calls".into(),
                "must be at least 1".into(),
            ));
        }
        if self.sip.pending_requests_max == 0 {
            return Err(bad(
                "sip.pending_requests_max".into(),
                "must be at least 1".into(),
            ));
        }
        if self.rtp.port_min > self.rtp.port_max || self.rtp.port_max - self.rtp.port_min < 3 {
            return Err(bad(
                "rtp.port_min".into(),
                format!(
                    "range {}..{} must hold at least 4 ports (port_min <= port_max)",
                    self.rtp.port_min, self.rtp.port_max
                ),
            ));
        }
        if self.rtp.port_min < 1024 {
            return Err(bad("rtp.port_min".into(), "must be 1024 or higher".into()));
        }
        for (i, trunk) in self.trunks.iter().enumerate() {
            if trunk.allow.is_empty() {
                return Err(bad(
                    format!("trunks[{i}].allow"),
                    "must list at least one address or CIDR".into(),
                ));
            }
            for net in &trunk.allow {
                Cidr::parse(net).map_err(|p| bad(format!("trunks[{i}].allow"), p))?;
            }
        }
        let mut agents = BTreeSet::new();
        for (i, group) in self.agents.iter().enumerate() {
            let single = group.id.is_some() || group.password.is_some();
            let range = group.ids.is_some() || group.password_prefix.is_some();
            let ids: Vec<String> = match (single, range) {
                (true, false) => match (&group.id, &group.password) {
                    (Some(id), Some(_)) if !id.is_empty() => vec![id.clone()],
                    _ => {
                        return Err(bad(
                            format!("agents[{i}]"),
                            "a single agent needs both `id` and `password`".into(),
                        ))
                    }
                },
                (false, true) => {
                    let (Some(r), Some(_)) = (&group.ids, &group.password_prefix) else {
                        return Err(bad(
                            format!("agents[{i}]"),
                            "a range of agents needs both `ids` and `password_prefix`".into(),
                        ));
                    };
                    let (lo, hi) =
                        parse_range(r).map_err(|p| bad(format!("agents[{i}].ids"), p))?;
                    (lo..=hi).map(|n| n.to_string()).collect()
                }
                _ => {
                    return Err(bad(
                        format!("agents[{i}]"),
                        "set either `id` + `password` or `ids` + `password_prefix`".into(),
                    ))
                }
            };
            for id in ids {
                if !agents.insert(id.clone()) {
                    return Err(bad(
                        format!("agents[{i}]"),
                        format!("agent {id} is defined twice"),
                    ));
                }
            }
        }
        self.validate_supervisors(&agents, &bad)?;
        let mut queues = BTreeMap::new();
        for (i, q) in self.queues.iter().enumerate() {
            if q.name.is_empty() {
                return Err(bad(format!("queues[{i}].name"), "must not be empty".into()));
            }
            if queues.insert(q.name.clone(), i).is_some() {
                return Err(bad(
                    format!("queues[{i}].name"),
                    format!("queue `{}` is defined twice", q.name),
                ));
            }
            if !(0.0..=3600.0).contains(&q.wrapup_s) {
                return Err(bad(
                    format!("queues[{i}].wrapup_s"),
                    "must be between 0 and 3600 seconds".into(),
                ));
            }
            if !(0.0..=3600.0).contains(&q.local_wait_s) {
                return Err(bad(
                    format!("queues[{i}].local_wait_s"),
                    "must be between 0 and 3600 seconds".into(),
                ));
            }
            if !(1.0..=600.0).contains(&q.ring_timeout_s) {
                return Err(bad(
                    format!("queues[{i}].ring_timeout_s"),
                    "must be between 1 and 600 seconds".into(),
                ));
            }
        }
        if let Some(cluster) = &self.cluster {
            self.validate_cluster(cluster, &bad)?;
        }
        if let Some(grpc) = &self.grpc {
            validate_grpc(grpc, &bad)?;
        }
        for (i, q) in self.queues.iter().enumerate() {
            self.validate_queue_rules(i, q, &queues, &bad)?;
        }
        for (i, group) in self.agents.iter().enumerate() {
            for skill in &group.skills {
                parse_skill(skill).map_err(|p| bad(format!("agents[{i}].skills"), p))?;
            }
        }
        self.validate_routing(&agents, &bad)?;
        let mut numbers = BTreeSet::new();
        for (i, n) in self.numbers.iter().enumerate() {
            for skill in &n.skills {
                parse_skill(skill).map_err(|p| bad(format!("numbers[{i}].skills"), p))?;
            }
            if n.number.is_empty() {
                return Err(bad(
                    format!("numbers[{i}].number"),
                    "must not be empty".into(),
                ));
            }
            if !numbers.insert(n.number.clone()) {
                return Err(bad(
                    format!("numbers[{i}].number"),
                    format!("number `{}` is mapped twice", n.number),
                ));
            }
            if let Some(flow) = &n.flow {
                if !self.flows.iter().any(|f| &f.name == flow) {
                    return Err(bad(
                        format!("numbers[{i}].flow"),
                        format!("no flow named `{flow}` (define it under [[flows]])"),
                    ));
                }
            }
            let queue_optional = n.flow.is_some() && n.queue.is_empty();
            if !queue_optional && !queues.contains_key(&n.queue) {
                return Err(bad(
                    format!("numbers[{i}].queue"),
                    format!("no queue named `{}` (define it under [[queues]])", n.queue),
                ));
            }
        }
        crate::ivr::config::validate(self).map_err(|(key, problem)| bad(key, problem))?;
        Ok(())
    }
}

/// Longest voicemail message accepted in config.
pub const MESSAGE_LENGTH_S_MAX: f64 = 3600.0;
/// Routing's bounds on a queue's escalation steps and schedule spans (checked here too, so
/// the error names the key).
const ESCALATION_STEPS_MAX: usize = 16;
const HOURS_MAX: usize = 64;
/// Longest wait-type duration accepted in config (a day).
const WAIT_S_MAX: f64 = 86_400.0;

impl Config {
    /// The queue's settings as routing takes them (validated at load).
    pub fn routing_queue(&self, q: &QueueSection) -> QueueConfig {
        let action = |a: &Option<ExitActionConfig>| {
            a.as_ref()
                .and_then(|a| self.exit_action(&q.name, a).ok())
                .unwrap_or_default()
        };
        QueueConfig {
            name: q.name.clone(),
            skill: q.skill.clone(),
            wrapup_ms: secs_ms(q.wrapup_s),
            ring_timeout_ms: secs_ms(q.ring_timeout_s),
            local_wait_ms: secs_ms(q.local_wait_s),
            min_level: q.min_level,
            extra_skills: q.extra_skills.clone(),
            escalation: q
                .escalation
                .iter()
                .map(|e| EscalationStep {
                    after_ms: secs_ms(e.after_s),
                    min_level: e.min_level,
                })
                .collect(),
            strategy: q
                .strategy
                .as_deref()
                .and_then(|s| parse_strategy(s).ok())
                .unwrap_or_default(),
            agent_order: q.agent_order.clone(),
            weight: q.weight,
            max_wait_ms: secs_ms(q.max_wait_s),
            max_wait_action: action(&q.max_wait_action),
            queue_len_max: q.queue_len_max,
            queue_full_action: action(&q.queue_full_action),
            overflow_after_ms: secs_ms(q.overflow_after_s),
            overflow_when_no_agents: q.overflow_when_no_agents,
            overflow_to: q.overflow_to.clone().unwrap_or_default(),
            schedule: q.schedule.as_ref().and_then(|s| parse_schedule(s).ok()),
            after_hours_action: action(&q.after_hours_action),
            callback_attempts_max: q.callback_attempts_max,
            callback_gap_ms: secs_ms(q.callback_gap_s),
        }
    }

    /// `[routing]` as routing takes it.
    pub fn routing_settings(&self) -> RoutingSettings {
        let r = &self.routing;
        RoutingSettings {
            missed_offers_max: r.missed_offers_max,
            fairness: r.fairness,
            affinity_days: r.affinity_days,
            affinity_wait_ms: secs_ms(r.affinity_wait_s),
            affinity_callers_max: r.affinity_callers_max,
        }
    }

    /// `[[vip]]` as (caller, VIP) pairs.
    pub fn routing_vips(&self) -> Vec<(String, Vip)> {
        self.vip
            .iter()
            .map(|v| {
                let vip = Vip {
                    agent: v.agent.clone(),
                    wait_ms: secs_ms(v.wait_s),
                    priority: v.priority,
                };
                (v.caller.clone(), vip)
            })
            .collect()
    }

    /// The priority and skill override of a call to `dialled` that enters `queue`.
    pub fn call_routing(&self, dialled: &str, queue: &str) -> (u32, Vec<String>) {
        let number = self.numbers.iter().find(|n| n.number == dialled);
        let queue_priority = self
            .queues
            .iter()
            .find(|q| q.name == queue)
            .map_or(0, |q| q.priority);
        let priority = number.and_then(|n| n.priority).unwrap_or(queue_priority);
        let skills = number.map(|n| n.skills.clone()).unwrap_or_default();
        (priority, skills)
    }

    /// The voicemail greeting's path, if one is configured.
    pub fn voicemail_prompt_path(&self) -> Option<PathBuf> {
        self.voicemail.prompt.as_ref().map(|p| self.resolve(p))
    }

    fn exit_action(&self, queue: &str, a: &ExitActionConfig) -> Result<ExitAction, String> {
        match a.action.as_str() {
            "voicemail" => {
                let mailbox = a.mailbox.clone().unwrap_or_else(|| queue.to_string());
                check_mailbox(&mailbox)?;
                Ok(ExitAction::Voicemail { mailbox })
            }
            "hangup" => Ok(ExitAction::Hangup {
                prompt: a
                    .prompt
                    .as_ref()
                    .map(|p| self.resolve(p).display().to_string())
                    .unwrap_or_default(),
            }),
            "queue" => match &a.queue {
                Some(q) if self.queues.iter().any(|x| &x.name == q) => {
                    Ok(ExitAction::Queue { queue: q.clone() })
                }
                Some(q) => Err(format!("no queue named `{q}` (define it under [[queues]])")),
                None => Err("action \"queue\" needs `queue`, the queue to move to".into()),
            },
            other => Err(format!(
                "action `{other}` is not one of voicemail, hangup, queue"
            )),
        }
    }

    fn validate_queue_rules(
        &self,
        i: usize,
        q: &QueueSection,
        queues: &BTreeMap<String, usize>,
        bad: &dyn Fn(String, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        let key = |k: &str| format!("queues[{i}].{k}");
        let secs = |k: &str, v: f64| {
            if (0.0..=WAIT_S_MAX).contains(&v) {
                Ok(())
            } else {
                Err(bad(
                    key(k),
                    format!("must be between 0 and {WAIT_S_MAX} seconds"),
                ))
            }
        };
        secs("max_wait_s", q.max_wait_s)?;
        secs("overflow_after_s", q.overflow_after_s)?;
        secs("callback_gap_s", q.callback_gap_s)?;
        if q.min_level > LEVEL_MAX {
            return Err(bad(key("min_level"), "must be 0 to 10".into()));
        }
        parse_skill(&q.skill).map_err(|p| bad(key("skill"), p))?;
        for s in &q.extra_skills {
            parse_skill(s).map_err(|p| bad(key("extra_skills"), p))?;
        }
        if q.escalation.len() > ESCALATION_STEPS_MAX {
            return Err(bad(
                key("escalation"),
                format!("at most {ESCALATION_STEPS_MAX} steps"),
            ));
        }
        let mut last = -1.0;
        for (j, step) in q.escalation.iter().enumerate() {
            let k = format!("queues[{i}].escalation[{j}]");
            if !(0.0..=WAIT_S_MAX).contains(&step.after_s) || step.after_s <= last {
                return Err(bad(
                    format!("{k}.after_s"),
                    "must be 0 to 86400 seconds and greater than the step before".into(),
                ));
            }
            last = step.after_s;
            if !(1..=LEVEL_MAX).contains(&step.min_level) {
                return Err(bad(format!("{k}.min_level"), "must be 1 to 10".into()));
            }
        }
        if let Some(s) = &q.strategy {
            parse_strategy(s).map_err(|p| bad(key("strategy"), p))?;
        }
        for (k, action) in [
            ("max_wait_action", &q.max_wait_action),
            ("queue_full_action", &q.queue_full_action),
            ("after_hours_action", &q.after_hours_action),
        ] {
            if let Some(a) = action {
                self.exit_action(&q.name, a).map_err(|p| bad(key(k), p))?;
            }
        }
        match &q.overflow_to {
            Some(to) if to == &q.name => {
                return Err(bad(
                    key("overflow_to"),
                    "a queue cannot overflow to itself".into(),
                ))
            }
            Some(to) if !queues.contains_key(to) => {
                return Err(bad(
                    key("overflow_to"),
                    format!("no queue named `{to}` (define it under [[queues]])"),
                ))
            }
            None if q.overflow_after_s > 0.0 || q.overflow_when_no_agents => {
                return Err(bad(
                    key("overflow_to"),
                    "is required with overflow_after_s or overflow_when_no_agents".into(),
                ))
            }
            _ => {}
        }
        if let Some(s) = &q.schedule {
            parse_schedule(s).map_err(|(k, p)| bad(format!("queues[{i}].schedule.{k}"), p))?;
        }
        // Last, routing's own checks (time zone names among them) on the whole config.
        let mut scratch = Acd::new();
        let cmd = Command::ConfigureQueue {
            queue: self.routing_queue(q),
            at: 0,
        };
        if let Err(e) = scratch.apply(cmd) {
            return Err(bad(format!("queues[{i}]"), e.to_string()));
        }
        Ok(())
    }

    fn validate_routing(
        &self,
        agents: &BTreeSet<String>,
        bad: &dyn Fn(String, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        let r = &self.routing;
        if !(0.0..=WAIT_S_MAX).contains(&r.affinity_wait_s) {
            return Err(bad(
                "routing.affinity_wait_s".into(),
                "must be between 0 and 86400 seconds".into(),
            ));
        }
        if r.affinity_days > 3650 {
            return Err(bad(
                "routing.affinity_days".into(),
                "must be 0 (off) to 3650 days".into(),
            ));
        }
        if r.affinity_callers_max == 0 {
            return Err(bad(
                "routing.affinity_callers_max".into(),
                "must be at least 1".into(),
            ));
        }
        if self.vip.len() > VIPS_MAX {
            return Err(bad("vip".into(), format!("at most {VIPS_MAX} VIP callers")));
        }
        let mut callers = BTreeSet::new();
        for (i, v) in self.vip.iter().enumerate() {
            if v.caller.is_empty() || !callers.insert(v.caller.as_str()) {
                return Err(bad(
                    format!("vip[{i}].caller"),
                    "must be set, and listed once".into(),
                ));
            }
            if !v.agent.is_empty() && !agents.contains(&v.agent) {
                return Err(bad(
                    format!("vip[{i}].agent"),
                    format!("no agent `{}` under [[agents]]", v.agent),
                ));
            }
            if !(0.0..=WAIT_S_MAX).contains(&v.wait_s) {
                return Err(bad(
                    format!("vip[{i}].wait_s"),
                    "must be between 0 and 86400 seconds".into(),
                ));
            }
        }
        if let Some(cb) = &self.callback {
            let mut key = cb.key.chars();
            match (key.next(), key.next()) {
                (Some(k), None) if "0123456789*ABCD".contains(k) => {}
                _ => {
                    return Err(bad(
                        "callback.key".into(),
                        "must be one DTMF key: 0-9, `*` or A-D (`#` ends the number)".into(),
                    ))
                }
            }
            if !(0.5..=60.0).contains(&cb.digit_timeout_s) {
                return Err(bad(
                    "callback.digit_timeout_s".into(),
                    "must be between 0.5 and 60 seconds".into(),
                ));
            }
            if !(1.0..=300.0).contains(&cb.ring_timeout_s) {
                return Err(bad(
                    "callback.ring_timeout_s".into(),
                    "must be between 1 and 300 seconds".into(),
                ));
            }
            if !(1..=32).contains(&cb.number_digits_max) {
                return Err(bad(
                    "callback.number_digits_max".into(),
                    "must be 1 to 32".into(),
                ));
            }
        }
        let m = self.voicemail.max_length_s;
        if !(1.0..=MESSAGE_LENGTH_S_MAX).contains(&m) {
            return Err(bad(
                "voicemail.max_length_s".into(),
                format!("must be between 1 and {MESSAGE_LENGTH_S_MAX} seconds"),
            ));
        }
        crate::recording::validate(&self.recording, &bad)?;
        if let Some(a) = &self.announcements {
            crate::announce::validate(a, &bad)?;
        }
        Ok(())
    }

    /// This node's numeric Raft id (validated at load when a cluster is configured).
    pub fn node_number(&self) -> Option<u64> {
        parse_node_id(&self.node.id)
    }

    fn validate_cluster(
        &self,
        c: &ClusterSection,
        bad: &dyn Fn(String, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        let Some(me) = parse_node_id(&self.node.id) else {
            return Err(bad(
                "node.id".into(),
                format!(
                    "`{}` must be `n` and a number (n1, n2...) in a cluster: Raft and the certificates name nodes by number",
                    self.node.id
                ),
            ));
        };
        if c.election_timeout_min_ms < 2 * c.heartbeat_ms.max(1) {
            return Err(bad(
                "cluster.election_timeout_min_ms".into(),
                "must be at least twice cluster.heartbeat_ms".into(),
            ));
        }
        if c.election_timeout_max_ms <= c.election_timeout_min_ms {
            return Err(bad(
                "cluster.election_timeout_max_ms".into(),
                "must be greater than cluster.election_timeout_min_ms".into(),
            ));
        }
        if c.lease_ms < c.heartbeat_ms.max(1) * 2 || c.lease_ms > 600_000 {
            return Err(bad(
                "cluster.lease_ms".into(),
                "must be between twice the heartbeat and 600000 ms".into(),
            ));
        }
        if c.snapshot_after_logs == 0 {
            return Err(bad(
                "cluster.snapshot_after_logs".into(),
                "must be at least 1".into(),
            ));
        }
        let mut ids = BTreeSet::new();
        for (i, m) in c.members.iter().enumerate() {
            let Some(id) = parse_node_id(&m.id) else {
                return Err(bad(
                    format!("cluster.members[{i}].id"),
                    format!("`{}` must be `n` and a number (n1, n2...)", m.id),
                ));
            };
            if !ids.insert(id) {
                return Err(bad(
                    format!("cluster.members[{i}].id"),
                    format!("member {} is listed twice", m.id),
                ));
            }
            if m.site.trim().is_empty() {
                return Err(bad(
                    format!("cluster.members[{i}].site"),
                    "must not be empty".into(),
                ));
            }
            if id == me {
                let (key, reached_at) = match c.advertise {
                    Some(a) => ("cluster.advertise", a),
                    None => ("cluster.listen", c.listen),
                };
                if m.raft != reached_at {
                    return Err(bad(
                        format!("cluster.members[{i}].raft"),
                        format!(
                            "this node's own entry says {} but {key} is {reached_at}",
                            m.raft
                        ),
                    ));
                }
                if m.site != self.node.site {
                    return Err(bad(
                        format!("cluster.members[{i}].site"),
                        format!(
                            "this node's own entry says `{}` but node.site is `{}`",
                            m.site, self.node.site
                        ),
                    ));
                }
            }
        }
        if c.bootstrap && !ids.contains(&me) {
            return Err(bad(
                "cluster.members".into(),
                format!(
                    "bootstrap is on but this node ({}) is not among the members",
                    self.node.id
                ),
            ));
        }
        Ok(())
    }

    pub fn cluster_member(&self, id: u64) -> Option<&MemberConfig> {
        self.cluster
            .as_ref()?
            .members
            .iter()
            .find(|m| parse_node_id(&m.id) == Some(id))
    }
}

fn validate_grpc(
    g: &GrpcSection,
    bad: &dyn Fn(String, String) -> ConfigError,
) -> Result<(), ConfigError> {
    match (&g.tls_cert, &g.tls_key) {
        (Some(_), None) => {
            return Err(bad(
                "grpc.tls_key".into(),
                "is required with grpc.tls_cert".into(),
            ))
        }
        (None, Some(_)) => {
            return Err(bad(
                "grpc.tls_cert".into(),
                "is required with grpc.tls_key".into(),
            ))
        }
        (None, None) if !g.listen.ip().is_loopback() => {
            return Err(bad(
                "grpc.listen".into(),
                format!(
                    "{} is not a loopback address: without grpc.tls_cert and grpc.tls_key the API (tokens included) would cross the network in plaintext",
                    g.listen
                ),
            ))
        }
        _ => {}
    }
    for (token, t) in &g.tokens {
        // Name the token by its grant, never by its text, in errors.
        let key = format!(
            "grpc.tokens (role {}, agent {})",
            t.role,
            t.agent.as_deref().unwrap_or("-")
        );
        if token.len() < 8 {
            return Err(bad(key, "a token must be at least 8 characters".into()));
        }
        if !matches!(t.role.as_str(), "agent" | "supervisor" | "admin") {
            return Err(bad(
                key,
                "role must be `agent`, `supervisor` or `admin`".into(),
            ));
        }
        if t.role == "agent" && t.agent.as_deref().unwrap_or("").is_empty() {
            return Err(bad(
                key,
                "an agent token needs `agent`, the agent id it acts as".into(),
            ));
        }
    }
    Ok(())
}

fn secs_ms(s: f64) -> u64 {
    // Validated non-negative and bounded, so the cast neither wraps nor saturates.
    (s * 1000.0).round() as u64
}

/// Checks `name` or `name:level` (level 1-10).
pub(crate) fn parse_skill(text: &str) -> Result<(), String> {
    let (name, level) = match text.rsplit_once(':') {
        Some((n, l)) => (n, Some(l)),
        None => (text, None),
    };
    if name.trim().is_empty() {
        return Err(format!("`{text}`: the skill name is empty"));
    }
    if let Some(l) = level {
        match l.parse::<u8>() {
            Ok(l) if (1..=LEVEL_MAX).contains(&l) => {}
            _ => return Err(format!("`{text}`: the level after `:` must be 1 to 10")),
        }
    }
    Ok(())
}

fn parse_strategy(text: &str) -> Result<Strategy, String> {
    Ok(match text {
        "longest_idle" => Strategy::LongestIdle,
        "round_robin" => Strategy::RoundRobin,
        "fewest_calls" => Strategy::FewestCalls,
        "least_talk_time" => Strategy::LeastTalkTime,
        "top_down" => Strategy::TopDown,
        "random" => Strategy::Random,
        "ring_all" => Strategy::RingAll,
        other => {
            return Err(format!(
                "`{other}` is not one of longest_idle, round_robin, fewest_calls, \
                 least_talk_time, top_down, random, ring_all"
            ))
        }
    })
}

/// A mailbox names a directory: keep it to a plain file name.
pub(crate) fn check_mailbox(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "mailbox `{name}` must be 1-64 letters, digits, `-`, `_` or `.` (not starting with `.`)"
        ))
    }
}

/// `[queues.schedule]` as routing takes it; errors name the sub-key.
pub(crate) fn parse_schedule(s: &ScheduleConfig) -> Result<Schedule, (String, String)> {
    let mut hours = Vec::new();
    for (j, h) in s.hours.iter().enumerate() {
        let key = |k: &str| format!("hours[{j}].{k}");
        let days = parse_days(&h.days).map_err(|p| (key("days"), p))?;
        let open = parse_clock(&h.open).map_err(|p| (key("open"), p))?;
        let close = parse_clock(&h.close).map_err(|p| (key("close"), p))?;
        if open >= close {
            return Err((key("close"), "must be later than `open`".into()));
        }
        for weekday in days {
            hours.push(OpenHours {
                weekday,
                open_min: open,
                close_min: close,
            });
        }
    }
    if hours.len() > HOURS_MAX {
        return Err(("hours".into(), format!("at most {} day spans", HOURS_MAX)));
    }
    for d in &s.holidays {
        let parts: Vec<&str> = d.split('-').collect();
        let ok = parts.len() == 3
            && parts[0].len() == 4
            && parts[1].len() == 2
            && parts[2].len() == 2
            && parts.iter().all(|p| p.bytes().all(|b| b.is_ascii_digit()));
        if !ok {
            return Err(("holidays".into(), format!("`{d}` is not a date YYYY-MM-DD")));
        }
    }
    Ok(Schedule {
        time_zone: s.time_zone.clone(),
        hours,
        holidays: s.holidays.clone(),
    })
}

const WEEKDAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// `mon-fri`, `sat`, `mon,wed,fri` or `daily` to weekdays 1 (Monday) to 7.
fn parse_days(text: &str) -> Result<Vec<u8>, String> {
    let day = |d: &str| {
        let d = d.trim().to_ascii_lowercase();
        WEEKDAYS
            .iter()
            .position(|w| d.starts_with(w))
            .and_then(|p| u8::try_from(p + 1).ok())
            .ok_or_else(|| format!("`{d}` is not a weekday (mon, tue, ... sun)"))
    };
    if text.trim().eq_ignore_ascii_case("daily") {
        return Ok((1..=7).collect());
    }
    let mut out = Vec::new();
    for part in text.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (day(a)?, day(b)?);
                if a > b {
                    return Err(format!("`{part}` must run Monday-wards to Sunday"));
                }
                out.extend(a..=b);
            }
            None => out.push(day(part)?),
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// `HH:MM` (00:00 to 24:00) to minutes after midnight.
fn parse_clock(text: &str) -> Result<u16, String> {
    let bad = || format!("`{text}` is not a time HH:MM between 00:00 and 24:00");
    let (h, m) = text.trim().split_once(':').ok_or_else(bad)?;
    let h: u16 = h.parse().map_err(|_| bad())?;
    let m: u16 = m.parse().map_err(|_| bad())?;
    if h > 24 || m > 59 || h * 60 + m > 1440 {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

fn parse_range(text: &str) -> Result<(u64, u64), String> {
    let (lo, hi) = text
        .split_once('-')
        .ok_or_else(|| format!("`{text}` is not a range like \"1001-1020\""))?;
    let lo: u64 = lo
        .trim()
        .parse()
        .map_err(|_| format!("`{text}`: `{lo}` is not a number"))?;
    let hi: u64 = hi
        .trim()
        .parse()
        .map_err(|_| format!("`{text}`: `{hi}` is not a number"))?;
    if lo > hi || hi - lo >= 100_000 {
        return Err(format!(
            "`{text}`: the range must run low to high and hold at most 100000 agents"
        ));
    }
    Ok((lo, hi))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[node]
id = "n1"
data_dir = "var"
[sip]
listen = "127.0.0.1:5060"
[rtp]
ip = "127.0.0.1"
port_min = 20000
port_max = 20100
[http]
listen = "127.0.0.1:8080"
[media]
hold_music = "hold.wav"
[[trunks]]
name = "local"
allow = ["127.0.0.0/8"]
[[agents]]
ids = "1001-1003"
password_prefix = "pw"
skills = ["support"]
[[agents]]
id = "2001"
password = "secret"
[[queues]]
name = "support"
skill = "support"
wrapup_s = 1
ring_timeout_s = 10
[[numbers]]
number = "100"
queue = "support"
"#;

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, "test.toml", PathBuf::from("/etc/carillon"))
    }

    #[test]
    fn grpc_tokens_and_plaintext_rules() {
        let with = |grpc: &str| load(&format!("{GOOD}\n[grpc]\n{grpc}"));
        let ok = with(
            "listen = \"127.0.0.1:9090\"\n[grpc.tokens]\n\"agent-token-1\" = { role = \"agent\", agent = \"1001\" }",
        )
        .expect("a loopback API with an agent token");
        let grpc = ok.grpc.expect("[grpc]");
        assert_eq!(grpc.tokens["agent-token-1"].agent.as_deref(), Some("1001"));
        let err = |grpc: &str| with(grpc).expect_err(grpc).to_string();
        assert!(err("listen = \"0.0.0.0:9090\"").contains("plaintext"));
        assert!(err("listen = \"0.0.0.0:9090\"\ntls_cert = \"c.pem\"").contains("grpc.tls_key"));
        let bad_role = err(
            "listen = \"127.0.0.1:9090\"\n[grpc.tokens]\n\"long-token-1\" = { role = \"root\" }",
        );
        assert!(bad_role.contains("role must be") && !bad_role.contains("long-token-1"));
        assert!(err(
            "listen = \"127.0.0.1:9090\"\n[grpc.tokens]\n\"long-token-1\" = { role = \"agent\" }"
        )
        .contains("needs `agent`"));
        assert!(err(
            "listen = \"127.0.0.1:9090\"\n[grpc.tokens]\n\"short\" = { role = \"admin\" }"
        )
        .contains("at least 8"));
    }

    #[test]
    fn good_config_loads_with_agents_expanded_and_paths_resolved() {
        let c = load(GOOD).expect("valid");
        let agents = c.agent_accounts();
        assert_eq!(agents.len(), 4);
        assert_eq!(agents[0].id, "1001");
        assert_eq!(agents[0].password, "pw1001");
        assert_eq!(agents[3].password, "secret");
        assert_eq!(c.hold_music_path(), PathBuf::from("/etc/carillon/hold.wav"));
        assert_eq!(c.node.max_concurrent_calls, 1000);
    }

    #[test]
    fn errors_name_the_key() {
        let e = load(&GOOD.replace("queue = \"support\"", "queue = \"sales\""))
            .expect_err("unknown queue");
        assert!(e.to_string().contains("numbers[0].queue"), "{e}");
        let e = load(&GOOD.replace("127.0.0.0/8", "127.0.0.0/40")).expect_err("bad cidr");
        assert!(e.to_string().contains("trunks[0].allow"), "{e}");
        let e = load(&GOOD.replace("ring_timeout_s = 10", "ring_timeout_s = 0"))
            .expect_err("ring timeout");
        assert!(e.to_string().contains("queues[0].ring_timeout_s"), "{e}");
        let e = load(&GOOD.replace("[http]", "[http]\nlisten_on = 1")).expect_err("unknown key");
        assert!(e.to_string().contains("listen_on"), "{e}");
        let e = load(&GOOD.replace("1001-1003", "1003-1001")).expect_err("range");
        assert!(e.to_string().contains("agents[0].ids"), "{e}");
        let e = load(&GOOD.replace("\"2001\"", "\"1002\"")).expect_err("dup agent");
        assert!(e.to_string().contains("defined twice"), "{e}");
    }

    const CLUSTER: &str = r#"
[cluster]
listen = "127.0.0.1:7000"
ca = "certs/ca.pem"
cert = "certs/n1.pem"
key = "certs/n1.key"
[[cluster.members]]
id = "n1"
raft = "127.0.0.1:7000"
sip = "127.0.0.1:5060"
http = "127.0.0.1:8080"
site = "hq"
[[cluster.members]]
id = "n2"
raft = "127.0.0.2:7000"
sip = "127.0.0.2:5060"
http = "127.0.0.2:8080"
site = "branch"
"#;

    #[test]
    fn cluster_section_loads_with_defaults_and_checks_its_own_entry() {
        let text = format!(
            "{}{CLUSTER}",
            GOOD.replace("data_dir", "site = \"hq\"\ndata_dir")
        );
        let c = load(&text).expect("valid cluster");
        let cl = c.cluster.as_ref().expect("cluster");
        assert_eq!(cl.election_timeout_min_ms, 450);
        assert_eq!(cl.lease_ms, 3_000);
        assert!(cl.bootstrap);
        assert_eq!(c.node_number(), Some(1));
        assert_eq!(c.cluster_member(2).map(|m| m.site.as_str()), Some("branch"));
        let e = load(&text.replace("listen = \"127.0.0.1:7000\"", "listen = \"127.0.0.1:7001\""))
            .expect_err("own raft addr mismatch");
        assert!(e.to_string().contains("cluster.members[0].raft"), "{e}");
        // Behind a proxy: listen on one port, advertised (and listed) at another.
        let behind = text.replace(
            "listen = \"127.0.0.1:7000\"",
            "listen = \"127.0.0.1:7001\"\nadvertise = \"127.0.0.1:7000\"",
        );
        let c = load(&behind).expect("advertised address matches the own entry");
        assert_eq!(
            c.cluster.as_ref().and_then(|cl| cl.advertise),
            Some("127.0.0.1:7000".parse().expect("addr"))
        );
        let e = load(&behind.replace(
            "advertise = \"127.0.0.1:7000\"",
            "advertise = \"127.0.0.1:7002\"",
        ))
        .expect_err("own entry differs from advertise");
        assert!(
            e.to_string()
                .contains("cluster.advertise is 127.0.0.1:7002"),
            "{e}"
        );
        let e = load(&text.replace("id = \"n2\"", "id = \"n1\"")).expect_err("dup member");
        assert!(e.to_string().contains("listed twice"), "{e}");
        let e = load(&text.replace("[node]\nid = \"n1\"", "[node]\nid = \"one\""))
            .expect_err("bad node id");
        assert!(e.to_string().contains("node.id"), "{e}");
        assert_eq!(parse_node_id("n12"), Some(12));
        assert_eq!(parse_node_id("7"), Some(7));
        assert_eq!(parse_node_id("nx"), None);
        assert_eq!(parse_node_id(""), None);
    }

    const ROUTING: &str = r#"
[[queues]]
name = "sales"
skill = "sales"
min_level = 8
extra_skills = ["french:3"]
escalation = [{ after_s = 30, min_level = 5 }, { after_s = 60, min_level = 1 }]
strategy = "round_robin"
priority = 2
max_wait_s = 600
max_wait_action = { action = "voicemail", mailbox = "sales-box" }
queue_len_max = 50
queue_full_action = { action = "queue", queue = "support" }
overflow_after_s = 120
overflow_to = "support"
after_hours_action = { action = "hangup", prompt = "closed.wav" }
callback_attempts_max = 3
callback_gap_s = 60
[queues.schedule]
time_zone = "Europe/Paris"
hours = [{ days = "mon-fri", open = "09:00", close = "17:30" }, { days = "sat", open = "10:00", close = "12:00" }]
holidays = ["2025-12-25"]
[[numbers]]
number = "200"
queue = "sales"
priority = 7
skills = ["sales:9"]
[[vip]]
caller = "5551234"
agent = "2001"
wait_s = 20
priority = 9
[routing]
missed_offers_max = 3
fairness = true
affinity_days = 30
affinity_wait_s = 10
[voicemail]
max_length_s = 60
"#;

    #[test]
    fn routing_rules_load_and_convert() {
        let text = format!(
            "{}{ROUTING}",
            GOOD.replace("\"support\"]", "\"support:7\"]")
        );
        let c = load(&text).expect("valid routing config");
        let sales = c.routing_queue(&c.queues[1]);
        assert_eq!(sales.min_level, 8);
        assert_eq!(sales.escalation.len(), 2);
        assert_eq!(sales.escalation[0].after_ms, 30_000);
        assert_eq!(sales.strategy, Strategy::RoundRobin);
        assert_eq!(
            sales.max_wait_action,
            ExitAction::Voicemail {
                mailbox: "sales-box".into()
            }
        );
        assert_eq!(
            sales.queue_full_action,
            ExitAction::Queue {
                queue: "support".into()
            }
        );
        assert_eq!(
            sales.after_hours_action,
            ExitAction::Hangup {
                prompt: "/etc/carillon/closed.wav".into()
            }
        );
        let schedule = sales.schedule.expect("schedule");
        assert_eq!(schedule.hours.len(), 6, "five weekdays and Saturday");
        assert_eq!(schedule.hours[0].open_min, 9 * 60);
        assert_eq!(schedule.hours[0].close_min, 17 * 60 + 30);
        assert_eq!(sales.callback_gap_ms, 60_000);
        assert_eq!(
            c.call_routing("200", "sales"),
            (7, vec!["sales:9".to_string()])
        );
        assert_eq!(c.call_routing("100", "support"), (0, vec![]));
        assert_eq!(c.call_routing("999", "sales"), (2, vec![]));
        let settings = c.routing_settings();
        assert_eq!(settings.missed_offers_max, 3);
        assert!(settings.fairness);
        assert_eq!(settings.affinity_wait_ms, 10_000);
        let vips = c.routing_vips();
        assert_eq!(vips[0].0, "5551234");
        assert_eq!(vips[0].1.wait_ms, 20_000);
        // Defaults keep the old behaviour.
        let plain = load(GOOD).expect("valid");
        assert_eq!(plain.routing_settings(), RoutingSettings::default());
        assert_eq!(plain.routing_queue(&plain.queues[0]).schedule, None);
        assert_eq!(plain.voicemail.max_length_s, 120.0);
    }

    #[test]
    fn routing_errors_name_the_key() {
        let base = format!("{GOOD}{ROUTING}");
        let err = |from: &str, to: &str| {
            assert!(base.contains(from), "{from}");
            load(&base.replacen(from, to, 1)).expect_err(to).to_string()
        };
        let e = err("min_level = 8", "min_level = 11");
        assert!(e.contains("queues[1].min_level"), "{e}");
        let e = err("after_s = 60", "after_s = 20");
        assert!(e.contains("queues[1].escalation[1].after_s"), "{e}");
        let e = err("\"round_robin\"", "\"fastest\"");
        assert!(e.contains("queues[1].strategy"), "{e}");
        let e = err("queue = \"support\" }", "queue = \"nowhere\" }");
        assert!(e.contains("queues[1].queue_full_action"), "{e}");
        let e = err("mailbox = \"sales-box\"", "mailbox = \"../x\"");
        assert!(e.contains("queues[1].max_wait_action"), "{e}");
        let e = err("action = \"hangup\"", "action = \"explode\"");
        assert!(e.contains("queues[1].after_hours_action"), "{e}");
        let e = err("overflow_to = \"support\"", "overflow_to = \"sales\"");
        assert!(e.contains("queues[1].overflow_to"), "{e}");
        let e = err("\"mon-fri\"", "\"mon-funday\"");
        assert!(e.contains("queues[1].schedule.hours[0].days"), "{e}");
        let e = err("close = \"17:30\"", "close = \"08:00\"");
        assert!(e.contains("queues[1].schedule.hours[0].close"), "{e}");
        let e = err("\"2025-12-25\"", "\"25/12/2025\"");
        assert!(e.contains("queues[1].schedule.holidays"), "{e}");
        let e = err("\"Europe/Paris\"", "\"Mars/Olympus\"");
        assert!(e.contains("queues[1]") && e.contains("time_zone"), "{e}");
        let e = err("[\"sales:9\"]", "[\"sales:0\"]");
        assert!(e.contains("numbers[1].skills"), "{e}");
        let e = err("agent = \"2001\"", "agent = \"9999\"");
        assert!(e.contains("vip[0].agent"), "{e}");
        let e = err("max_length_s = 60", "max_length_s = 0");
        assert!(e.contains("voicemail.max_length_s"), "{e}");
        let e = err("affinity_wait_s = 10", "affinity_wait_s = -1");
        assert!(e.contains("routing.affinity_wait_s"), "{e}");
        let e = load(&GOOD.replace("[\"support\"]", "[\"support:12\"]")).expect_err("level");
        assert!(e.to_string().contains("agents[0].skills"), "{e}");
    }

    #[test]
    fn days_and_clock_parse() {
        assert_eq!(parse_days("mon-fri").expect("range"), vec![1, 2, 3, 4, 5]);
        assert_eq!(parse_days("sun,sat").expect("list"), vec![6, 7]);
        assert_eq!(parse_days("daily").expect("daily").len(), 7);
        assert!(parse_days("fri-mon").is_err());
        assert_eq!(parse_clock("24:00"), Ok(1440));
        assert!(parse_clock("24:01").is_err());
        assert!(parse_clock("9999:00").is_err());
        assert!(parse_clock("9").is_err());
    }

    #[test]
    fn cidr_matching() {
        let net = Cidr::parse("127.0.0.0/8").expect("cidr");
        assert!(net.contains("127.1.2.3".parse().expect("ip")));
        assert!(!net.contains("10.0.0.1".parse().expect("ip")));
        assert!(net.contains("::ffff:127.0.0.1".parse().expect("ip")));
        let host = Cidr::parse("127.0.0.9").expect("cidr");
        assert!(host.contains("127.0.0.9".parse().expect("ip")));
        assert!(!host.contains("127.0.0.1".parse().expect("ip")));
        let all = Cidr::parse("0.0.0.0/0").expect("cidr");
        assert!(all.contains("8.8.8.8".parse().expect("ip")));
        let v6 = Cidr::parse("::1/128").expect("cidr");
        assert!(v6.contains("::1".parse().expect("ip")));
    }

    #[test]
    fn supervisors_register_but_are_not_agents_and_codes_are_checked() {
        let c = load(&format!(
            "{GOOD}\n[[supervisors]]\nid = \"9001\"\npassword = \"sup\"\n[supervision]\nbarge_code = \"*89\""
        ))
        .expect("a supervisor");
        assert!(c.is_supervisor("9001") && !c.is_supervisor("1001"));
        assert_eq!(c.agent_accounts().len(), 4);
        assert_eq!(c.phone_accounts().len(), 5);
        assert_eq!(c.supervision.monitor_code, "*81");
        assert_eq!(c.supervision.barge_code, "*89");
        let err = |extra: &str| {
            load(&format!("{GOOD}\n{extra}"))
                .expect_err(extra)
                .to_string()
        };
        assert!(
            err("[[supervisors]]\nid = \"1001\"\npassword = \"x\"").contains("supervisors[0].id")
        );
        assert!(err("[[supervisors]]\nid = \"9001\"\npassword = \"\"")
            .contains("supervisors[0].password"));
        assert!(err("[supervision]\nwhisper_code = \"*8\"").contains("supervision.whisper_code"));
        assert!(err("[supervision]\nmonitor_code = \"*8a\"").contains("supervision.monitor_code"));
    }
}
