//! TLS to PostgreSQL with libpq's `sslmode` and `sslrootcert` semantics, for the pool (through
//! `tokio-rustls`, the `postgres` crate's TLS hook) and for our own replication connection (a
//! blocking rustls stream).
//!
//! | `sslmode` | TLS | Certificate chain checked | Host name checked |
//! |---|---|---|---|
//! | `disable` | never | – | – |
//! | `prefer` (default) | when the server offers it | no | no |
//! | `require` | always | only when `sslrootcert` is given (as libpq) | no |
//! | `verify-ca` | always | yes | no |
//! | `verify-full` | always | yes | yes |
//!
//! `sslrootcert` is a PEM file of trusted certificates, or `system` for the host's CA bundle
//! (`SSL_CERT_FILE`, else the usual distribution paths). When it is not given, libpq's default
//! `~/.postgresql/root.crt` is used if it exists. TLS needs the default-on `tls` cargo feature;
//! a build without it refuses every mode but `disable` and `prefer` (which then stays plaintext).
//!
//! Channel binding (`SCRAM-SHA-256-PLUS`) is not offered: SCRAM runs without it over TLS.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::pg::url::ConnParams;

/// libpq's `sslmode` values that synchro supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SslMode {
    /// Plaintext only.
    Disable,
    /// TLS when the server offers it, without verification; plaintext otherwise.
    Prefer,
    /// TLS required; verification only when a root certificate is given.
    Require,
    /// TLS with the server's chain verified against the root certificates.
    VerifyCa,
    /// As `VerifyCa`, and the certificate must name the host connected to.
    VerifyFull,
}

impl SslMode {
    /// Parses an `sslmode` value.
    pub fn parse(value: &str) -> Result<SslMode, TlsError> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(TlsError::Config(format!(
                    "sslmode={other:?} is not supported; use disable, prefer, require, verify-ca or verify-full"
                )))
            }
        })
    }

    /// The value as written in a connection string.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Whether a plaintext connection is refused.
    pub fn requires_tls(self) -> bool {
        self >= SslMode::Require
    }
}

/// Where trusted root certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootSource {
    /// A PEM file.
    File(PathBuf),
    /// The host's CA bundle (`sslrootcert=system`).
    System,
}

/// How much of the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    /// Nothing (encryption against passive eavesdropping only).
    None,
    /// The chain up to a trusted root.
    Chain,
    /// The chain and the host name.
    ChainAndName,
}

/// The TLS part of a connection string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// `sslmode`.
    pub mode: SslMode,
    /// `sslrootcert`, or the libpq default file when it exists.
    pub root: Option<RootSource>,
}

impl TlsSettings {
    /// Reads `sslmode` and `sslrootcert` from parsed connection parameters and checks that the
    /// combination can work in this build.
    pub fn from_params(params: &ConnParams) -> Result<TlsSettings, TlsError> {
        let mode = params.param("sslmode").map(SslMode::parse).transpose()?.unwrap_or(SslMode::Prefer);
        let root = match params.param("sslrootcert") {
            Some("system") => Some(RootSource::System),
            Some(path) if !path.is_empty() => Some(RootSource::File(PathBuf::from(path))),
            _ => default_root_file().map(RootSource::File),
        };
        let settings = TlsSettings { mode, root };
        if settings.verification() != Verification::None && settings.root.is_none() {
            return Err(TlsError::Config(format!(
                "sslmode={} verifies the server's certificate but no root certificate is configured: \
                 add sslrootcert=/path/to/ca.pem (or sslrootcert=system for the host's CA bundle)",
                mode.as_str()
            )));
        }
        if mode.requires_tls() && !cfg!(feature = "tls") {
            return Err(TlsError::Config(format!(
                "sslmode={} needs TLS, but this synchrod was built without the `tls` feature",
                mode.as_str()
            )));
        }
        Ok(settings)
    }

    /// Plaintext only.
    pub fn disabled() -> TlsSettings {
        TlsSettings { mode: SslMode::Disable, root: None }
    }

    /// What the server's certificate is checked for.
    pub fn verification(&self) -> Verification {
        match self.mode {
            SslMode::Disable | SslMode::Prefer => Verification::None,
            SslMode::Require if self.root.is_some() => Verification::Chain,
            SslMode::Require => Verification::None,
            SslMode::VerifyCa => Verification::Chain,
            SslMode::VerifyFull => Verification::ChainAndName,
        }
    }

