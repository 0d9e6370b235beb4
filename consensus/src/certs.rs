//! The cluster CA and node certificates that `carillon certs` writes.
//!
//! A new cluster gets one CA (`ca.pem`, `ca.key`) and, for each node `n<id>`, a certificate
//! (`n<id>.pem`, `n<id>.key`) signed by it. A node's identity is the single DNS name
//! `n<id>.carillon` in its subject alternative names ([`identity_dns_name`]); the transport
//! ([`crate::tls`]) reads it back to learn which node is on the other end of a connection.
//! Node certificates carry both server and client authentication, since every node dials and
//! accepts. Keys are ECDSA P-256.
//!
//! Validity: certificates use rcgen's wide default window, so nothing here reads the clock;
//! rotating a cluster's certificates means running `carillon certs` again (with `overwrite`).
//! What it leaves to others: distributing the files and keeping `ca.key` off the nodes.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};

use crate::types::{node_name, parse_node_name, NodeId};

/// The subject common name of every Carillon cluster CA. Signing a new node with an
/// existing CA rebuilds the issuer from this name and the CA key (no certificate parser).
const CA_COMMON_NAME: &str = "Carillon cluster CA";

/// The DNS name a node's certificate carries as its identity: `n3.carillon` for node 3.
pub fn identity_dns_name(id: NodeId) -> String {
    format!("{}.carillon", node_name(id))
}

/// `n3.carillon` back to 3; anything else is not a node identity.
pub fn parse_identity_dns_name(name: &str) -> Option<NodeId> {
    let node = name.strip_suffix(".carillon")?;
    if !node.starts_with('n') {
        return None;
    }
    parse_node_name(node)
}

/// Why certificates could not be written.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// The node name is not `n<digits>`.
    #[error("`{0}` is not a node name: use n1, n2, ... (the letter n and the node id)")]
    BadName(String),
    /// The same node was named twice.
    #[error("node `{0}` is listed twice")]
    DuplicateName(String),
    /// No node names were given.
    #[error("no node names given: list the nodes to certify, e.g. n1 n2 n3")]
    NoNames,
    /// A file exists and overwriting was not asked for.
    #[error("{0} already exists: pass --overwrite to replace it, or pick another directory")]
    Exists(PathBuf),
    /// The CA files are missing or unreadable.
    #[error("cannot read {path}: {source} (run `carillon certs` first to create the cluster CA)")]
    ReadCa {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The CA file does not hold what it should.
    #[error("{path} is not a valid {what}: {detail}")]
    BadCa {
        /// The file.
        path: PathBuf,
        /// What was expected (`certificate`, `private key`).
        what: &'static str,
        /// What the parser said.
        detail: String,
    },
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// rcgen refused to build a certificate.
    #[error("cannot make the certificate for {what}: {source}")]
    Generate {
        /// Which certificate (`the CA`, `n2`).
        what: String,
        /// rcgen's error.
        source: rcgen::Error,
    },
}

/// Write a new CA and one certificate per node name into `out_dir` (created if missing).
///
/// Refuses to replace any existing file unless `overwrite` is set; in that case it checks
/// every target before writing anything, so a refusal leaves the directory as it was.
pub fn generate(out_dir: &Path, names: &[String], overwrite: bool) -> Result<(), CertError> {
    if names.is_empty() {
        return Err(CertError::NoNames);
    }
    let ids = parse_names(names)?;
    let mut targets = vec![out_dir.join("ca.pem"), out_dir.join("ca.key")];
    for &id in &ids {
        targets.push(node_file(out_dir, id, "pem"));
        targets.push(node_file(out_dir, id, "key"));
    }
    if !overwrite {
        refuse_existing(&targets)?;
    }
    create_dir(out_dir)?;

    let ca_key = KeyPair::generate().map_err(|source| CertError::Generate {
        what: "the CA".into(),
        source,
    })?;
    let ca_params = ca_params();
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(|source| CertError::Generate {
            what: "the CA".into(),
            source,
        })?;
    write_file(&out_dir.join("ca.pem"), ca_cert.pem().as_bytes(), false)?;
    write_file(
        &out_dir.join("ca.key"),
        ca_key.serialize_pem().as_bytes(),
        true,
    )?;

    let issuer = Issuer::new(ca_params, ca_key);
    for id in ids {
        sign_node(out_dir, id, &issuer)?;
    }
    Ok(())
}

