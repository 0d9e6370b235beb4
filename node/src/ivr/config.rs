//! `[[flows]]` in the node's TOML: parsing and validation into a runnable [`Flow`].
//!
//! A flow names its `start` step; each `[[flows.steps]]` has an `id`, a `kind` and the keys
//! that kind takes (a key another kind takes is an error, so a typo never passes silently).
//! Every step a step leads to must exist, and a cycle in the graph must pass through a menu
//! or a collect (where the caller acts and retries bound it). Errors name the key:
//! `flows[0].steps[3].keys.9`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::{Flow, Step, StepKind};
use crate::config::Config;

/// Bounds on a flow's size and its timers.
pub const FLOWS_MAX: usize = 64;
pub const STEPS_PER_FLOW_MAX: usize = 256;
pub const TIMEOUT_S_MAX: f64 = 300.0;
pub const LOOKUP_TIMEOUT_MS_MAX: u64 = 30_000;
pub const RETRIES_MAX: u32 = 10;
pub const DIGITS_MAX: usize = 32;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowConfig {
    pub name: String,
    pub start: String,
    /// Where prompts named by look-up replies live (`<prompt_dir>/<name>.wav`); default
    /// `prompts` beside the config file.
    #[serde(default)]
    pub prompt_dir: Option<PathBuf>,
    #[serde(default)]
    pub steps: Vec<StepConfig>,
}

/// One step as written; which keys apply depends on `kind`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepConfig {
    pub id: String,
    pub kind: String,
    pub prompt: Option<PathBuf>,
    pub next: Option<String>,
    /// Menu: key (`0`-`9`, `*`, `#`, `A`-`D`) to step id.
    pub keys: Option<BTreeMap<String, String>>,
    pub timeout_s: Option<f64>,
    pub retries: Option<u32>,
    pub on_invalid: Option<String>,
    pub on_timeout: Option<String>,
    pub min_digits: Option<usize>,
    pub max_digits: Option<usize>,
    /// Collect: the key that ends entry (default `#`; `""` for none).
    pub terminator: Option<String>,
    pub var: Option<String>,
    pub url: Option<String>,
    pub timeout_ms: Option<u64>,
    pub on_ok: Option<String>,
    pub on_error: Option<String>,
    pub equals: Option<BTreeMap<String, String>>,
    pub default: Option<String>,
    pub queue: Option<String>,
    pub open: Option<String>,
    pub closed: Option<String>,
    pub priority: Option<u32>,
    pub skills: Option<Vec<String>>,
    pub mailbox: Option<String>,
    pub number: Option<String>,
    pub gateway: Option<SocketAddr>,
}

/// The keys each kind takes besides `id` and `kind`.
const KINDS: &[(&str, &[&str])] = &[
    ("play", &["prompt", "next"]),
    (
        "menu",
        &[
            "prompt",
            "keys",
            "timeout_s",
            "retries",
            "on_invalid",
            "on_timeout",
        ],
    ),
    (
        "collect",
        &[
            "prompt",
            "min_digits",
            "max_digits",
            "terminator",
            "timeout_s",
            "retries",
            "var",
            "next",
            "on_timeout",
        ],
    ),
    ("lookup", &["url", "timeout_ms", "on_ok", "on_error"]),
    ("branch", &["var", "equals", "default"]),
    ("schedule", &["queue", "open", "closed"]),
    ("queue", &["queue", "priority", "skills"]),
    ("voicemail", &["mailbox"]),
    ("transfer", &["number", "gateway"]),
    ("hangup", &["prompt"]),
];