    /// Whether a TLS handshake is attempted at all in this build.
    pub fn attempts_tls(&self) -> bool {
        self.mode != SslMode::Disable && cfg!(feature = "tls")
    }
}

/// libpq's default root certificate file, when it exists.
fn default_root_file() -> Option<PathBuf> {
    let home = std::env::var_os("HOME")?;
    let path = Path::new(&home).join(".postgresql").join("root.crt");
    path.is_file().then_some(path)
}

/// A TLS failure: bad settings, unreadable certificates, or a refused handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsError {
    /// The connection string's TLS settings are unusable.
    Config(String),
    /// Root certificates could not be loaded.
    Roots(String),
    /// The server does not offer TLS but the mode requires it.
    NotOffered,
    /// The handshake failed (certificate refused, protocol error).
    Handshake(String),
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Config(m) => f.write_str(m),
            TlsError::Roots(m) => write!(f, "loading root certificates: {m}"),
            TlsError::NotOffered => f.write_str("the server does not support TLS but sslmode requires it"),
            TlsError::Handshake(m) => write!(f, "TLS handshake failed: {m}"),
        }
    }
}

impl std::error::Error for TlsError {}

#[cfg(feature = "tls")]
pub use imp::{client_config, https_client_config, MakeRustlsConnect};

