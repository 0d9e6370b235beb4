//! A `carillon run --config` process for one test: its config (from an example, with every
//! listen address, the RTP range and the data dir replaced by this test's own), its temp
//! directory, and its HTTP surfaces. The process is killed on drop, also while a failed
//! assertion unwinds; the directory is kept then, and its path printed, for the post-mortem.

use std::fs::{self, File};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use toml::{Table, Value as Toml};

use super::http;
use super::ports::{free_port, PortBlock};

/// How long a node may take from spawn to a 200 on /health.
const STARTUP_TIMEOUT_MS: u64 = 20_000;
/// Timeout of one API request.
const HTTP_TIMEOUT_MS: u64 = 5_000;
/// Log lines shown in assertion messages.
const LOG_TAIL_LINES: usize = 40;

/// The workspace root (the tests crate sits one level below it).
pub fn workspace_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| manifest.to_path_buf())
}

/// The `carillon` binary: `$CARILLON_BIN`, else the one beside this test executable in the
/// workspace target dir (`target/<profile>/carillon`). Cargo builds it only for its own
/// crate's tests, so run `cargo build -p carillon` before these tests.
pub fn carillon_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CARILLON_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    // .../target/<profile>/deps/it-HASH: the binary is two levels up.
    for dir in exe.ancestors().skip(1).take(3) {
        let candidate = dir.join("carillon");
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "carillon binary not found near {}: run `cargo build -p carillon` first \
         (same profile as the tests), or set CARILLON_BIN",
        exe.display()
    );
}

/// A node's config under construction: an example's TOML, edited by the test.
pub struct NodeSpec {
    table: Table,
}

impl NodeSpec {
    /// examples/`file` parsed, with its relative paths made absolute (the test's config
    /// file lives elsewhere, and relative paths are relative to the config file).
    pub fn from_example(file: &str) -> NodeSpec {
        let path = workspace_dir().join("examples").join(file);
        let text =
            fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let mut table: Table = toml::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not valid TOML: {e}", path.display()));
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        absolutize_paths(&mut table, &base);
        NodeSpec { table }
    }

    /// The single-node example with a known cast: agents 1001-1020 (password `pw<id>`,
    /// skill support), queue `support` (wrap-up 0 s, ring timeout 10 s), number 100,
    /// blacklisted caller 666, one trunk allowing 127.0.0.0/8.
    pub fn for_test() -> NodeSpec {
        let mut spec = NodeSpec::from_example("single-node.toml");
        spec.with_test_cast();
        spec
    }

    /// Puts in the known cast of [`NodeSpec::for_test`].
    pub fn with_test_cast(&mut self) -> &mut Self {
        let spec = self;
        let t = &mut spec.table;
        t.insert(
            "agents".into(),
            toml_array([table(&[
                ("ids", "1001-1020".into()),
                ("password_prefix", "pw".into()),
                ("skills", Toml::Array(vec!["support".into()])),
            ])]),
        );
        t.insert(
            "queues".into(),
            toml_array([table(&[
                ("name", "support".into()),
                ("skill", "support".into()),
                ("wrapup_s", 0.into()),
                ("ring_timeout_s", 10.into()),
            ])]),
        );
        t.insert(
            "numbers".into(),
            toml_array([table(&[
                ("number", "100".into()),
                ("queue", "support".into()),
            ])]),
        );
        t.insert(
            "blacklist".into(),
            Toml::Table(table(&[("callers", Toml::Array(vec!["666".into()]))])),
        );
        spec.trunk_allow(&["127.0.0.0/8"]);
        spec
    }

    /// Sets `key` in table `section` (created if missing), e.g. ("node", "max_concurrent_calls").
    pub fn set(&mut self, section: &str, key: &str, value: impl Into<Toml>) -> &mut Self {
        let entry = self
            .table
            .entry(section.to_string())
            .or_insert_with(|| Toml::Table(Table::new()));
        match entry {
            Toml::Table(t) => {
                t.insert(key.to_string(), value.into());
            }
            _ => panic!("[{section}] is not a table in the example config"),
        }
        self
    }