impl StepConfig {
    /// The optional keys that are set, by name.
    fn keys_set(&self) -> Vec<&'static str> {
        let set = [
            ("prompt", self.prompt.is_some()),
            ("next", self.next.is_some()),
            ("keys", self.keys.is_some()),
            ("timeout_s", self.timeout_s.is_some()),
            ("retries", self.retries.is_some()),
            ("on_invalid", self.on_invalid.is_some()),
            ("on_timeout", self.on_timeout.is_some()),
            ("min_digits", self.min_digits.is_some()),
            ("max_digits", self.max_digits.is_some()),
            ("terminator", self.terminator.is_some()),
            ("var", self.var.is_some()),
            ("url", self.url.is_some()),
            ("timeout_ms", self.timeout_ms.is_some()),
            ("on_ok", self.on_ok.is_some()),
            ("on_error", self.on_error.is_some()),
            ("equals", self.equals.is_some()),
            ("default", self.default.is_some()),
            ("queue", self.queue.is_some()),
            ("open", self.open.is_some()),
            ("closed", self.closed.is_some()),
            ("priority", self.priority.is_some()),
            ("skills", self.skills.is_some()),
            ("mailbox", self.mailbox.is_some()),
            ("number", self.number.is_some()),
            ("gateway", self.gateway.is_some()),
        ];
        set.iter().filter(|(_, on)| *on).map(|(k, _)| *k).collect()
    }
}

/// A bad key and what is wrong with it.
pub type Problem = (String, String);

/// Checks every flow of `config`; the first problem names its key.
pub fn validate(config: &Config) -> Result<(), Problem> {
    if config.flows.len() > FLOWS_MAX {
        return Err(("flows".into(), format!("at most {FLOWS_MAX} flows")));
    }
    let mut names = BTreeSet::new();
    for (i, f) in config.flows.iter().enumerate() {
        if f.name.is_empty() {
            return Err((format!("flows[{i}].name"), "must not be empty".into()));
        }
        if !names.insert(f.name.as_str()) {
            return Err((
                format!("flows[{i}].name"),
                format!("flow `{}` is defined twice", f.name),
            ));
        }
        compile(config, i)?;
    }
    Ok(())
}

/// The flow called `name`, ready to run (None if there is none or it does not validate,
/// which a loaded config rules out).
pub fn flow(config: &Config, name: &str) -> Option<Flow> {
    let i = config.flows.iter().position(|f| f.name == name)?;
    compile(config, i).ok()
}

/// Whether a look-up reply's prompt name is safe to turn into a file name.
pub fn prompt_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Builds flow `i` of `config`, resolving step ids to indices and paths against the config
/// file's directory.
pub fn compile(config: &Config, i: usize) -> Result<Flow, Problem> {
    let f = &config.flows[i];
    let key = |k: &str| format!("flows[{i}].{k}");
    if f.steps.is_empty() {
        return Err((key("steps"), "a flow needs at least one step".into()));
    }
    if f.steps.len() > STEPS_PER_FLOW_MAX {
        return Err((
            key("steps"),
            format!("at most {STEPS_PER_FLOW_MAX} steps per flow"),
        ));
    }
    let mut ids = BTreeMap::new();
    for (j, s) in f.steps.iter().enumerate() {
        if s.id.is_empty() {
            return Err((key(&format!("steps[{j}].id")), "must not be empty".into()));
        }
        if ids.insert(s.id.as_str(), j).is_some() {
            return Err((
                key(&format!("steps[{j}].id")),
                format!("step `{}` is defined twice in this flow", s.id),
            ));
        }
    }
    let start = *ids.get(f.start.as_str()).ok_or_else(|| {
        (
            key("start"),
            format!("no step with id `{}` in this flow", f.start),
        )
    })?;
    let mut steps = Vec::with_capacity(f.steps.len());
    for (j, s) in f.steps.iter().enumerate() {
        let at = |k: &str| key(&format!("steps[{j}].{k}"));
        let kind = step_kind(config, s, &ids, &at)?;
        steps.push(Step {
            id: s.id.clone(),
            kind,
        });
    }
    check_cycles(&steps).map_err(|j| {
        (
            key(&format!("steps[{j}]")),
            format!(
                "step `{}` is on a loop that passes through no menu or collect; \
                 a loop must wait for the caller",
                steps[j].id
            ),
        )
    })?;
    let prompt_dir = config.resolve(
        f.prompt_dir
            .as_deref()
            .unwrap_or(std::path::Path::new("prompts")),
    );
    Ok(Flow {
        name: f.name.clone(),
        start,
        steps,
        prompt_dir,
    })
}

