//! IVR flows: the sans-IO runner that walks a call through a flow's steps before it queues.
//!
//! A [`Flow`] is a validated graph of [`Step`]s (built from `[[flows]]` by [`config`]). A
//! [`FlowRun`] walks one call through it. It reads no clock, socket or file: time comes in
//! as `now_ms` on every call, and each input returns one [`Action`] for the adapter
//! (`call::ivr_io`) to perform.
//!
//! Call order: [`FlowRun::start`] once, then [`FlowRun::on_event`] for every caller digit,
//! the end of a prompt the runner asked for, a look-up's reply, and [`Event::Timeout`] once
//! `now_ms` reaches [`FlowRun::deadline_ms`]. The adapter plays a prompt once and reports
//! [`Event::PromptDone`] at its end; a later [`Action::Play`] replaces the one playing (its
//! end is then not reported). [`Action::Finish`] ends the run.
//!
//! A flow that runs more than [`STEPS_MAX`] steps (a caller looping through a menu) ends as
//! [`Outcome::Failed`], which the adapter logs and hangs up on.

pub mod config;
pub mod live;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use carillon_routing::Schedule;

/// Steps one call may enter before the run gives up.
pub const STEPS_MAX: u32 = 100;
/// Variables a flow may hold, and the longest name and value a look-up may set.
pub const VARS_MAX: usize = 32;
pub const VAR_LEN_MAX: usize = 256;

/// A validated flow: steps by index, the start step, where look-up prompts live.
#[derive(Clone, Debug)]
pub struct Flow {
    pub name: String,
    pub start: usize,
    pub steps: Vec<Step>,
    /// Prompts a look-up reply names (`"prompt": "balance_low"`) are `<dir>/<name>.wav`.
    pub prompt_dir: PathBuf,
}

#[derive(Clone, Debug)]
pub struct Step {
    pub id: String,
    pub kind: StepKind,
}

/// What one step does; `usize` fields are indices of the steps that follow.
#[derive(Clone, Debug)]
pub enum StepKind {
    Play {
        prompt: PathBuf,
        next: usize,
    },
    Menu {
        prompt: PathBuf,
        keys: BTreeMap<char, usize>,
        timeout_ms: u64,
        /// Replays after an invalid key or a timeout, before the exit step.
        retries: u32,
        on_invalid: Option<usize>,
        on_timeout: Option<usize>,
    },
    Collect {
        prompt: PathBuf,
        min_digits: usize,
        max_digits: usize,
        terminator: Option<char>,
        /// Between digits, and from the prompt's end to the first digit.
        timeout_ms: u64,
        retries: u32,
        var: String,
        next: usize,
        on_timeout: Option<usize>,
    },
    Lookup {
        url: String,
        timeout_ms: u64,
        on_ok: usize,
        on_error: usize,
    },
    Branch {
        var: String,
        equals: BTreeMap<String, usize>,
        default: usize,
    },
    Schedule {
        queue: String,
        /// None: the queue has no schedule, so it is always open.
        schedule: Option<Schedule>,
        open: usize,
        closed: usize,
    },
    Queue {
        queue: String,
        priority: Option<u32>,
        skills: Option<Vec<String>>,
    },
    Voicemail {
        mailbox: String,
    },
    Transfer {
        number: String,
        gateway: SocketAddr,
    },
    Hangup {
        prompt: Option<PathBuf>,
    },
}

/// Who the call is, as a look-up receives it.
#[derive(Clone, Debug, Default)]
pub struct CallInfo {
    pub call: String,
    pub caller: String,
    pub dialled: String,
}

/// Inputs to a run.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    DigitReceived(char),
    PromptDone,
    Timeout,
    /// The look-up's JSON reply, or why there is none (timeout, refused, not JSON, not 2xx).
    LookupDone(Result<serde_json::Value, String>),
}

/// What the adapter does next.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Play this prompt once (replacing any playing), report its end, keep passing digits.
    Play(PathBuf),
    /// Stop any prompt (the caller started typing); keep waiting.
    Silence,
    /// Nothing to change; keep waiting.
    Wait,
    /// POST `body` as JSON to `url`; report the reply as [`Event::LookupDone`], or an error
    /// after `timeout_ms`.
    Lookup {
        url: String,
        timeout_ms: u64,
        body: serde_json::Value,
    },
    Finish(Outcome),
}

