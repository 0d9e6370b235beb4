//! Why a command was refused. A refused command leaves the state machine unchanged.

/// A command that cannot be applied. Each message says what was wrong and what to do.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RoutingError {
    #[error("unknown queue `{0}`: configure it with ConfigureQueue first")]
    UnknownQueue(String),
    #[error("unknown call `{0}`: it never entered or has already finished")]
    UnknownCall(String),
    #[error("unknown agent `{0}`: the agent must log in (register a phone) first")]
    UnknownAgent(String),
    #[error("call `{0}` is already in the ACD: call ids must be unique")]
    DuplicateCall(String),
    #[error("invalid config for queue `{queue}`: {problem}")]
    InvalidQueueConfig {
        queue: String,
        problem: &'static str,
    },
    #[error("agent `{agent}` cannot {action} while {state}")]
    AgentInvalidState {
        agent: String,
        state: &'static str,
        action: &'static str,
    },
    #[error("call `{call}` cannot {action} while {state}")]
    CallInvalidState {
        call: String,
        state: &'static str,
        action: &'static str,
    },
    #[error("call `{call}` is not being offered to agent `{agent}`: the offer was revoked or went to someone else; cancel that agent leg")]
    NotOfferedTo { call: String, agent: String },
    #[error("node n{0} is marked down: it must renew its lease (NodeLease) before it proposes calls or log-ins")]
    NodeDown(u64),
    #[error("invalid cluster config: {0}")]
    InvalidClusterConfig(&'static str),
    #[error("invalid skills: {0}")]
    InvalidSkills(String),
    #[error("limit reached: {what} is at most {max}; refuse the request or raise the limit")]
    LimitReached { what: &'static str, max: usize },
}
