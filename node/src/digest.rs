//! SIP digest authentication, server side (RFC 3261 section 22, RFC 2617 MD5 with qop=auth).
//!
//! Sans-IO: nonces are minted and checked against a time the caller passes in, so a test
//! can step past a nonce's lifetime without waiting. A nonce is self-validating (its issue
//! time plus a keyed hash of it), so the node keeps no per-challenge state that a flood of
//! unauthenticated REGISTERs could grow.

use md5::{Digest as _, Md5};

/// How long a nonce stays valid; a phone whose nonce is older gets a fresh challenge.
pub const NONCE_LIFETIME_MS: u64 = 5 * 60 * 1000;

/// A parsed `Authorization: Digest ...` header.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DigestCredentials {
    pub username: String,
    pub realm: String,
    pub nonce: String,
    pub uri: String,
    pub response: String,
    pub algorithm: Option<String>,
    pub cnonce: Option<String>,
    pub qop: Option<String>,
    pub nc: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    #[error("authorization scheme is not Digest")]
    NotDigest,
    #[error("authorization header lacks `{0}`")]
    Missing(&'static str),
    #[error("unsupported digest algorithm `{0}` (only MD5)")]
    Algorithm(String),
    #[error("malformed authorization header")]
    Malformed,
}

/// Mints and checks nonces with a per-process secret.
#[derive(Clone, Debug)]
pub struct NonceKeeper {
    secret: u64,
}

impl NonceKeeper {
    pub fn new(secret: u64) -> Self {
        Self { secret }
    }

    pub fn mint(&self, now_ms: u64) -> String {
        format!("{now_ms:x}.{}", self.tag(now_ms))
    }

    /// True when `nonce` was minted by this keeper and is younger than its lifetime.
    pub fn is_fresh(&self, nonce: &str, now_ms: u64) -> bool {
        let Some((time, tag)) = nonce.split_once('.') else {
            return false;
        };
        let Ok(issued) = u64::from_str_radix(time, 16) else {
            return false;
        };
        tag == self.tag(issued) && now_ms.saturating_sub(issued) <= NONCE_LIFETIME_MS
    }

    fn tag(&self, issued: u64) -> String {
        hex_md5(&format!("{}:{issued}", self.secret))[..16].to_string()
    }
}

/// The `WWW-Authenticate` value for a challenge.
pub fn challenge(realm: &str, nonce: &str, stale: bool) -> String {
    let stale = if stale { ", stale=true" } else { "" };
    format!("Digest realm=\"{realm}\", nonce=\"{nonce}\", algorithm=MD5, qop=\"auth\"{stale}")
}

