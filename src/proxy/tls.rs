//! TLS on the proxy and admin listeners: a certificate chain and key from PEM files, swapped
//! in place on SIGHUP (or `POST /v1/reload`) so a renewed certificate needs no restart.
//!
//! HTTP/2 and HTTP/1.1 are offered by ALPN; the server behind it is the same as for plain
//! connections. Never prints a key: errors name the file and what was wrong with it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::crypto::{ring, CryptoProvider};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

/// Why a certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file could not be read, or is not PEM.
    #[error("reading the TLS certificate {path}: {error}")]
    Cert {
        /// `server.tls.cert` or `admin.tls.cert`.
        path: PathBuf,
        /// Why (never the file's content).
        error: PemError,
    },
    /// The certificate file holds no `CERTIFICATE` block.
    #[error("the TLS certificate {0} holds no certificate (a PEM \"CERTIFICATE\" block)")]
    NoCert(PathBuf),
    /// The key file could not be read, or holds no private key.
    #[error("reading the TLS key {path}: {error}")]
    Key {
        /// `server.tls.key` or `admin.tls.key`.
        path: PathBuf,
        /// Why (never the file's content).
        error: PemError,
    },
    /// The key is of a kind rustls cannot sign with, or is not the certificate's.
    #[error("the TLS key {path} cannot be used with {cert}: {error}")]
    Mismatch {
        /// `server.tls.key` or `admin.tls.key`.
        path: PathBuf,
        /// `server.tls.cert` or `admin.tls.cert`.
        cert: PathBuf,
        /// rustls' reason.
        error: tokio_rustls::rustls::Error,
    },
    /// The TLS configuration could not be built.
    #[error("setting up TLS: {0}")]
    Setup(tokio_rustls::rustls::Error),
}

/// The listener's TLS: an acceptor whose certificate can be replaced while it serves.
#[derive(Clone)]
pub struct Tls {
    acceptor: TlsAcceptor,
    current: Arc<Current>,
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// What was wrong with a PEM file, and nothing of what it holds. rustls' own PEM errors
/// quote the line they stumbled on (a BEGIN line run into the base64, a one-line file
/// whose breaks were lost): in a key file, that line is the key.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    /// The file could not be read.
    #[error("{0}")]
    Io(std::io::Error),
    /// A `-----BEGIN …-----` line is not on a line of its own.
    #[error("a BEGIN line is malformed (are the file's line breaks missing?)")]
    BadBegin,
    /// A section has no `-----END …-----` line.
    #[error("a section has no END line (are the file's line breaks missing?)")]
    NoEnd,
    /// A section's body is not base64.
    #[error("a section is not valid base64")]
    Base64,
    /// No section of the kind wanted.
    #[error("no PEM section of the kind wanted")]
    Nothing,
    /// Anything else rustls reports (its message is not shown: it may quote the file).
    #[error("not a usable PEM file")]
    Other,
}

impl From<rustls_pki_types::pem::Error> for PemError {
    fn from(e: rustls_pki_types::pem::Error) -> PemError {
        use rustls_pki_types::pem::Error;
        match e {
            Error::Io(e) => PemError::Io(e),
            Error::IllegalSectionStart { .. } => PemError::BadBegin,
            Error::MissingSectionEnd { .. } => PemError::NoEnd,
            Error::Base64Decode(_) => PemError::Base64,
            Error::NoItemsFound => PemError::Nothing,
            _ => PemError::Other,
        }
    }
}

/// The certificate every handshake is answered with.
#[derive(Debug)]
struct Current(ArcSwap<CertifiedKey>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

impl Tls {
    /// Loads the certificate chain and key; the key must be the certificate's.
    pub fn load(cert: &Path, key: &Path) -> Result<Tls, TlsError> {
        let provider = Arc::new(ring::default_provider());
        let certified = certified_key(cert, key, &provider)?;
        let current = Arc::new(Current(ArcSwap::from_pointee(certified)));
        let mut config = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Setup)?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&current) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            current,
            cert: cert.to_owned(),
            key: key.to_owned(),
            provider,
        })
    }

    /// Reads the files again and answers new handshakes with what they hold; on an error
    /// the certificate in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let certified = certified_key(&self.cert, &self.key, &self.provider)?;
        self.current.0.store(Arc::new(certified));
        Ok(())
    }

    /// The acceptor for new connections.
    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }
}

fn certified_key(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let cert_error = |error: rustls_pki_types::pem::Error| TlsError::Cert {
        path: cert.to_owned(),
        error: error.into(),
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(cert_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(cert_error)?;
    if chain.is_empty() {
        return Err(TlsError::NoCert(cert.to_owned()));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|error| TlsError::Key {
        path: key.to_owned(),
        error: error.into(),
    })?;
    let mismatch = |error| TlsError::Mismatch {
        path: key.to_owned(),
        cert: cert.to_owned(),
        error,
    };
    CertifiedKey::from_der(chain, private, provider).map_err(mismatch)
}
