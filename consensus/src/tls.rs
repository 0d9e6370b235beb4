//! Mutual TLS for the Raft transport: who may connect, and who is on the other end.
//!
//! Every node holds a certificate signed by the cluster CA whose single identity is the DNS
//! name `n<id>.carillon` ([`crate::certs::identity_dns_name`]). The server side requires a
//! client certificate chained to the CA; the client side presents its own and checks that
//! the server chains to the CA *and* is valid for the node it meant to reach, so a node
//! holding another node's certificate cannot answer in its place. Only TLS 1.3 with the ALPN
//! [`ALPN`] is offered (QUIC needs 1.3). [`peer_node_id`] reads the authenticated identity
//! of an established connection; the transport checks every request against it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::certs::{identity_dns_name, parse_identity_dns_name};
use crate::types::{node_name, NodeId};

/// The ALPN protocol id of Carillon's Raft transport; bump the suffix on a wire change.
pub const ALPN: &[u8] = b"carillon-raft/1";

/// Why the TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error(
        "cannot read {path}: {source} (create the cluster's certificates with `carillon certs`)"
    )]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file does not hold the PEM it should.
    #[error(
        "{path} holds no valid {what}: {detail} (expected PEM as written by `carillon certs`)"
    )]
    BadPem {
        /// The file.
        path: PathBuf,
        /// What was expected.
        what: &'static str,
        /// What the parser said.
        detail: String,
    },
    /// The node certificate names another node (or none).
    #[error("{path} is not {expected}'s certificate ({found}); check the node id in the config or use {expected}.pem")]
    WrongIdentity {
        /// The certificate file.
        path: PathBuf,
        /// The node this process runs as.
        expected: String,
        /// What the certificate says instead.
        found: String,
    },
    /// The node certificate was not signed by this CA.
    #[error("{cert} is not signed by the CA in {ca}: {detail} (use certificates from one `carillon certs` run)")]
    NotSignedByCa {
        /// The node certificate file.
        cert: PathBuf,
        /// The CA file.
        ca: PathBuf,
        /// Why the chain did not verify.
        detail: String,
    },
    /// rustls or quinn refused the configuration.
    #[error("cannot build the TLS configuration: {0}")]
    Config(String),
}

/// One node's TLS material, ready for the QUIC endpoint.
#[derive(Clone)]
pub struct NodeTls {
    id: NodeId,
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTls").field("id", &self.id).finish()
    }
}

impl NodeTls {
    /// Load the CA, this node's certificate and key, and check that the certificate is
    /// node `id`'s and is signed by the CA (so a mix-up fails at start-up, not at the first
    /// handshake).
    pub fn load(
        ca_pem: &Path,
        cert_pem: &Path,
        key_pem: &Path,
        id: NodeId,
    ) -> Result<NodeTls, TlsError> {
        let ca_bytes = read(ca_pem)?;
        let cert_bytes = read(cert_pem)?;
        let key_bytes = read(key_pem)?;

        let ca_certs = certs_from_pem(ca_pem, &ca_bytes, "CA certificate")?;
        let chain = certs_from_pem(cert_pem, &cert_bytes, "certificate")?;
        let key = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| TlsError::BadPem {
            path: key_pem.to_path_buf(),
            what: "private key",
            detail: e.to_string(),
        })?;

        let found = node_id_from_cert(&chain[0]);
        if found != Some(id) {
            return Err(TlsError::WrongIdentity {
                path: cert_pem.to_path_buf(),
                expected: node_name(id),
                found: match found {
                    Some(other) => format!("it is {}'s", node_name(other)),
                    None => "it carries no n<id>.carillon name".into(),
                },
            });
        }

        let mut roots = rustls::RootCertStore::empty();
        for ca in &ca_certs {
            roots.add(ca.clone()).map_err(|e| TlsError::BadPem {
                path: ca_pem.to_path_buf(),
                what: "CA certificate",
                detail: e.to_string(),
            })?;
        }
        verify_chain(&chain, &roots).map_err(|detail| TlsError::NotSignedByCa {
            cert: cert_pem.to_path_buf(),
            ca: ca_pem.to_path_buf(),
            detail,
        })?;

        let roots = Arc::new(roots);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config_err = |e: rustls::Error| TlsError::Config(e.to_string());

        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(config_err)?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| TlsError::BadPem {
                path: key_pem.to_path_buf(),
                what: "private key matching the certificate",
                detail: e.to_string(),
            })?;
        server.alpn_protocols = vec![ALPN.to_vec()];

        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(config_err)?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| TlsError::BadPem {
                path: key_pem.to_path_buf(),
                what: "private key matching the certificate",
                detail: e.to_string(),
            })?;
        client.alpn_protocols = vec![ALPN.to_vec()];

        Ok(NodeTls {
            id,
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }

    /// The node these credentials belong to.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The rustls server side: requires a client certificate chained to the CA.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.server.clone()
    }

    /// The rustls client side: presents our certificate; the server must chain to the CA
    /// and be valid for the server name given when connecting ([`server_name`]).
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        self.client.clone()
    }

    /// The QUIC server crypto built from [`Self::server_config`].
    pub fn quic_server_crypto(&self) -> Result<Arc<QuicServerConfig>, TlsError> {
        QuicServerConfig::try_from(self.server.clone())
            .map(Arc::new)
            .map_err(|e| TlsError::Config(e.to_string()))
    }

    /// The QUIC client crypto built from [`Self::client_config`].
    pub fn quic_client_crypto(&self) -> Result<Arc<QuicClientConfig>, TlsError> {
        QuicClientConfig::try_from(self.client.clone())
            .map(Arc::new)
            .map_err(|e| TlsError::Config(e.to_string()))
    }
}