/// Parses the value of an Authorization header.
pub fn parse_authorization(value: &str) -> Result<DigestCredentials, DigestError> {
    let value = value.trim();
    let (scheme, rest) = value
        .split_once(char::is_whitespace)
        .ok_or(DigestError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("digest") {
        return Err(DigestError::NotDigest);
    }
    let mut creds = DigestCredentials::default();
    let mut seen_username = false;
    for (key, val) in split_params(rest)? {
        match key.to_ascii_lowercase().as_str() {
            "username" => {
                creds.username = val;
                seen_username = true;
            }
            "realm" => creds.realm = val,
            "nonce" => creds.nonce = val,
            "uri" => creds.uri = val,
            "response" => creds.response = val.to_ascii_lowercase(),
            "algorithm" => creds.algorithm = Some(val),
            "cnonce" => creds.cnonce = Some(val),
            "qop" => creds.qop = Some(val),
            "nc" => creds.nc = Some(val),
            _ => {}
        }
    }
    if !seen_username {
        return Err(DigestError::Missing("username"));
    }
    for (name, v) in [
        ("nonce", &creds.nonce),
        ("uri", &creds.uri),
        ("response", &creds.response),
    ] {
        if v.is_empty() {
            return Err(DigestError::Missing(name));
        }
    }
    if let Some(alg) = &creds.algorithm {
        if !alg.eq_ignore_ascii_case("md5") {
            return Err(DigestError::Algorithm(alg.clone()));
        }
    }
    if creds.qop.is_some() && (creds.cnonce.is_none() || creds.nc.is_none()) {
        return Err(DigestError::Missing("cnonce/nc"));
    }
    Ok(creds)
}

/// The response a client knowing `password` would compute for `method`.
pub fn expected_response(creds: &DigestCredentials, method: &str, password: &str) -> String {
    let ha1 = hex_md5(&format!("{}:{}:{password}", creds.username, creds.realm));
    let ha2 = hex_md5(&format!("{method}:{}", creds.uri));
    match (&creds.qop, &creds.nc, &creds.cnonce) {
        (Some(qop), Some(nc), Some(cnonce)) => {
            hex_md5(&format!("{ha1}:{}:{nc}:{cnonce}:{qop}:{ha2}", creds.nonce))
        }
        _ => hex_md5(&format!("{ha1}:{}:{ha2}", creds.nonce)),
    }
}

/// Constant-time comparison of the client's response with the expected one.
pub fn response_matches(creds: &DigestCredentials, method: &str, password: &str) -> bool {
    let expected = expected_response(creds, method, password);
    let (a, b) = (expected.as_bytes(), creds.response.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn hex_md5(text: &str) -> String {
    let digest = Md5::digest(text.as_bytes());
    let mut out = String::with_capacity(32);
    for byte in digest {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// Splits `a="x, y", b=z` into pairs, honouring quotes and backslash escapes.
fn split_params(text: &str) -> Result<Vec<(String, String)>, DigestError> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while matches!(chars.peek(), Some(c) if c.is_whitespace() || *c == ',') {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ',' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if chars.next() != Some('=') {
            return Err(DigestError::Malformed);
        }
        while matches!(chars.peek(), Some(c) if c.is_whitespace()) {
            chars.next();
        }
        let mut val = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            let mut closed = false;
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            val.push(n);
                        }
                    }
                    '"' => {
                        closed = true;
                        break;
                    }
                    _ => val.push(c),
                }
            }
            if !closed {
                return Err(DigestError::Malformed);
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                val.push(c);
                chars.next();
            }
            val = val.trim().to_string();
        }
        out.push((key.trim().to_string(), val));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc2617_example_response() {
        // The worked example of RFC 2617 section 3.5.
        let creds = DigestCredentials {
            username: "Mufasa".into(),
            realm: "testrealm@host.com".into(),
            nonce: "dcd98b7102dd2f0e8b11d0f600bfb0c093".into(),
            uri: "/dir/index.html".into(),
            response: "6629fae49393a05397450978507c4ef1".into(),
            algorithm: None,
            cnonce: Some("0a4f113b".into()),
            qop: Some("auth".into()),
            nc: Some("00000001".into()),
        };
        assert!(response_matches(&creds, "GET", "Circle Of Life"));
        assert!(!response_matches(&creds, "GET", "circle of life"));
    }

    #[test]
    fn parses_quoted_and_bare_params() {
        let h = r#"Digest username="1001",realm="carillon", nonce="a.b", uri="sip:127.0.0.1:5060", response="ABC", algorithm=MD5, cnonce="x,y", qop=auth, nc=00000001"#;
        let c = parse_authorization(h).expect("parse");
        assert_eq!(c.username, "1001");
        assert_eq!(c.cnonce.as_deref(), Some("x,y"));
        assert_eq!(c.qop.as_deref(), Some("auth"));
        assert_eq!(c.response, "abc");
        assert_eq!(
            parse_authorization("Basic abc"),
            Err(DigestError::NotDigest)
        );
        assert!(parse_authorization(r#"Digest username="a"#).is_err());
        assert_eq!(
            parse_authorization(r#"Digest realm="r", nonce="n", uri="u", response="r""#),
            Err(DigestError::Missing("username"))
        );
    }

    #[test]
    fn nonces_expire_and_cannot_be_forged() {
        let keeper = NonceKeeper::new(42);
        let n = keeper.mint(1_000);
        assert!(keeper.is_fresh(&n, 1_000 + NONCE_LIFETIME_MS));
        assert!(!keeper.is_fresh(&n, 1_001 + NONCE_LIFETIME_MS));
        assert!(!NonceKeeper::new(43).is_fresh(&n, 1_000));
        assert!(!keeper.is_fresh("3e8.0000000000000000", 1_000));
        assert!(!keeper.is_fresh("garbage", 1_000));
    }
}