/// Sign one more node (`name`, e.g. `n4`) with the CA already in `out_dir`, for
/// `carillon ctl cluster add-node`. Refuses to replace the node's files unless `overwrite`.
pub fn add(out_dir: &Path, name: &str, overwrite: bool) -> Result<(), CertError> {
    let id = parse_names(&[name.to_string()])?[0];
    let targets = [node_file(out_dir, id, "pem"), node_file(out_dir, id, "key")];
    if !overwrite {
        refuse_existing(&targets)?;
    }
    let ca_pem_path = out_dir.join("ca.pem");
    let ca_key_path = out_dir.join("ca.key");
    let ca_pem = read_ca(&ca_pem_path)?;
    let ca_key_pem = read_ca(&ca_key_path)?;
    let ca_der =
        CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(|e| CertError::BadCa {
            path: ca_pem_path.clone(),
            what: "certificate",
            detail: e.to_string(),
        })?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|e| CertError::BadCa {
        path: ca_key_path.clone(),
        what: "private key",
        detail: e.to_string(),
    })?;
    let issuer = Issuer::new(ca_params(), ca_key);
    let (cert_pem, key_pem) = node_cert(id, &issuer)?;

    // The issuer was rebuilt from our fixed CA name: prove the result really chains to the
    // CA on disk before handing it out, so a foreign ca.pem fails here and not at start-up.
    let node_der =
        CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| CertError::BadCa {
            path: ca_pem_path.clone(),
            what: "certificate",
            detail: e.to_string(),
        })?;
    chains_to(&node_der, &ca_der).map_err(|detail| CertError::BadCa {
        path: ca_pem_path.clone(),
        what: "Carillon cluster CA matching ca.key",
        detail,
    })?;
    write_file(&targets[0], cert_pem.as_bytes(), false)?;
    write_file(&targets[1], key_pem.as_bytes(), true)?;
    Ok(())
}