/// How a flow ends.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Queue the call; absent priority or skills mean the number's or queue's own.
    Queue {
        queue: String,
        priority: Option<u32>,
        skills: Option<Vec<String>>,
    },
    Voicemail {
        mailbox: String,
    },
    /// Dial `number` through `gateway` and bridge the caller to it.
    Transfer {
        number: String,
        gateway: SocketAddr,
    },
    HangUp {
        prompt: Option<PathBuf>,
    },
    /// A bug or a runaway flow: the adapter logs `why` and hangs up.
    Failed(String),
}

/// Where the current step stands.
#[derive(Clone, Debug, PartialEq)]
enum Wait {
    /// A play step's prompt (or a look-up reply's prompt before `then`).
    Prompt {
        then: Option<usize>,
    },
    /// A menu or collect: prompt playing (no deadline) or waiting for digits.
    Digits,
    Lookup,
    Done,
}

/// One call's walk through a flow.
pub struct FlowRun {
    flow: Arc<Flow>,
    info: CallInfo,
    vars: BTreeMap<String, String>,
    step: usize,
    wait: Wait,
    /// Failed attempts at the current menu or collect.
    tries: u32,
    digits: String,
    deadline_ms: Option<u64>,
    steps_run: u32,
}

impl FlowRun {
    /// Starts `flow` for a call; `vars` seed the variables.
    pub fn start(
        flow: Arc<Flow>,
        info: CallInfo,
        vars: BTreeMap<String, String>,
        now_ms: u64,
    ) -> (FlowRun, Action) {
        let start = flow.start;
        let mut run = FlowRun {
            flow,
            info,
            vars,
            step: start,
            wait: Wait::Done,
            tries: 0,
            digits: String::new(),
            deadline_ms: None,
            steps_run: 0,
        };
        let action = run.enter(start, now_ms);
        (run, action)
    }

    /// When [`Event::Timeout`] is due (Unix ms), if a timer runs.
    pub fn deadline_ms(&self) -> Option<u64> {
        self.deadline_ms
    }

    /// The variables set so far (collected digits, look-up replies).
    pub fn vars(&self) -> &BTreeMap<String, String> {
        &self.vars
    }

    /// The id of the step the call is at.
    pub fn step_id(&self) -> &str {
        &self.flow.steps[self.step].id
    }

    pub fn on_event(&mut self, event: Event, now_ms: u64) -> Action {
        let flow = self.flow.clone();
        let step = &flow.steps[self.step].kind;
        match (&self.wait, event) {
            (Wait::Done, _) => Action::Wait,
            (Wait::Prompt { then }, Event::PromptDone) => {
                let next = match (then, step) {
                    (Some(n), _) => *n,
                    (None, StepKind::Play { next, .. }) => *next,
                    (None, StepKind::Hangup { .. }) => return Action::Wait,
                    (None, _) => return self.fail("a prompt ended outside a play step"),
                };
                self.enter(next, now_ms)
            }
            (Wait::Prompt { .. }, _) => Action::Wait,
            (Wait::Digits, Event::PromptDone) => {
                let timeout_ms = match step {
                    StepKind::Menu { timeout_ms, .. } | StepKind::Collect { timeout_ms, .. } => {
                        *timeout_ms
                    }
                    _ => return self.fail("waiting for digits outside a menu or collect"),
                };
                if self.deadline_ms.is_none() {
                    self.deadline_ms = Some(now_ms.saturating_add(timeout_ms));
                }
                Action::Wait
            }
            (Wait::Digits, Event::DigitReceived(d)) => self.on_digit(step, d, now_ms),
            (Wait::Digits, Event::Timeout) => self.on_digit_timeout(step, now_ms),
            (Wait::Digits, Event::LookupDone(_)) => Action::Wait,
            (Wait::Lookup, Event::LookupDone(reply)) => self.on_lookup(step, reply, now_ms),
            (Wait::Lookup, _) => Action::Wait,
        }
    }

