//! The agent registrar: digest-authenticated REGISTER, one binding per agent, expiry.
//!
//! Sans-IO: [`Registrar::register`] takes what the SIP adapter read from a REGISTER and the
//! current time, and returns what to answer; [`Registrar::expire`] takes the time and
//! returns the agents whose binding lapsed. The node turns a first registration into an
//! agent log-in and an unregistration or lapse into a log-out.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::config::AgentAccount;
use crate::digest::{self, NonceKeeper};

/// What the SIP adapter extracted from a REGISTER.
#[derive(Clone, Debug)]
pub struct RegisterRequest {
    /// The To URI's user part: the agent id being registered.
    pub agent: String,
    pub authorization: Option<String>,
    /// `None` for a query (no Contact), `Some(Wildcard)` for `Contact: *`.
    pub contact: Option<ContactSpec>,
    /// From the Contact's `expires` parameter or the Expires header.
    pub expires_s: Option<u32>,
    /// Where the REGISTER really came from (for phones behind NAT).
    pub source: SocketAddr,
    pub transport: SipTransport,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContactSpec {
    Uri(String),
    Wildcard,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SipTransport {
    Udp,
    Tcp,
}

/// Where to reach a registered agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    pub contact: String,
    pub source: SocketAddr,
    pub transport: SipTransport,
    pub expires_at_ms: u64,
}

impl Binding {
    /// Where to send requests to the phone. A Contact whose IP is the one the REGISTER came
    /// from is used as written (the phone may listen on another port than it sent from);
    /// any other Contact (a private address behind NAT, a name) is replaced by the
    /// REGISTER's real source, the only address known to reach the phone.
    pub fn target(&self) -> SocketAddr {
        let contact = self
            .contact
            .trim_start_matches("sips:")
            .trim_start_matches("sip:");
        let host_port = contact
            .rsplit_once('@')
            .map(|(_, h)| h)
            .unwrap_or(contact)
            .split([';', '?', '>'])
            .next()
            .unwrap_or("");
        match host_port.parse::<SocketAddr>() {
            Ok(addr) if addr.ip() == self.source.ip() => addr,
            _ => match host_port.parse::<std::net::IpAddr>() {
                Ok(ip) if ip == self.source.ip() => SocketAddr::new(ip, 5060),
                _ => self.source,
            },
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegisterOutcome {
    /// 401 with this WWW-Authenticate value.
    Challenge { www_authenticate: String },
    /// 403: unknown agent or wrong password.
    Forbidden { reason: &'static str },
    /// 400 with a reason phrase.
    BadRequest { reason: String },
    /// 200. `first` is true when the agent had no binding before (a log-in).
    Registered {
        agent: String,
        expires_s: u32,
        contact: String,
        first: bool,
    },
    /// 200 for `Expires: 0`; `had_binding` is true when it removed one (a log-out).
    Unregistered { agent: String, had_binding: bool },
    /// 200 for a query without Contact: the current binding, if any.
    Query {
        agent: String,
        binding: Option<Binding>,
    },
}

pub struct Registrar {
    realm: String,
    accounts: BTreeMap<String, AgentAccount>,
    bindings: BTreeMap<String, Binding>,
    nonces: NonceKeeper,
    expires_max_s: u32,
}

const DEFAULT_EXPIRES_S: u32 = 3600;

impl Registrar {
    pub fn new(realm: &str, accounts: Vec<AgentAccount>, secret: u64, expires_max_s: u32) -> Self {
        Self {
            realm: realm.to_string(),
            accounts: accounts.into_iter().map(|a| (a.id.clone(), a)).collect(),
            bindings: BTreeMap::new(),
            nonces: NonceKeeper::new(secret),
            expires_max_s,
        }
    }

    pub fn account(&self, agent: &str) -> Option<&AgentAccount> {
        self.accounts.get(agent)
    }

    pub fn binding(&self, agent: &str) -> Option<&Binding> {
        self.bindings.get(agent)
    }

    /// Every agent with a live binding here.
    pub fn registered_agents(&self) -> Vec<String> {
        self.bindings.keys().cloned().collect()
    }

    pub fn registered_count(&self) -> usize {
        self.bindings.len()
    }

    pub fn register(&mut self, req: &RegisterRequest, now_ms: u64) -> RegisterOutcome {
        let challenge = |stale| RegisterOutcome::Challenge {
            www_authenticate: digest::challenge(&self.realm, &self.nonces.mint(now_ms), stale),
        };
        let Some(auth) = &req.authorization else {
            return challenge(false);
        };
        let creds = match digest::parse_authorization(auth) {
            Ok(c) => c,
            Err(e) => {
                return RegisterOutcome::BadRequest {
                    reason: e.to_string(),
                }
            }
        };
        if !self.nonces.is_fresh(&creds.nonce, now_ms) || creds.realm != self.realm {
            return challenge(true);
        }
        // The digest user must be the agent whose binding is being changed: one agent may
        // not register (or unregister) another.
        if creds.username != req.agent {
            return RegisterOutcome::Forbidden {
                reason: "digest username does not match the registered user",
            };
        }
        let Some(account) = self.accounts.get(&req.agent) else {
            return RegisterOutcome::Forbidden {
                reason: "unknown agent",
            };
        };
        if !digest::response_matches(&creds, "REGISTER", &account.password) {
            return RegisterOutcome::Forbidden {
                reason: "wrong password",
            };
        }
        let agent = req.agent.clone();
        let contact = match &req.contact {
            None => {
                return RegisterOutcome::Query {
                    binding: self.bindings.get(&agent).cloned(),
                    agent,
                }
            }
            Some(ContactSpec::Wildcard) => {
                if req.expires_s != Some(0) {
                    return RegisterOutcome::BadRequest {
                        reason: "Contact: * requires Expires: 0".into(),
                    };
                }
                None
            }
            Some(ContactSpec::Uri(uri)) => Some(uri.clone()),
        };
        let expires_s = req
            .expires_s
            .unwrap_or(DEFAULT_EXPIRES_S)
            .min(self.expires_max_s);
        match contact {
            Some(contact) if expires_s > 0 => {
                let first = !self.bindings.contains_key(&agent);
                self.bindings.insert(
                    agent.clone(),
                    Binding {
                        contact: contact.clone(),
                        source: req.source,
                        transport: req.transport,
                        expires_at_ms: now_ms + u64::from(expires_s) * 1000,
                    },
                );
                RegisterOutcome::Registered {
                    agent,
                    expires_s,
                    contact,
                    first,
                }
            }
            _ => {
                let had_binding = self.bindings.remove(&agent).is_some();
                RegisterOutcome::Unregistered { agent, had_binding }
            }
        }
    }

    /// Removes bindings whose expiry has passed; returns the agents that lost theirs.
    pub fn expire(&mut self, now_ms: u64) -> Vec<String> {
        let lapsed: Vec<String> = self
            .bindings
            .iter()
            .filter(|(_, b)| b.expires_at_ms <= now_ms)
            .map(|(a, _)| a.clone())
            .collect();
        for agent in &lapsed {
            self.bindings.remove(agent);
        }
        lapsed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::DigestCredentials;

    fn registrar() -> Registrar {
        Registrar::new(
            "carillon",
            vec![AgentAccount {
                id: "1001".into(),
                password: "pw1001".into(),
                skills: vec!["support".into()],
            }],
            7,
            3600,
        )
    }

    fn request(auth: Option<String>, expires: Option<u32>) -> RegisterRequest {
        RegisterRequest {
            agent: "1001".into(),
            authorization: auth,
            contact: Some(ContactSpec::Uri("sip:1001@127.0.0.1:6000".into())),
            expires_s: expires,
            source: "127.0.0.1:6000".parse().expect("addr"),
            transport: SipTransport::Udp,
        }
    }

    /// Answers a challenge the way a phone would.
    fn answer(challenge: &RegisterOutcome, user: &str, password: &str) -> String {
        let RegisterOutcome::Challenge { www_authenticate } = challenge else {
            panic!("expected a challenge, got {challenge:?}");
        };
        let nonce = www_authenticate
            .split("nonce=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .expect("nonce in challenge");
        let mut creds = DigestCredentials {
            username: user.into(),
            realm: "carillon".into(),
            nonce: nonce.into(),
            uri: "sip:127.0.0.1".into(),
            response: String::new(),
            algorithm: Some("MD5".into()),
            cnonce: Some("c0ffee".into()),
            qop: Some("auth".into()),
            nc: Some("00000001".into()),
        };
        creds.response = digest::expected_response(&creds, "REGISTER", password);
        format!(
            "Digest username=\"{user}\", realm=\"carillon\", nonce=\"{nonce}\", uri=\"sip:127.0.0.1\", response=\"{}\", algorithm=MD5, cnonce=\"c0ffee\", qop=auth, nc=00000001",
            creds.response
        )
    }

    #[test]
    fn challenge_then_register_then_reregister_then_unregister() {
        let mut r = registrar();
        let ch = r.register(&request(None, Some(120)), 1_000);
        let auth = answer(&ch, "1001", "pw1001");
        let out = r.register(&request(Some(auth.clone()), Some(120)), 1_100);
        assert!(matches!(
            out,
            RegisterOutcome::Registered {
                first: true,
                expires_s: 120,
                ..
            }
        ));
        let out = r.register(&request(Some(auth.clone()), Some(120)), 2_000);
        assert!(matches!(
            out,
            RegisterOutcome::Registered { first: false, .. }
        ));
        assert_eq!(r.binding("1001").map(|b| b.expires_at_ms), Some(122_000));
        let out = r.register(&request(Some(auth), Some(0)), 3_000);
        assert_eq!(
            out,
            RegisterOutcome::Unregistered {
                agent: "1001".into(),
                had_binding: true
            }
        );
        assert!(r.binding("1001").is_none());
    }

    #[test]
    fn wrong_password_and_unknown_agent_are_forbidden() {
        let mut r = registrar();
        let ch = r.register(&request(None, None), 1_000);
        let out = r.register(&request(Some(answer(&ch, "1001", "nope")), None), 1_000);
        assert_eq!(
            out,
            RegisterOutcome::Forbidden {
                reason: "wrong password"
            }
        );
        let mut req = request(Some(answer(&ch, "9999", "pw9999")), None);
        req.agent = "9999".into();
        assert!(matches!(
            r.register(&req, 1_000),
            RegisterOutcome::Forbidden { .. }
        ));
        // One agent's credentials cannot change another agent's binding.
        let mut req = request(Some(answer(&ch, "1001", "pw1001")), None);
        req.agent = "1002".into();
        assert!(matches!(
            r.register(&req, 1_000),
            RegisterOutcome::Forbidden { .. }
        ));
    }

    #[test]
    fn stale_nonce_is_rechallenged_and_bindings_expire() {
        let mut r = registrar();
        let ch = r.register(&request(None, Some(60)), 1_000);
        let auth = answer(&ch, "1001", "pw1001");
        let late = 1_000 + digest::NONCE_LIFETIME_MS + 1;
        assert!(matches!(
            r.register(&request(Some(auth.clone()), Some(60)), late),
            RegisterOutcome::Challenge { .. }
        ));
        assert!(matches!(
            r.register(&request(Some(auth), Some(60)), 2_000),
            RegisterOutcome::Registered { .. }
        ));
        assert!(r.expire(61_999).is_empty());
        assert_eq!(r.expire(62_000), vec!["1001".to_string()]);
        assert_eq!(r.registered_count(), 0);
    }

    #[test]
    fn binding_target_prefers_contact_on_the_source_ip_and_source_behind_nat() {
        let b = |contact: &str| Binding {
            contact: contact.into(),
            source: "127.0.0.1:6001".parse().expect("addr"),
            transport: SipTransport::Udp,
            expires_at_ms: 0,
        };
        let t = |c: &str| b(c).target().to_string();
        assert_eq!(t("sip:1001@127.0.0.1:5070"), "127.0.0.1:5070");
        assert_eq!(t("sip:1001@127.0.0.1:5070;transport=udp"), "127.0.0.1:5070");
        assert_eq!(t("sip:1001@127.0.0.1"), "127.0.0.1:5060");
        assert_eq!(t("sip:1001@192.168.1.20:5060"), "127.0.0.1:6001");
        assert_eq!(t("sip:1001@phone.example"), "127.0.0.1:6001");
    }

    #[test]
    fn expiry_is_capped() {
        let mut r = registrar();
        let ch = r.register(&request(None, None), 0);
        let out = r.register(
            &request(Some(answer(&ch, "1001", "pw1001")), Some(999_999)),
            0,
        );
        assert!(matches!(
            out,
            RegisterOutcome::Registered {
                expires_s: 3600,
                ..
            }
        ));
    }
}