/// Check that `cert` is signed by `ca` (path building only; validity time is not the
/// question here, so the check uses the epoch).
fn chains_to(cert: &CertificateDer<'_>, ca: &CertificateDer<'_>) -> Result<(), String> {
    let anchor = webpki::anchor_from_trusted_cert(ca).map_err(|e| e.to_string())?;
    let ee = webpki::EndEntityCert::try_from(cert).map_err(|e| e.to_string())?;
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &[anchor],
        &[],
        UnixTime::since_unix_epoch(std::time::Duration::from_secs(1_700_000_000)),
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .map(|_| ())
    .map_err(|e| e.to_string())
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, CA_COMMON_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

fn sign_node(out_dir: &Path, id: NodeId, issuer: &Issuer<'_, KeyPair>) -> Result<(), CertError> {
    let (cert_pem, key_pem) = node_cert(id, issuer)?;
    write_file(&node_file(out_dir, id, "pem"), cert_pem.as_bytes(), false)?;
    write_file(&node_file(out_dir, id, "key"), key_pem.as_bytes(), true)?;
    Ok(())
}

/// A node certificate and its key, both PEM.
fn node_cert(id: NodeId, issuer: &Issuer<'_, KeyPair>) -> Result<(String, String), CertError> {
    let what = || node_name(id);
    let key = KeyPair::generate().map_err(|source| CertError::Generate {
        what: what(),
        source,
    })?;
    let mut params = CertificateParams::new(vec![identity_dns_name(id)]).map_err(|source| {
        CertError::Generate {
            what: what(),
            source,
        }
    })?;
    params
        .distinguished_name
        .push(DnType::CommonName, identity_dns_name(id));
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let cert = params
        .signed_by(&key, issuer)
        .map_err(|source| CertError::Generate {
            what: what(),
            source,
        })?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn parse_names(names: &[String]) -> Result<Vec<NodeId>, CertError> {
    let mut ids = Vec::with_capacity(names.len());
    for name in names {
        // The CLI name is `n<id>`; a bare number would be accepted by parse_node_name but
        // would make files named differently from the certificate inside, so insist on `n`.
        let id = name
            .strip_prefix('n')
            .and_then(|_| parse_node_name(name))
            .ok_or_else(|| CertError::BadName(name.clone()))?;
        if ids.contains(&id) {
            return Err(CertError::DuplicateName(name.clone()));
        }
        ids.push(id);
    }
    Ok(ids)
}

fn node_file(out_dir: &Path, id: NodeId, ext: &str) -> PathBuf {
    out_dir.join(format!("{}.{ext}", node_name(id)))
}

fn refuse_existing(targets: &[PathBuf]) -> Result<(), CertError> {
    match targets.iter().find(|p| p.exists()) {
        Some(p) => Err(CertError::Exists(p.clone())),
        None => Ok(()),
    }
}

fn create_dir(dir: &Path) -> Result<(), CertError> {
    fs::create_dir_all(dir).map_err(|source| CertError::Write {
        path: dir.to_path_buf(),
        source,
    })
}

fn read_ca(path: &Path) -> Result<String, CertError> {
    fs::read_to_string(path).map_err(|source| CertError::ReadCa {
        path: path.to_path_buf(),
        source,
    })
}

/// Write a file; private keys are readable by their owner only.
fn write_file(path: &Path, contents: &[u8], secret: bool) -> Result<(), CertError> {
    let err = |source| CertError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options.open(path).map_err(err)?;
    file.write_all(contents).map_err(err)?;
    file.sync_all().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn identity_names_round_trip() {
        assert_eq!(identity_dns_name(3), "n3.carillon");
        assert_eq!(parse_identity_dns_name("n3.carillon"), Some(3));
        assert_eq!(parse_identity_dns_name("3.carillon"), None);
        assert_eq!(parse_identity_dns_name("n3.example"), None);
        assert_eq!(parse_identity_dns_name("nx.carillon"), None);
    }

    #[test]
    fn generate_writes_every_file_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().expect("temp dir");
        generate(dir.path(), &names(&["n1", "n2"]), false).expect("generate");
        for f in ["ca.pem", "ca.key", "n1.pem", "n1.key", "n2.pem", "n2.key"] {
            assert!(dir.path().join(f).exists(), "{f} missing");
        }
        let err = generate(dir.path(), &names(&["n1"]), false).expect_err("must refuse");
        assert!(matches!(err, CertError::Exists(_)), "{err}");
        assert!(err.to_string().contains("ca.pem"), "{err}");
        generate(dir.path(), &names(&["n1"]), true).expect("overwrite asked for");
    }

    #[test]
    fn bad_and_duplicate_names_are_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let err = generate(dir.path(), &names(&["node1"]), false).expect_err("bad name");
        assert!(matches!(err, CertError::BadName(_)));
        let err = generate(dir.path(), &names(&["n1", "n1"]), false).expect_err("dup");
        assert!(matches!(err, CertError::DuplicateName(_)));
        let err = generate(dir.path(), &[], false).expect_err("empty");
        assert!(matches!(err, CertError::NoNames));
    }

    #[test]
    fn add_signs_with_the_existing_ca() {
        let dir = tempfile::tempdir().expect("temp dir");
        generate(dir.path(), &names(&["n1"]), false).expect("generate");
        add(dir.path(), "n4", false).expect("add");
        let ca = CertificateDer::from_pem_file(dir.path().join("ca.pem")).expect("ca");
        let n4 = CertificateDer::from_pem_file(dir.path().join("n4.pem")).expect("n4");
        chains_to(&n4, &ca).expect("n4 chains to the CA");
        let err = add(dir.path(), "n4", false).expect_err("exists");
        assert!(matches!(err, CertError::Exists(_)));
    }

    #[test]
    fn add_without_a_ca_says_what_to_do() {
        let dir = tempfile::tempdir().expect("temp dir");
        let err = add(dir.path(), "n4", false).expect_err("no CA");
        let text = err.to_string();
        assert!(
            text.contains("ca.pem") && text.contains("carillon certs"),
            "{text}"
        );
    }

    #[test]
    fn add_with_a_foreign_ca_key_is_refused() {
        let a = tempfile::tempdir().expect("temp dir");
        let b = tempfile::tempdir().expect("temp dir");
        generate(a.path(), &names(&["n1"]), false).expect("generate a");
        generate(b.path(), &names(&["n1"]), false).expect("generate b");
        fs::copy(b.path().join("ca.key"), a.path().join("ca.key")).expect("copy");
        let err = add(a.path(), "n2", false).expect_err("foreign key");
        assert!(matches!(err, CertError::BadCa { .. }), "{err}");
        assert!(!a.path().join("n2.pem").exists());
    }
}