    fn on_digit(&mut self, step: &StepKind, d: char, now_ms: u64) -> Action {
        match step {
            StepKind::Menu {
                keys, on_invalid, ..
            } => match keys.get(&d) {
                Some(next) => self.enter(*next, now_ms),
                None => self.retry(*on_invalid, now_ms),
            },
            StepKind::Collect {
                min_digits,
                max_digits,
                terminator,
                timeout_ms,
                on_timeout,
                ..
            } => {
                if Some(d) == *terminator {
                    if self.digits.len() >= *min_digits {
                        return self.collected(step, now_ms);
                    }
                    self.digits.clear();
                    return self.retry(*on_timeout, now_ms);
                }
                if !d.is_ascii_digit() {
                    return Action::Wait;
                }
                self.digits.push(d);
                if self.digits.len() >= *max_digits {
                    return self.collected(step, now_ms);
                }
                self.deadline_ms = Some(now_ms.saturating_add(*timeout_ms));
                Action::Silence
            }
            _ => self.fail("a digit reached a step that takes none"),
        }
    }

    fn on_digit_timeout(&mut self, step: &StepKind, now_ms: u64) -> Action {
        self.deadline_ms = None;
        match step {
            StepKind::Menu { on_timeout, .. } => self.retry(*on_timeout, now_ms),
            StepKind::Collect {
                min_digits,
                on_timeout,
                ..
            } => {
                if !self.digits.is_empty() && self.digits.len() >= *min_digits {
                    return self.collected(step, now_ms);
                }
                self.digits.clear();
                self.retry(*on_timeout, now_ms)
            }
            _ => self.fail("a digit timer fired outside a menu or collect"),
        }
    }

    /// Replays the current menu or collect, or leaves for `exit` once its retries are spent
    /// (hanging up without an exit step).
    fn retry(&mut self, exit: Option<usize>, now_ms: u64) -> Action {
        let (prompt, retries) = match &self.flow.steps[self.step].kind {
            StepKind::Menu {
                prompt, retries, ..
            }
            | StepKind::Collect {
                prompt, retries, ..
            } => (prompt.clone(), *retries),
            _ => return self.fail("a retry outside a menu or collect"),
        };
        self.tries += 1;
        self.deadline_ms = None;
        if self.tries > retries {
            return match exit {
                Some(next) => self.enter(next, now_ms),
                None => self.finish(Outcome::HangUp { prompt: None }),
            };
        }
        self.steps_run += 1;
        if self.steps_run > STEPS_MAX {
            return self.fail_runaway();
        }
        Action::Play(prompt)
    }

    fn collected(&mut self, step: &StepKind, now_ms: u64) -> Action {
        let StepKind::Collect { var, next, .. } = step else {
            return self.fail("digits collected outside a collect step");
        };
        let digits = std::mem::take(&mut self.digits);
        self.set_var(var.clone(), digits);
        self.enter(*next, now_ms)
    }

    fn on_lookup(
        &mut self,
        step: &StepKind,
        reply: Result<serde_json::Value, String>,
        now_ms: u64,
    ) -> Action {
        let StepKind::Lookup {
            on_ok, on_error, ..
        } = step
        else {
            return self.fail("a look-up reply outside a look-up step");
        };
        let (on_ok, on_error) = (*on_ok, *on_error);
        let reply = match reply {
            Ok(serde_json::Value::Object(map)) => map,
            Ok(_) => {
                self.set_var("lookup_error".into(), "reply is not a JSON object".into());
                return self.enter(on_error, now_ms);
            }
            Err(why) => {
                self.set_var("lookup_error".into(), why);
                return self.enter(on_error, now_ms);
            }
        };
        if let Some(serde_json::Value::Object(vars)) = reply.get("vars") {
            for (name, value) in vars {
                let text = match value {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Number(n) => n.to_string(),
                    serde_json::Value::Bool(b) => b.to_string(),
                    _ => continue,
                };
                self.set_var(name.clone(), text);
            }
        }
        match reply.get("prompt").and_then(|p| p.as_str()) {
            Some(name) if config::prompt_name_ok(name) => {
                self.wait = Wait::Prompt { then: Some(on_ok) };
                Action::Play(self.flow.prompt_dir.join(format!("{name}.wav")))
            }
            Some(_) => {
                self.set_var(
                    "lookup_error".into(),
                    "reply names a prompt that is not a plain name".into(),
                );
                self.enter(on_error, now_ms)
            }
            None => self.enter(on_ok, now_ms),
        }
    }

