//! The DTLS and SRTP half of a [`Transport`](super::Transport): the certificate every
//! endpoint of an engine presents ([`Identity`]), the handshake's configuration with the
//! peer's certificate checked against its fingerprint, and the SRTP contexts from the
//! handshake's keying material.

use std::net::SocketAddr;
use std::sync::Arc;

use rtc::crypto::{HashAlgorithm, RTCCryptoProvider};
use rtc::dtls::config::{
    ClientAuthType, ConfigBuilder, ExtendedMasterSecretType, HandshakeConfig,
    VerifyPeerCertificateFn,
};
use rtc::dtls::crypto::Certificate;
use rtc::dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use rtc::srtp::config::Config as SrtpConfig;
use rtc::srtp::context::Context as SrtpContext;
use rtc::srtp::option::{srtcp_replay_protection, srtp_replay_protection};
use rtc::srtp::protection_profile::ProtectionProfile;

use super::super::error::ClientError;

/// SRTP profiles offered, AEAD GCM first (a third of CM-HMAC's CPU), as browsers do.
pub(in crate::client) const SRTP_PROFILES: [SrtpProtectionProfile; 3] = [
    SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
    SrtpProtectionProfile::Srtp_Aead_Aes_256_Gcm,
    SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
];
/// The certificate every endpoint of an engine presents, and its SDP fingerprint (like a
/// browser profile's, one for all its connections).
pub(in crate::client) struct Identity {
    pub(in crate::client) crypto: Arc<dyn RTCCryptoProvider>,
    pub(in crate::client) certificate: Certificate,
    pub(in crate::client) fingerprint: String,
}

impl Identity {
    /// Generates a self-signed certificate.
    pub(in crate::client) fn generate() -> Result<Identity, ClientError> {
        let crypto = rtc::crypto::default_provider()
            .map_err(|e| ClientError::Protocol(format!("crypto provider: {e}")))?;
        let certificate =
            Certificate::generate_self_signed(vec!["chorus-bot".to_owned()], crypto.crypto())
                .map_err(|e| ClientError::Protocol(format!("certificate: {e}")))?;
        let der = certificate
            .certificate
            .first()
            .ok_or_else(|| ClientError::Protocol("certificate without a chain".into()))?;
        let fingerprint = sha256_fingerprint(crypto.as_ref(), der.as_ref())?;
        Ok(Identity {
            crypto,
            certificate,
            fingerprint,
        })
    }
}

fn sha256_fingerprint(crypto: &dyn RTCCryptoProvider, der: &[u8]) -> Result<String, ClientError> {
    let hashed = crypto
        .crypto()
        .hash(HashAlgorithm::Sha256, der)
        .map_err(|e| ClientError::Protocol(format!("fingerprint: {e}")))?;
    Ok(hashed
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":"))
}

/// The SRTP contexts of a connected transport.
pub(in crate::client) struct Srtp {
    /// Decrypts what the server sends.
    pub(in crate::client) remote: SrtpContext,
    /// Encrypts what we send.
    pub(in crate::client) local: SrtpContext,
}

/// Our side's handshake configuration as DTLS client or server toward `server`: our
/// certificate, the SRTP profiles, and the peer's certificate checked against the sha-256
/// `fingerprint` its description named.
pub(in crate::client) fn handshake_config(
    identity: &Identity,
    fingerprint: &str,
    client: bool,
    server: SocketAddr,
) -> Result<HandshakeConfig, rtc::shared::error::Error> {
    let expected = fingerprint.to_lowercase();
    let crypto = Arc::clone(&identity.crypto);
    let verify: VerifyPeerCertificateFn = Arc::new(move |certs, _| {
        let der = certs
            .first()
            .ok_or(rtc::shared::error::Error::ErrNonCertificate)?;
        let got = sha256_fingerprint(crypto.as_ref(), der)
            .map_err(|e| rtc::shared::error::Error::Other(e.to_string()))?;
        if got == expected {
            Ok(())
        } else {
            Err(rtc::shared::error::Error::ErrNoMatchingCertificateFingerprint)
        }
    });
    ConfigBuilder::default()
        .with_crypto_provider(Arc::clone(&identity.crypto))
        .with_certificates(vec![identity.certificate.clone()])
        .with_srtp_protection_profiles(SRTP_PROFILES.to_vec())
        .with_insecure_skip_verify(true)
        .with_verify_peer_certificate(Some(verify))
        .with_extended_master_secret(ExtendedMasterSecretType::Require)
        .with_client_auth(ClientAuthType::RequireAnyClientCert)
        .build(client, Some(server))
}

/// The receive (server -> us) and send SRTP contexts from a completed DTLS handshake.
pub(in crate::client) fn srtp_contexts(
    state: &rtc::dtls::state::State,
    crypto: &dyn RTCCryptoProvider,
) -> Result<Srtp, ClientError> {
    let err = |e: rtc::shared::error::Error| ClientError::Protocol(format!("SRTP: {e}"));
    let profile = match state.srtp_protection_profile() {
        SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm => ProtectionProfile::AeadAes128Gcm,
        SrtpProtectionProfile::Srtp_Aead_Aes_256_Gcm => ProtectionProfile::AeadAes256Gcm,
        SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80 => {
            ProtectionProfile::Aes128CmHmacSha1_80
        }
        other => return Err(ClientError::Protocol(format!("SRTP profile {other:?}"))),
    };
    let mut config = SrtpConfig {
        profile,
        ..Default::default()
    };
    let material = state
        .export_keying_material(
            rtc::srtp::config::LABEL_EXTRACTOR_DTLS_SRTP,
            &[],
            config.keying_material_len(),
        )
        .map_err(err)?;
    config
        .set_session_keys_from_keying_material(material.as_ref(), state.is_client())
        .map_err(err)?;
    let remote = SrtpContext::new(
        &config.keys.remote_master_key,
        &config.keys.remote_master_salt,
        profile,
        Some(srtp_replay_protection(64)),
        Some(srtcp_replay_protection(64)),
        crypto.crypto(),
    )
    .map_err(err)?;
    let local = SrtpContext::new(
        &config.keys.local_master_key,
        &config.keys.local_master_salt,
        profile,
        None,
        None,
        crypto.crypto(),
    )
    .map_err(err)?;
    Ok(Srtp { remote, local })
}
