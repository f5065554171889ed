//! TLS 1.3 for QUIC, authenticated by ed25519 node keys as raw public keys (RFC 7250).
//!
//! There are no certificates and no CAs at this layer: each side presents its node key as a
//! SubjectPublicKeyInfo and proves possession of it in the handshake. The client checks that
//! the host's key is exactly the one it expected; the host accepts any well-formed client key
//! and learns who it is, and authorization then rests on the grant bound to that key. Raw keys
//! keep the peer-identity parsing to one fixed 44-byte encoding, with no X.509 parser between
//! an attacker and the key comparison.

use std::sync::{Arc, OnceLock};

use mesh_proto::{NodeId, SecretKey};
use rustls::client::AlwaysResolvesClientRawPublicKeys;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{
    CryptoProvider, WebPkiSupportedAlgorithms, verify_tls13_signature_with_raw_key,
};
use rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, SubjectPublicKeyInfoDer,
    UnixTime,
};
use rustls::server::AlwaysResolvesServerRawPublicKeys;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use zeroize::Zeroizing;

use crate::error::Error;

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): the key's 32 bytes follow.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
/// DER prefix of an Ed25519 PKCS#8 v1 private key (RFC 8410): the 32-byte seed follows.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// The SubjectPublicKeyInfo a node presents as its raw public key.
pub fn spki_der(node: &NodeId) -> Vec<u8> {
    let mut der = ED25519_SPKI_PREFIX.to_vec();
    der.extend_from_slice(node.as_bytes());
    der
}

/// The node id in a peer's raw public key, if it is exactly an Ed25519 SPKI with a valid point.
pub fn node_id_from_spki(der: &[u8]) -> Option<NodeId> {
    let key = der.strip_prefix(&ED25519_SPKI_PREFIX)?;
    let key: &[u8; 32] = key.try_into().ok()?;
    NodeId::from_bytes(key).ok()
}

/// The only crypto mesh speaks: ring's TLS 1.3 suites with Ed25519 signatures.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certified_key(key: &SecretKey, provider: &CryptoProvider) -> Result<Arc<CertifiedKey>, Error> {
    let mut pkcs8 = Zeroizing::new(ED25519_PKCS8_PREFIX.to_vec());
    pkcs8.extend_from_slice(key.seed().as_ref());
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8.to_vec()));
    let signing_key = provider
        .key_provider
        .load_private_key(der)
        .map_err(Error::Tls)?;
    let public = CertificateDer::from(spki_der(&key.node_id()));
    Ok(Arc::new(CertifiedKey::new(vec![public], signing_key)))
}

fn verify_signature(
    message: &[u8],
    presented: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
    algorithms: &WebPkiSupportedAlgorithms,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    let spki = SubjectPublicKeyInfoDer::from(presented.as_ref());
    verify_tls13_signature_with_raw_key(message, &spki, dss, algorithms)
}

fn identity_error(message: String) -> rustls::Error {
    rustls::Error::General(message)
}

/// The client's check of the host: its raw key must be the expected node id.
#[derive(Debug)]
struct ExpectedHost {
    expected: NodeId,
    algorithms: WebPkiSupportedAlgorithms,
    /// The key a mismatching peer presented, so the caller can say which (TLS only carries
    /// an alert code back).
    presented_instead: Arc<OnceLock<NodeId>>,
}

impl ServerCertVerifier for ExpectedHost {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match node_id_from_spki(end_entity) {
            Some(presented) if presented == self.expected && intermediates.is_empty() => {
                Ok(ServerCertVerified::assertion())
            }
            Some(presented) => {
                let _ = self.presented_instead.set(presented);
                Err(identity_error(format!(
                    "host key mismatch: expected {}, the peer is {}",
                    self.expected, presented
                )))
            }
            None => Err(identity_error("peer presented no ed25519 node key".into())),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(identity_error("TLS 1.2 is not spoken here".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

/// The host's check of a client: any valid ed25519 node key, which the grant must then name.
#[derive(Debug)]
struct AnyNodeKey {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyNodeKey {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match node_id_from_spki(end_entity) {
            Some(_) if intermediates.is_empty() => Ok(ClientCertVerified::assertion()),
            _ => Err(identity_error(
                "client presented no ed25519 node key".into(),
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(identity_error("TLS 1.2 is not spoken here".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

/// TLS for accepting connections as `key`, offering `alpns`.
pub fn server_config(key: &SecretKey, alpns: &[&[u8]]) -> Result<rustls::ServerConfig, Error> {
    let provider = provider();
    let certified = certified_key(key, &provider)?;
    let verifier = Arc::new(AnyNodeKey {
        algorithms: provider.signature_verification_algorithms,
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(Error::Tls)?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(AlwaysResolvesServerRawPublicKeys::new(certified)));
    config.alpn_protocols = alpns.iter().map(|a| a.to_vec()).collect();
    Ok(config)
}

/// TLS for connecting as `key` to the node `expected`, asking for `alpn`. The returned cell
/// holds the key the peer presented if it was not `expected`.
pub fn client_config(
    key: &SecretKey,
    expected: NodeId,
    alpn: &[u8],
) -> Result<(rustls::ClientConfig, Arc<OnceLock<NodeId>>), Error> {
    let provider = provider();
    let certified = certified_key(key, &provider)?;
    let presented_instead = Arc::new(OnceLock::new());
    let verifier = Arc::new(ExpectedHost {
        expected,
        algorithms: provider.signature_verification_algorithms,
        presented_instead: presented_instead.clone(),
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(Error::Tls)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(AlwaysResolvesClientRawPublicKeys::new(certified)));
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok((config, presented_instead))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spki_round_trips_and_nothing_else_parses() {
        let id = SecretKey::from_seed(&[3; 32]).node_id();
        let der = spki_der(&id);
        assert_eq!(der.len(), 44);
        assert_eq!(node_id_from_spki(&der), Some(id));
        let mut longer = der.clone();
        longer.push(0);
        assert_eq!(node_id_from_spki(&longer), None);
        assert_eq!(node_id_from_spki(&der[..43]), None);
        let mut other_algorithm = der.clone();
        other_algorithm[8] = 0x71; // Ed448's OID ends in 0x71
        assert_eq!(node_id_from_spki(&other_algorithm), None);
    }

    #[test]
    fn the_pkcs8_key_loads_and_matches_the_node_id() {
        let key = SecretKey::from_seed(&[8; 32]);
        let provider = provider();
        let certified = certified_key(&key, &provider).unwrap();
        assert_eq!(
            certified.cert[0].as_ref(),
            spki_der(&key.node_id()).as_slice()
        );
        assert_eq!(
            certified
                .key
                .public_key()
                .map(|spki| spki.as_ref().to_vec()),
            Some(spki_der(&key.node_id()))
        );
    }
}