    /// Sets a variable within the bounds; an extra variable beyond [`VARS_MAX`] is dropped.
    fn set_var(&mut self, name: String, mut value: String) {
        if name.is_empty() || name.len() > VAR_LEN_MAX {
            return;
        }
        if value.len() > VAR_LEN_MAX {
            let mut cut = VAR_LEN_MAX;
            while !value.is_char_boundary(cut) {
                cut -= 1;
            }
            value.truncate(cut);
        }
        if self.vars.len() >= VARS_MAX && !self.vars.contains_key(&name) {
            return;
        }
        self.vars.insert(name, value);
    }

    /// Moves to step `index` and returns what it needs done. Steps that need no caller
    /// (branch, schedule) chain at once, bounded by [`STEPS_MAX`].
    fn enter(&mut self, mut index: usize, now_ms: u64) -> Action {
        let flow = self.flow.clone();
        loop {
            self.steps_run += 1;
            if self.steps_run > STEPS_MAX {
                return self.fail_runaway();
            }
            self.step = index;
            self.tries = 0;
            self.digits.clear();
            self.deadline_ms = None;
            match &flow.steps[index].kind {
                StepKind::Play { prompt, .. } => {
                    self.wait = Wait::Prompt { then: None };
                    return Action::Play(prompt.clone());
                }
                StepKind::Menu { prompt, .. } | StepKind::Collect { prompt, .. } => {
                    self.wait = Wait::Digits;
                    return Action::Play(prompt.clone());
                }
                StepKind::Lookup {
                    url, timeout_ms, ..
                } => {
                    self.wait = Wait::Lookup;
                    let body = serde_json::json!({
                        "call": self.info.call,
                        "caller": self.info.caller,
                        "dialled": self.info.dialled,
                        "vars": self.vars,
                    });
                    return Action::Lookup {
                        url: url.clone(),
                        timeout_ms: *timeout_ms,
                        body,
                    };
                }
                StepKind::Branch {
                    var,
                    equals,
                    default,
                } => {
                    let value = self.vars.get(var).map(String::as_str).unwrap_or("");
                    index = equals.get(value).copied().unwrap_or(*default);
                }
                StepKind::Schedule {
                    schedule,
                    open,
                    closed,
                    ..
                } => {
                    let is_open = schedule.as_ref().is_none_or(|s| s.is_open(now_ms));
                    index = if is_open { *open } else { *closed };
                }
                StepKind::Queue {
                    queue,
                    priority,
                    skills,
                } => {
                    return self.finish(Outcome::Queue {
                        queue: queue.clone(),
                        priority: *priority,
                        skills: skills.clone(),
                    })
                }
                StepKind::Voicemail { mailbox } => {
                    return self.finish(Outcome::Voicemail {
                        mailbox: mailbox.clone(),
                    })
                }
                StepKind::Transfer { number, gateway } => {
                    return self.finish(Outcome::Transfer {
                        number: number.clone(),
                        gateway: *gateway,
                    })
                }
                StepKind::Hangup { prompt } => {
                    return self.finish(Outcome::HangUp {
                        prompt: prompt.clone(),
                    })
                }
            }
        }
    }

    fn finish(&mut self, outcome: Outcome) -> Action {
        self.wait = Wait::Done;
        self.deadline_ms = None;
        Action::Finish(outcome)
    }

    fn fail_runaway(&mut self) -> Action {
        let why = format!(
            "flow `{}` ran more than {STEPS_MAX} steps (last at `{}`)",
            self.flow.name, self.flow.steps[self.step].id
        );
        self.finish(Outcome::Failed(why))
    }

    fn fail(&mut self, why: &str) -> Action {
        let why = format!(
            "flow `{}` at `{}`: {why}",
            self.flow.name, self.flow.steps[self.step].id
        );
        self.finish(Outcome::Failed(why))
    }
}

#[cfg(test)]
mod tests;
