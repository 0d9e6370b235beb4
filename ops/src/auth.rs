//! Who is calling the API: bearer tokens bound to roles, and what each role may do.
//!
//! A token maps to a [`Principal`]: a role and, for the agent role, the one agent it acts
//! as. The checks here are pure (no I/O), so the node's service layer asks them before
//! touching routing and records every refusal in the audit log.

use std::collections::BTreeMap;

/// Longest token accepted, in bytes (metadata from the network is hostile).
pub const TOKEN_LEN_MAX_BYTES: usize = 512;

/// What a caller may do. Ordered: each role may do everything the one before it may.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Their own session and calls only.
    Agent,
    /// Any agent's state, event streams, call lists, CDRs.
    Supervisor,
    /// Queues, skills, VIP lists, cluster membership, the audit log.
    Admin,
}

impl Role {
    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "agent" => Some(Role::Agent),
            "supervisor" => Some(Role::Supervisor),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Supervisor => "supervisor",
            Role::Admin => "admin",
        }
    }
}

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// A name for the audit log: the configured name, else the agent id, else a
    /// fingerprint of the token (never the token itself).
    pub name: String,
    pub role: Role,
    /// For the agent role: the agent this token acts as.
    pub agent: Option<String>,
}

/// Why a request was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no token: send metadata `authorization: Bearer <token>` (ctl: --token)")]
    Missing,
    #[error("the token is not known to this node")]
    Unknown,
    #[error("{role} tokens may not {action}; it needs the {needed} role")]
    RoleTooLow {
        role: &'static str,
        action: String,
        needed: &'static str,
    },
    #[error("agent {own} may act only on their own session and calls, not on {target}")]
    NotOwn { own: String, target: String },
}

/// A token as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenGrant {
    pub role: Role,
    pub agent: Option<String>,
    pub name: Option<String>,
}

/// The node's token table.
#[derive(Clone, Debug, Default)]
pub struct Tokens {
    grants: BTreeMap<String, TokenGrant>,
}

impl Tokens {
    pub fn new(grants: BTreeMap<String, TokenGrant>) -> Self {
        Tokens { grants }
    }

    pub fn is_empty(&self) -> bool {
        self.grants.is_empty()
    }

    /// Resolves an `authorization` metadata value (`Bearer <token>`, or the bare token).
    pub fn authenticate(&self, header: Option<&str>) -> Result<Principal, AuthError> {
        let raw = header.map(str::trim).filter(|h| !h.is_empty());
        let Some(raw) = raw else {
            return Err(AuthError::Missing);
        };
        // The scheme is case-insensitive (RFC 7235); a bare token is accepted too.
        let token = if raw.eq_ignore_ascii_case("bearer") {
            ""
        } else {
            match raw.get(..7) {
                Some(scheme) if scheme.eq_ignore_ascii_case("bearer ") => raw[7..].trim(),
                _ => raw,
            }
        };
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if token.len() > TOKEN_LEN_MAX_BYTES {
            return Err(AuthError::Unknown);
        }
        // Compare against every grant in constant time per byte, so timing does not tell
        // how much of a guess matched.
        let mut found = None;
        for (known, grant) in &self.grants {
            if constant_time_eq(known.as_bytes(), token.as_bytes()) {
                found = Some((known, grant));
            }
        }
        let (known, grant) = found.ok_or(AuthError::Unknown)?;
        let name = grant
            .name
            .clone()
            .or_else(|| grant.agent.clone())
            .unwrap_or_else(|| format!("token:{:08x}", fingerprint(known)));
        Ok(Principal {
            name,
            role: grant.role,
            agent: grant.agent.clone(),
        })
    }
}

impl Principal {
    /// Allows the action when the caller's role is at least `needed`.
    pub fn require(&self, needed: Role, action: &str) -> Result<(), AuthError> {
        if self.role >= needed {
            Ok(())
        } else {
            Err(AuthError::RoleTooLow {
                role: self.role.name(),
                action: action.to_string(),
                needed: needed.name(),
            })
        }
    }

    /// Allows acting on `agent`: supervisors and admins on anyone, an agent on themself.
    pub fn may_act_for(&self, agent: &str) -> Result<(), AuthError> {
        if self.role >= Role::Supervisor {
            return Ok(());
        }
        match &self.agent {
            Some(own) if own == agent => Ok(()),
            Some(own) => Err(AuthError::NotOwn {
                own: own.clone(),
                target: agent.to_string(),
            }),
            None => Err(AuthError::NotOwn {
                own: "(none bound to this token)".into(),
                target: agent.to_string(),
            }),
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// FNV-1a, to name a token in logs without revealing it.
fn fingerprint(token: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in token.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Tokens {
        let mut grants = BTreeMap::new();
        grants.insert(
            "a-1001".to_string(),
            TokenGrant {
                role: Role::Agent,
                agent: Some("1001".into()),
                name: None,
            },
        );
        grants.insert(
            "admin-secret".to_string(),
            TokenGrant {
                role: Role::Admin,
                agent: None,
                name: Some("ops".into()),
            },
        );
        Tokens::new(grants)
    }

    #[test]
    fn bearer_and_bare_tokens_resolve() {
        let t = tokens();
        let p = t.authenticate(Some("Bearer a-1001")).expect("agent token");
        assert_eq!(p.role, Role::Agent);
        assert_eq!(p.name, "1001");
        let p = t.authenticate(Some("admin-secret")).expect("bare token");
        assert_eq!(p.name, "ops");
        assert_eq!(t.authenticate(None), Err(AuthError::Missing));
        assert_eq!(t.authenticate(Some("Bearer ")), Err(AuthError::Missing));
        assert_eq!(
            t.authenticate(Some("BEARER a-1001")).map(|p| p.name),
            Ok("1001".into())
        );
        assert_eq!(t.authenticate(Some("Bearer nope")), Err(AuthError::Unknown));
        let long = "x".repeat(TOKEN_LEN_MAX_BYTES + 1);
        assert_eq!(t.authenticate(Some(&long)), Err(AuthError::Unknown));
    }

    #[test]
    fn roles_and_ownership() {
        let t = tokens();
        let agent = t.authenticate(Some("a-1001")).expect("agent");
        assert!(agent.may_act_for("1001").is_ok());
        assert!(matches!(
            agent.may_act_for("1002"),
            Err(AuthError::NotOwn { .. })
        ));
        assert!(agent.require(Role::Supervisor, "force a state").is_err());
        let admin = t.authenticate(Some("admin-secret")).expect("admin");
        assert!(admin.may_act_for("1002").is_ok());
        assert!(admin.require(Role::Admin, "x").is_ok());
        let unnamed = Tokens::new(BTreeMap::from([(
            "s".to_string(),
            TokenGrant {
                role: Role::Supervisor,
                agent: None,
                name: None,
            },
        )]));
        let p = unnamed.authenticate(Some("s")).expect("supervisor");
        assert!(p.name.starts_with("token:") && !p.name.contains(":s"));
    }
}
