//! The node's TOML configuration: parsing, defaults, and validation.
//!
//! Every error names the key at fault (`queues[1].ring_timeout_s: ...`) so an operator can
//! fix the file without reading code. Relative paths resolve against the config file's
//! directory, so `carillon run --config examples/single-node.toml` works from anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

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
    #[serde(default)]
    pub queues: Vec<QueueSection>,
    #[serde(default)]
    pub numbers: Vec<NumberConfig>,
    #[serde(default)]
    pub blacklist: Blacklist,
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
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NumberConfig {
    pub number: String,
    pub queue: String,
}

/// The node's place in a cluster: its Raft transport, its certificates, the members.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// Raft over QUIC listens here (UDP).
    pub listen: SocketAddr,
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
// openraft lets a follower campaign only after one leader lease (= the election timeout
// maximum) plus its own election timeout, so a leader's death is noticed after
// min+max..2*max: 1.15 to 1.4 s with these.
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
        let mut numbers = BTreeSet::new();
        for (i, n) in self.numbers.iter().enumerate() {
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
            if !queues.contains_key(&n.queue) {
                return Err(bad(
                    format!("numbers[{i}].queue"),
                    format!("no queue named `{}` (define it under [[queues]])", n.queue),
                ));
            }
        }
        Ok(())
    }
}

impl Config {
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
                if m.raft != c.listen {
                    return Err(bad(
                        format!("cluster.members[{i}].raft"),
                        format!(
                            "this node's own entry says {} but cluster.listen is {}",
                            m.raft, c.listen
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
}