/// The TLS server name to dial node `id` by: its identity, whatever its address.
pub fn server_name(id: NodeId) -> String {
    identity_dns_name(id)
}

/// The node id an established connection's peer proved with its certificate, or `None`
/// when the peer presented none or one without exactly one node identity.
pub fn peer_node_id(conn: &quinn::Connection) -> Option<NodeId> {
    let identity = conn.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    node_id_from_cert(chain.first()?)
}

/// The node id a certificate carries: its one `n<id>.carillon` DNS name, confirmed with
/// webpki's own name matching. A certificate naming two nodes names none.
pub fn node_id_from_cert(cert: &CertificateDer<'_>) -> Option<NodeId> {
    let ee = webpki::EndEntityCert::try_from(cert).ok()?;
    let mut ids = ee.valid_dns_names().filter_map(parse_identity_dns_name);
    let id = ids.next()?;
    if ids.next().is_some() {
        return None;
    }
    let name = ServerName::try_from(identity_dns_name(id)).ok()?;
    ee.verify_is_valid_for_subject_name(&name).ok()?;
    Some(id)
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn certs_from_pem(
    path: &Path,
    bytes: &[u8],
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadPem {
            path: path.to_path_buf(),
            what,
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::BadPem {
            path: path.to_path_buf(),
            what,
            detail: "no CERTIFICATE block found".into(),
        });
    }
    Ok(certs)
}

/// Check that `chain` leads to one of `roots`, at the current time (this is the adapter
/// that talks TLS; rustls reads the same clock at every handshake).
fn verify_chain(
    chain: &[CertificateDer<'static>],
    roots: &rustls::RootCertStore,
) -> Result<(), String> {
    let ee = webpki::EndEntityCert::try_from(&chain[0]).map_err(|e| e.to_string())?;
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &roots.roots,
        &chain[1..],
        UnixTime::now(),
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .map(|_| ())
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs;

    fn cluster(names: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("temp dir");
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        certs::generate(dir.path(), &names, false).expect("generate");
        dir
    }

    fn load(dir: &Path, ca_dir: &Path, name: &str, id: NodeId) -> Result<NodeTls, TlsError> {
        NodeTls::load(
            &ca_dir.join("ca.pem"),
            &dir.join(format!("{name}.pem")),
            &dir.join(format!("{name}.key")),
            id,
        )
    }

    #[test]
    fn loads_generated_certificates() {
        let dir = cluster(&["n1", "n2"]);
        let tls = load(dir.path(), dir.path(), "n2", 2).expect("load");
        assert_eq!(tls.id(), 2);
        assert_eq!(tls.server_config().alpn_protocols, vec![ALPN.to_vec()]);
        tls.quic_server_crypto().expect("quic server");
        tls.quic_client_crypto().expect("quic client");
    }

    #[test]
    fn another_nodes_certificate_is_refused_at_load() {
        let dir = cluster(&["n1", "n2"]);
        let err = load(dir.path(), dir.path(), "n2", 1).expect_err("wrong node");
        let text = err.to_string();
        assert!(matches!(err, TlsError::WrongIdentity { .. }), "{text}");
        assert!(text.contains("n2.pem") && text.contains("n1"), "{text}");
    }

    #[test]
    fn a_certificate_from_another_ca_is_refused_at_load() {
        let a = cluster(&["n1"]);
        let b = cluster(&["n1"]);
        let err = load(a.path(), b.path(), "n1", 1).expect_err("foreign CA");
        assert!(matches!(err, TlsError::NotSignedByCa { .. }), "{err}");
    }

    #[test]
    fn missing_files_name_the_file_and_the_fix() {
        let dir = tempfile::tempdir().expect("temp dir");
        let err = load(dir.path(), dir.path(), "n1", 1).expect_err("missing");
        let text = err.to_string();
        assert!(
            text.contains("ca.pem") && text.contains("carillon certs"),
            "{text}"
        );
    }

    #[test]
    fn garbage_pem_is_refused_with_the_file_named() {
        let dir = cluster(&["n1"]);
        std::fs::write(dir.path().join("n1.key"), b"not a key").expect("write");
        let err = load(dir.path(), dir.path(), "n1", 1).expect_err("bad key");
        assert!(err.to_string().contains("n1.key"), "{err}");
    }

    #[test]
    fn identity_comes_from_the_certificate() {
        let dir = cluster(&["n7"]);
        let pem = std::fs::read(dir.path().join("n7.pem")).expect("read");
        let cert = CertificateDer::from_pem_slice(&pem).expect("pem");
        assert_eq!(node_id_from_cert(&cert), Some(7));
        let ca = std::fs::read(dir.path().join("ca.pem")).expect("read");
        let ca = CertificateDer::from_pem_slice(&ca).expect("pem");
        assert_eq!(node_id_from_cert(&ca), None);
    }
}