fn step_kind(
    config: &Config,
    s: &StepConfig,
    ids: &BTreeMap<&str, usize>,
    at: &dyn Fn(&str) -> String,
) -> Result<StepKind, Problem> {
    let Some((_, allowed)) = KINDS.iter().find(|(k, _)| *k == s.kind) else {
        let kinds: Vec<&str> = KINDS.iter().map(|(k, _)| *k).collect();
        return Err((
            at("kind"),
            format!("`{}` is not one of {}", s.kind, kinds.join(", ")),
        ));
    };
    for k in s.keys_set() {
        if !allowed.contains(&k) {
            return Err((
                at(k),
                format!(
                    "a `{}` step does not take `{k}` (it takes {})",
                    s.kind,
                    allowed.join(", ")
                ),
            ));
        }
    }
    let step = |k: &str, id: &Option<String>| -> Result<usize, Problem> {
        let id = id
            .as_deref()
            .ok_or_else(|| (at(k), format!("a `{}` step needs `{k}`", s.kind)))?;
        target(ids, id).map_err(|p| (at(k), p))
    };
    let opt_step = |k: &str, id: &Option<String>| -> Result<Option<usize>, Problem> {
        match id {
            Some(_) => step(k, id).map(Some),
            None => Ok(None),
        }
    };
    let prompt = |required: bool| -> Result<Option<PathBuf>, Problem> {
        match &s.prompt {
            Some(p) if p.as_os_str().is_empty() => Err((at("prompt"), "must not be empty".into())),
            Some(p) => Ok(Some(config.resolve(p))),
            None if required => Err((at("prompt"), format!("a `{}` step needs `prompt`", s.kind))),
            None => Ok(None),
        }
    };
    let timeout_ms = |default_s: f64| -> Result<u64, Problem> {
        let t = s.timeout_s.unwrap_or(default_s);
        if !(0.5..=TIMEOUT_S_MAX).contains(&t) {
            return Err((
                at("timeout_s"),
                format!("must be between 0.5 and {TIMEOUT_S_MAX} seconds"),
            ));
        }
        Ok((t * 1000.0).round() as u64)
    };
    let retries = || -> Result<u32, Problem> {
        let r = s.retries.unwrap_or(2);
        if r > RETRIES_MAX {
            return Err((at("retries"), format!("at most {RETRIES_MAX}")));
        }
        Ok(r)
    };
    let queue = |q: &Option<String>| -> Result<String, Problem> {
        let q = q
            .as_deref()
            .ok_or_else(|| (at("queue"), format!("a `{}` step needs `queue`", s.kind)))?;
        if !config.queues.iter().any(|x| x.name == q) {
            return Err((
                at("queue"),
                format!("no queue named `{q}` (define it under [[queues]])"),
            ));
        }
        Ok(q.to_string())
    };
    let kind = match s.kind.as_str() {
        "play" => StepKind::Play {
            prompt: prompt(true)?.unwrap_or_default(),
            next: step("next", &s.next)?,
        },
        "menu" => {
            let written = s
                .keys
                .as_ref()
                .ok_or_else(|| (at("keys"), "a `menu` step needs `keys`".into()))?;
            if written.is_empty() {
                return Err((at("keys"), "must map at least one key".into()));
            }
            let mut keys = BTreeMap::new();
            for (k, id) in written {
                let key_at = at(&format!("keys.{k}"));
                let c = dtmf_key(k).ok_or_else(|| {
                    (key_at.clone(), "a key is one of 0-9, *, #, A-D".to_string())
                })?;
                let next = target(ids, id).map_err(|p| (key_at, p))?;
                keys.insert(c, next);
            }
            StepKind::Menu {
                prompt: prompt(true)?.unwrap_or_default(),
                keys,
                timeout_ms: timeout_ms(5.0)?,
                retries: retries()?,
                on_invalid: opt_step("on_invalid", &s.on_invalid)?,
                on_timeout: opt_step("on_timeout", &s.on_timeout)?,
            }
        }
        "collect" => {
            let max_digits = s.max_digits.unwrap_or(16);
            let min_digits = s.min_digits.unwrap_or(1);
            if !(1..=DIGITS_MAX).contains(&max_digits) {
                return Err((at("max_digits"), format!("must be 1 to {DIGITS_MAX}")));
            }
            if min_digits == 0 || min_digits > max_digits {
                return Err((
                    at("min_digits"),
                    "must be at least 1 and at most `max_digits`".into(),
                ));
            }
            let terminator = match s.terminator.as_deref() {
                None => Some('#'),
                Some("") => None,
                Some(t) => Some(dtmf_key(t).filter(|c| !c.is_ascii_digit()).ok_or_else(|| {
                    (
                        at("terminator"),
                        "must be one of *, #, A-D, or \"\" for none".to_string(),
                    )
                })?),
            };
            let var = s
                .var
                .clone()
                .ok_or_else(|| (at("var"), "a `collect` step needs `var`".to_string()))?;
            check_var(&var).map_err(|p| (at("var"), p))?;
            StepKind::Collect {
                prompt: prompt(true)?.unwrap_or_default(),
                min_digits,
                max_digits,
                terminator,
                timeout_ms: timeout_ms(5.0)?,
                retries: retries()?,
                var,
                next: step("next", &s.next)?,
                on_timeout: opt_step("on_timeout", &s.on_timeout)?,
            }
        }
        "lookup" => {
            let url = s
                .url
                .clone()
                .ok_or_else(|| (at("url"), "a `lookup` step needs `url`".to_string()))?;
            check_url(&url).map_err(|p| (at("url"), p))?;
            let timeout_ms = s.timeout_ms.unwrap_or(2_000);
            if !(1..=LOOKUP_TIMEOUT_MS_MAX).contains(&timeout_ms) {
                return Err((
                    at("timeout_ms"),
                    format!("must be 1 to {LOOKUP_TIMEOUT_MS_MAX}"),
                ));
            }
            StepKind::Lookup {
                url,
                timeout_ms,
                on_ok: step("on_ok", &s.on_ok)?,
                on_error: step("on_error", &s.on_error)?,
            }
        }
        "branch" => {
            let var = s
                .var
                .clone()
                .ok_or_else(|| (at("var"), "a `branch` step needs `var`".to_string()))?;
            check_var(&var).map_err(|p| (at("var"), p))?;
            let mut equals = BTreeMap::new();
            for (value, id) in s.equals.iter().flatten() {
                let next = target(ids, id).map_err(|p| (at(&format!("equals.{value}")), p))?;
                equals.insert(value.clone(), next);
            }
            StepKind::Branch {
                var,
                equals,
                default: step("default", &s.default)?,
            }
        }
        "schedule" => {
            let name = queue(&s.queue)?;
            let schedule = config
                .queues
                .iter()
                .find(|q| q.name == name)
                .and_then(|q| q.schedule.as_ref())
                .and_then(|sc| crate::config::parse_schedule(sc).ok());
            StepKind::Schedule {
                queue: name,
                schedule,
                open: step("open", &s.open)?,
                closed: step("closed", &s.closed)?,
            }
        }
        "queue" => {
            for skill in s.skills.iter().flatten() {
                crate::config::parse_skill(skill).map_err(|p| (at("skills"), p))?;
            }
            StepKind::Queue {
                queue: queue(&s.queue)?,
                priority: s.priority,
                skills: s.skills.clone(),
            }
        }
        "voicemail" => {
            let mailbox = s.mailbox.clone().ok_or_else(|| {
                (
                    at("mailbox"),
                    "a `voicemail` step needs `mailbox`".to_string(),
                )
            })?;
            crate::config::check_mailbox(&mailbox).map_err(|p| (at("mailbox"), p))?;
            StepKind::Voicemail { mailbox }
        }
        "transfer" => {
            let number = s
                .number
                .clone()
                .ok_or_else(|| (at("number"), "a `transfer` step needs `number`".to_string()))?;
            let number_ok = !number.is_empty()
                && number.len() <= 32
                && number
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b == b'+' || b == b'*' || b == b'#');
            if !number_ok {
                return Err((
                    at("number"),
                    "must be 1-32 digits (with `+`, `*`, `#`)".into(),
                ));
            }
            let gateway = s
                .gateway
                .or_else(|| config.callback.as_ref().map(|c| c.gateway))
                .ok_or_else(|| {
                    (
                        at("gateway"),
                        "a `transfer` step needs `gateway` (host:port) when [callback] sets none"
                            .to_string(),
                    )
                })?;
            StepKind::Transfer { number, gateway }
        }
        "hangup" => StepKind::Hangup {
            prompt: prompt(false)?,
        },
        _ => unreachable!("kind checked against KINDS above"),
    };
    Ok(kind)
}