    /// The API tokens the node accepts, replacing the example's: one
    /// `[grpc.tokens.<token>]` row per grant.
    pub fn set_tokens<'a>(&mut self, grants: impl IntoIterator<Item = Grant<'a>>) -> &mut Self {
        let mut tokens = Table::new();
        for g in grants {
            let mut row = Table::new();
            row.insert("role".into(), g.role.into());
            if let Some(agent) = g.agent {
                row.insert("agent".into(), agent.into());
            }
            if let Some(name) = g.name {
                row.insert("name".into(), name.into());
            }
            tokens.insert(g.token.into(), Toml::Table(row));
        }
        self.set("grpc", "tokens", Toml::Table(tokens))
    }

    /// Sets a top-level `key` (an array of tables such as `supervisors`, say) outright.
    pub fn insert(&mut self, key: &str, value: impl Into<Toml>) -> &mut Self {
        self.table.insert(key.to_string(), value.into());
        self
    }

    /// Sets `key` on every `[[queues]]` entry.
    pub fn set_queues(&mut self, key: &str, value: impl Into<Toml>) -> &mut Self {
        let value = value.into();
        if let Some(Toml::Array(queues)) = self.table.get_mut("queues") {
            for q in queues.iter_mut() {
                if let Toml::Table(q) = q {
                    q.insert(key.to_string(), value.clone());
                }
            }
        }
        self
    }

    /// Replaces the trunks with one, `local`, allowing `cidrs`.
    pub fn trunk_allow(&mut self, cidrs: &[&str]) -> &mut Self {
        let allow = Toml::Array(cidrs.iter().map(|c| Toml::from(*c)).collect());
        self.table.insert(
            "trunks".into(),
            toml_array([table(&[("name", "local".into()), ("allow", allow)])]),
        );
        self
    }
}

/// A running node. Killed on drop.
pub struct Node {
    child: Option<Child>,
    pub sip: SocketAddr,
    pub http: SocketAddr,
    ports: PortBlock,
    dir: Option<tempfile::TempDir>,
    log: PathBuf,
}

impl Node {
    /// Starts a node from `spec` with this test's own ports and data dir, and waits for
    /// /health.
    pub fn start(mut spec: NodeSpec) -> Node {
        replace_listen_addrs(&mut spec.table);
        Node::start_as_given(spec)
    }

    /// Like [`Node::start`], but keeps the listen addresses the spec already holds (a
    /// cluster's members must know each other's addresses before they start).
    pub fn start_as_given(mut spec: NodeSpec) -> Node {
        let ports = PortBlock::reserve();
        let dir = test_dir();
        let t = &mut spec.table;
        let (rtp_min, rtp_max) = ports.rtp_range();
        let data = dir.path().join("data");
        set_in(t, "node", "data_dir", data.display().to_string().into());
        set_in(t, "rtp", "ip", "127.0.0.1".into());
        set_in(t, "rtp", "port_min", i64::from(rtp_min).into());
        set_in(t, "rtp", "port_max", i64::from(rtp_max).into());
        let config = dir.path().join("node.toml");
        let text = toml::to_string(&spec.table).unwrap_or_else(|e| panic!("config TOML: {e}"));
        fs::write(&config, text).unwrap_or_else(|e| panic!("writing {}: {e}", config.display()));
        Node::spawn(&config, &spec.table, ports, dir)
    }

    /// Starts a node from examples/`file` exactly as written (fixed ports: run such tests
    /// in the nextest group `fixed-ports`).
    pub fn start_exact(file: &str) -> Node {
        let config = workspace_dir().join("examples").join(file);
        let text = fs::read_to_string(&config)
            .unwrap_or_else(|e| panic!("reading {}: {e}", config.display()));
        let table: Table = toml::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not valid TOML: {e}", config.display()));
        Node::spawn(&config, &table, PortBlock::reserve(), test_dir())
    }