#[cfg(feature = "tls")]
mod imp {
    use std::fs;
    use std::future::Future;
    use std::io;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll};

    use postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::client::WebPkiServerVerifier;
    use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

    use super::{RootSource, TlsError, TlsSettings, Verification};

    /// Where distributions keep the system CA bundle.
    const SYSTEM_BUNDLES: &[&str] = &[
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
        "/etc/ssl/ca-bundle.pem",
        "/etc/ssl/cert.pem",
    ];

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn load_roots(source: &RootSource) -> Result<RootCertStore, TlsError> {
        let path = match source {
            RootSource::File(path) => path.clone(),
            RootSource::System => std::env::var_os("SSL_CERT_FILE")
                .map(Into::into)
                .or_else(|| SYSTEM_BUNDLES.iter().map(std::path::PathBuf::from).find(|p| p.is_file()))
                .ok_or_else(|| {
                    TlsError::Roots(format!(
                        "sslrootcert=system but no CA bundle was found (set SSL_CERT_FILE; looked in {})",
                        SYSTEM_BUNDLES.join(", ")
                    ))
                })?,
        };
        let pem = fs::read(&path).map_err(|e| TlsError::Roots(format!("{}: {e}", path.display())))?;
        let mut store = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| TlsError::Roots(format!("{}: {e}", path.display())))?;
            // Bundles carry the odd certificate webpki cannot parse; skip those like libpq does.
            let _ = store.add(cert);
        }
        if store.is_empty() {
            return Err(TlsError::Roots(format!("{}: no usable PEM certificate in the file", path.display())));
        }
        Ok(store)
    }

    /// The rustls client configuration for `settings` (roots loaded once, here).
    pub fn client_config(settings: &TlsSettings) -> Result<Arc<ClientConfig>, TlsError> {
        let provider = provider();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let verifier: Arc<dyn ServerCertVerifier> = match (settings.verification(), &settings.root) {
            (Verification::None, _) | (_, None) => Arc::new(AnyCertificate { provider }),
            (verification, Some(root)) => {
                let roots = Arc::new(load_roots(root)?);
                let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                    .build()
                    .map_err(|e| TlsError::Roots(e.to_string()))?;
                if verification == Verification::ChainAndName {
                    webpki
                } else {
                    Arc::new(ChainOnly { inner: webpki })
                }
            }
        };
        Ok(Arc::new(builder.dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth()))
    }

    /// A configuration for HTTPS clients (JWKS): system roots, full verification.
    pub fn https_client_config() -> Result<Arc<ClientConfig>, TlsError> {
        client_config(&TlsSettings { mode: super::SslMode::VerifyFull, root: Some(RootSource::System) })
    }

    /// `sslmode=prefer`/`require` without roots: any certificate, but the handshake's
    /// signatures are still checked so the session keys belong to the presented certificate.
    #[derive(Debug)]
    struct AnyCertificate {
        provider: Arc<CryptoProvider>,
    }

    impl ServerCertVerifier for AnyCertificate {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.provider.signature_verification_algorithms.supported_schemes()
        }
    }

    /// `sslmode=verify-ca`: the chain must lead to a trusted root; the name is not checked.
    #[derive(Debug)]
    struct ChainOnly {
        inner: Arc<WebPkiServerVerifier>,
    }

    impl ServerCertVerifier for ChainOnly {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            server_name: &ServerName<'_>,
            ocsp: &[u8],
            now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            match self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
                )) => Ok(ServerCertVerified::assertion()),
                other => other,
            }
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls12_signature(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.inner.supported_verify_schemes()
        }
    }

    /// The pool's TLS hook: hands each new `postgres` connection a rustls stream.
    #[derive(Clone, Debug)]
    pub struct MakeRustlsConnect {
        config: Arc<ClientConfig>,
    }

    impl MakeRustlsConnect {
        /// A connector using `config` (see [`client_config`]).
        pub fn new(config: Arc<ClientConfig>) -> MakeRustlsConnect {
            MakeRustlsConnect { config }
        }
    }

    impl<S> MakeTlsConnect<S> for MakeRustlsConnect
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        type Stream = RustlsStream<S>;
        type TlsConnect = RustlsConnect;
        type Error = io::Error;

        /// Called before connecting, also for Unix sockets (empty `domain`), which never reach
        /// the handshake: a bad name only fails a handshake that is actually attempted.
        fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnect, io::Error> {
            let name = ServerName::try_from(domain.to_string()).map_err(|e| format!("TLS server name {domain:?}: {e}"));
            Ok(RustlsConnect { config: self.config.clone(), name })
        }
    }

    /// One pending handshake.
    pub struct RustlsConnect {
        config: Arc<ClientConfig>,
        name: Result<ServerName<'static>, String>,
    }

    type Handshake<S> = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    impl<S> TlsConnect<S> for RustlsConnect
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        type Stream = RustlsStream<S>;
        type Error = io::Error;
        type Future = Handshake<S>;

        fn connect(self, stream: S) -> Handshake<S> {
            let connector = tokio_rustls::TlsConnector::from(self.config);
            Box::pin(async move {
                let name = self.name.map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                connector.connect(name, stream).await.map(RustlsStream)
            })
        }
    }

    /// A TLS session as the `postgres` crate sees it.
    pub struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

    impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
        fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }

    impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
        fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.0).poll_write(cx, buf)
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }

    impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
        fn channel_binding(&self) -> ChannelBinding {
            ChannelBinding::none()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::url;

    fn settings(url: &str) -> Result<TlsSettings, TlsError> {
        TlsSettings::from_params(&url::parse(url).unwrap())
    }

    #[test]
    fn modes_and_verification() {
        let s = settings("postgres://u@h/d?sslmode=disable").unwrap();
        assert_eq!((s.mode, s.verification()), (SslMode::Disable, Verification::None));
        let s = settings("postgres://u@h/d?sslmode=require").unwrap();
        assert_eq!(s.verification(), if s.root.is_some() { Verification::Chain } else { Verification::None });
        let s = settings("postgres://u@h/d?sslmode=require&sslrootcert=/x.pem").unwrap();
        assert_eq!(s.verification(), Verification::Chain);
        let s = settings("host=h sslmode=verify-full sslrootcert=system").unwrap();
        assert_eq!((s.root.clone(), s.verification()), (Some(RootSource::System), Verification::ChainAndName));
        let s = settings("postgres://u@h/d?sslmode=verify-ca&sslrootcert=/ca.pem").unwrap();
        assert_eq!(s.root, Some(RootSource::File("/ca.pem".into())));
    }

    #[test]
    fn bad_settings_say_how_to_fix_them() {
        let e = settings("postgres://u@h/d?sslmode=allow").unwrap_err().to_string();
        assert!(e.contains("verify-full"), "{e}");
        if default_root_file().is_none() {
            let e = settings("postgres://u@h/d?sslmode=verify-full").unwrap_err().to_string();
            assert!(e.contains("sslrootcert"), "{e}");
        }
    }
}