fn target(ids: &BTreeMap<&str, usize>, id: &str) -> Result<usize, String> {
    ids.get(id)
        .copied()
        .ok_or_else(|| format!("no step with id `{id}` in this flow"))
}

fn dtmf_key(k: &str) -> Option<char> {
    let mut chars = k.chars();
    let c = chars.next()?;
    if chars.next().is_some() {
        return None;
    }
    let c = c.to_ascii_uppercase();
    (c.is_ascii_digit() || "*#ABCD".contains(c)).then_some(c)
}

fn check_var(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err("a variable name is 1-64 letters, digits or `_`".into())
    }
}

/// Look-ups go to a business system over plain HTTP (no TLS in this version).
fn check_url(url: &str) -> Result<(), String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        "must start with http:// (https is not supported yet; put a local proxy in front)"
            .to_string()
    })?;
    let authority = rest.split('/').next().unwrap_or("");
    if authority.is_empty() {
        return Err("must name a host (http://host:port/path)".into());
    }
    Ok(())
}

/// The index of a step on a cycle that no menu or collect breaks, if any. Menus and
/// collects wait for the caller and bound their own retries, so only edges out of other
/// steps are followed.
fn check_cycles(steps: &[Step]) -> Result<(), usize> {
    let edges = |k: &StepKind| -> Vec<usize> {
        match k {
            StepKind::Play { next, .. } => vec![*next],
            StepKind::Lookup {
                on_ok, on_error, ..
            } => vec![*on_ok, *on_error],
            StepKind::Branch {
                equals, default, ..
            } => equals.values().copied().chain([*default]).collect(),
            StepKind::Schedule { open, closed, .. } => vec![*open, *closed],
            _ => Vec::new(),
        }
    };
    // 0 unvisited, 1 on the current path, 2 done.
    let mut mark = vec![0u8; steps.len()];
    for root in 0..steps.len() {
        if mark[root] != 0 {
            continue;
        }
        let mut stack = vec![(root, edges(&steps[root].kind), 0usize)];
        mark[root] = 1;
        while let Some((node, out, pos)) = stack.last_mut() {
            if *pos < out.len() {
                let next = out[*pos];
                *pos += 1;
                match mark[next] {
                    1 => return Err(next),
                    0 => {
                        mark[next] = 1;
                        let e = edges(&steps[next].kind);
                        stack.push((next, e, 0));
                    }
                    _ => {}
                }
            } else {
                mark[*node] = 2;
                stack.pop();
            }
        }
    }
    Ok(())
}