    fn spawn(config: &Path, table: &Table, ports: PortBlock, dir: tempfile::TempDir) -> Node {
        super::write_tone(dir.path());
        let sip = listen_addr(table, "sip");
        let http = listen_addr(table, "http");
        let log = dir.path().join("node.log");
        let out = File::create(&log).unwrap_or_else(|e| panic!("creating node.log: {e}"));
        let err = out
            .try_clone()
            .unwrap_or_else(|e| panic!("cloning node.log handle: {e}"));
        let bin = carillon_bin();
        // The node reads CARILLON_LOG (tracing filter); the caller's setting passes through.
        let child = Command::new(&bin)
            .arg("run")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", bin.display()));
        let mut node = Node {
            child: Some(child),
            sip,
            http,
            ports,
            dir: Some(dir),
            log,
        };
        node.wait_healthy();
        node
    }

    fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_millis(STARTUP_TIMEOUT_MS);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "node exited during start-up ({status}); log:\n{}",
                        self.log_tail()
                    );
                }
            }
            if let Ok((200, _)) = http::get(self.http, "/health", Duration::from_millis(500)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node not healthy on http://{}/health after {STARTUP_TIMEOUT_MS} ms; log:\n{}",
                self.http,
                self.log_tail()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The test's directory: config, node log, SIPp logs, tone.pcmu.
    pub fn dir(&self) -> &Path {
        // Some until drop.
        self.dir
            .as_ref()
            .map(|d| d.path())
            .unwrap_or(Path::new("."))
    }

    /// A media port (-mp) for one SIPp instance, unique within this test.
    pub fn sipp_media_port(&self) -> u16 {
        self.ports.sipp_media_port()
    }

    /// SIGKILLs the node (no clean shutdown) and waits for it to die.
    pub fn kill(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// GET `path` and parse JSON; panics with the node's log on failure.
    pub fn get_json(&self, path: &str) -> Value {
        match http::get(self.http, path, Duration::from_millis(HTTP_TIMEOUT_MS)) {
            Ok((200, body)) => serde_json::from_str(&body)
                .unwrap_or_else(|e| panic!("GET {path}: body is not JSON ({e}): {body:.300}")),
            Ok((status, body)) => panic!("GET {path}: HTTP {status}: {body:.300}"),
            Err(e) => panic!("GET {path}: {e}; node log:\n{}", self.log_tail()),
        }
    }

    /// POST `path` (empty body); panics unless the node answers 200.
    pub fn post(&self, path: &str) -> String {
        match http::post(self.http, path, Duration::from_millis(HTTP_TIMEOUT_MS)) {
            Ok((200, body)) => body,
            Ok((status, body)) => panic!("POST {path}: HTTP {status}: {body:.300}"),
            Err(e) => panic!("POST {path}: {e}; node log:\n{}", self.log_tail()),
        }
    }

    pub fn health(&self) -> Result<(u16, String), String> {
        http::get(self.http, "/health", Duration::from_millis(HTTP_TIMEOUT_MS))
    }

    pub fn status(&self) -> Value {
        self.get_json("/api/status")
    }

    /// Every CDR, oldest first.
    pub fn cdrs(&self) -> Vec<Value> {
        match self.get_json("/api/cdrs") {
            Value::Array(cdrs) => cdrs,
            other => panic!("/api/cdrs is not a JSON array: {other:.300}"),
        }
    }

    /// Agents in state `state` (a name from routing's AgentState::NAMES, e.g. "ready").
    pub fn agents_in(&self, state: &str) -> u64 {
        let status = self.status();
        status["acd"]["agents"][state]
            .as_u64()
            .unwrap_or_else(|| panic!("/api/status has no acd.agents.{state}: {status:.500}"))
    }

    pub fn active_calls(&self) -> u64 {
        let status = self.status();
        status["calls"]["active"]
            .as_u64()
            .unwrap_or_else(|| panic!("/api/status has no calls.active: {status:.500}"))
    }

    /// Polls `check` every 50 ms until it holds; panics with `what` and the node log after
    /// `timeout`.
    pub fn wait_until(&self, what: &str, timeout: Duration, mut check: impl FnMut(&Node) -> bool) {
        let deadline = Instant::now() + timeout;
        while !check(self) {
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}; node log:\n{}",
                self.log_tail()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until there are at least `n` CDRs and returns them all.
    pub fn wait_cdrs(&self, n: usize, timeout: Duration) -> Vec<Value> {
        self.wait_until(&format!("{n} CDRs"), timeout, |node| node.cdrs().len() >= n);
        self.cdrs()
    }

    /// The gRPC address from the config the harness wrote.
    pub fn grpc_addr(&self) -> SocketAddr {
        let text = fs::read_to_string(self.dir().join("node.toml"))
            .unwrap_or_else(|e| panic!("reading the node's config: {e}"));
        let t: Table = toml::from_str(&text).unwrap_or_else(|e| panic!("node.toml: {e}"));
        t.get("grpc")
            .and_then(|g| g.get("listen"))
            .and_then(Toml::as_str)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("node.toml has no [grpc] listen"))
    }

    /// The node's whole log without its ANSI colours.
    pub fn log_plain(&self) -> String {
        let raw = fs::read_to_string(&self.log).unwrap_or_default();
        let mut out = String::with_capacity(raw.len());
        let mut chars = raw.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                // CSI: ESC [ parameters, ended by a letter.
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    }

    /// The last lines of the node's log, for assertion messages.
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(dir) = self.dir.take() {
            if thread::panicking() || std::env::var_os("CARILLON_KEEP_TEST_DIRS").is_some() {
                let kept = dir.keep();
                eprintln!("test files kept in {}", kept.display());
            }
        }
    }
}

fn test_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("carillon-it-")
        .tempdir()
        .unwrap_or_else(|e| panic!("creating a temp dir: {e}"))
}

/// Gives every `listen` key (in [sip], [http], [grpc] and any later section) a fresh port.
fn replace_listen_addrs(t: &mut Table) {
    for (_, v) in t.iter_mut() {
        if let Toml::Table(section) = v {
            if section.contains_key("listen") {
                section.insert("listen".into(), format!("127.0.0.1:{}", free_port()).into());
            }
        }
    }
}

fn listen_addr(t: &Table, section: &str) -> SocketAddr {
    t.get(section)
        .and_then(|s| s.get("listen"))
        .and_then(Toml::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("config has no valid [{section}] listen address"))
}

fn set_in(t: &mut Table, section: &str, key: &str, value: Toml) {
    if let Toml::Table(s) = t
        .entry(section.to_string())
        .or_insert_with(|| Toml::Table(Table::new()))
    {
        s.insert(key.to_string(), value);
    }
}

/// Rewrites string values that name an existing file or directory relative to `base`, and
/// the known path keys, to absolute paths.
fn absolutize_paths(t: &mut Table, base: &Path) {
    for (key, v) in t.iter_mut() {
        match v {
            Toml::Table(inner) => absolutize_paths(inner, base),
            Toml::Array(items) => {
                for item in items.iter_mut() {
                    if let Toml::Table(inner) = item {
                        absolutize_paths(inner, base);
                    }
                }
            }
            Toml::String(s) => {
                let p = Path::new(s.as_str());
                let known = key.ends_with("_dir") || key.ends_with("_path") || key == "hold_music";
                if p.is_relative() && s.contains('/') && (known || base.join(p).exists()) {
                    *s = base.join(p).display().to_string();
                }
            }
            _ => {}
        }
    }
}

fn table(entries: &[(&str, Toml)]) -> Table {
    entries
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn toml_array<const N: usize>(tables: [Table; N]) -> Toml {
    Toml::Array(tables.into_iter().map(Toml::Table).collect())
}

/// One API token for [`NodeSpec::set_tokens`]: its role, the agent it acts as, and the
/// principal name the audit log shows (the node's default when unset).
#[derive(Clone, Copy, Debug)]
pub struct Grant<'a> {
    pub token: &'a str,
    pub role: &'a str,
    pub agent: Option<&'a str>,
    pub name: Option<&'a str>,
}

impl<'a> Grant<'a> {
    /// `token` with `role` (`admin`, `supervisor`, `agent`), no agent and no name.
    pub fn new(token: &'a str, role: &'a str) -> Self {
        Grant {
            token,
            role,
            agent: None,
            name: None,
        }
    }

    /// The agent an `agent` token acts as.
    pub fn agent(mut self, agent: &'a str) -> Self {
        self.agent = Some(agent);
        self
    }

    /// The principal name audit entries show.
    pub fn name(mut self, name: &'a str) -> Self {
        self.name = Some(name);
        self
    }
}
