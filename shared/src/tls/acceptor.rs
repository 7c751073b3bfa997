//! The TLS side of a listener: rustls with ring, TLS 1.2 and 1.3, and a certificate that is
//! swapped on SIGHUP. A swap changes what the *next* handshake is offered; connections already
//! established keep their session, so a renewal never drops a request in flight.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use poem::http::uri::Scheme;
use poem::listener::Acceptor;
use poem::web::{LocalAddr, RemoteAddr};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_util::sync::CancellationToken;

use super::TlsFiles;

/// How long a connection may take to complete its TLS handshake. A client that connects and
/// sends nothing (or trickles its hello) would otherwise hold a connection task, a socket and
/// its buffers for as long as it likes; past this it is dropped, unanswered. Ten seconds is
/// ample for a real handshake across the world and cheap for a listener to keep.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the TLS certificate {path}: {reason}")]
    Cert { path: String, reason: String },
    #[error("cannot read the TLS private key {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("the TLS certificate and key do not make a server configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The certificate a listener currently offers, shared by its acceptor and its reloader.
#[derive(Clone)]
pub struct Certificates {
    files: TlsFiles,
    // A std lock: it is held only to clone or replace an `Arc`, never across an await.
    current: Arc<RwLock<Arc<ServerConfig>>>,
}

impl Certificates {
    /// Reads the files once; a start-up with unreadable files fails here, naming them.
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let config = server_config(&files)?;
        Ok(Certificates {
            files,
            current: Arc::new(RwLock::new(Arc::new(config))),
        })
    }

    /// Reads the files again and offers them from the next handshake on. On failure the
    /// certificate in use stays, so a half-written renewal cannot take the listener down.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = Arc::new(server_config(&self.files)?);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = config;
        Ok(())
    }

    fn current(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reloads on every SIGHUP (`hangups`, registered by the caller before it serves) until
    /// `shutdown` fires.
    pub async fn reload_on_sighup(
        self,
        mut hangups: tokio::signal::unix::Signal,
        shutdown: CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                got = hangups.recv() => {
                    if got.is_none() {
                        return;
                    }
                    match self.reload() {
                        Ok(()) => tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded"),
                        Err(e) => tracing::error!(error = %e, "TLS certificate reload failed; the previous one stays in use"),
                    }
                }
            }
        }
    }
}

fn server_config(files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    let cert_err = |reason: String| TlsError::Cert {
        path: files.cert.display().to_string(),
        reason,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(cert_err("no PEM certificate in it".into()));
    }
    // The error names the file, never its contents.
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| TlsError::Key {
        path: files.key.display().to_string(),
        reason: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // TLS 1.2 is the floor the contract sets; rustls cannot speak anything older anyway, and
    // naming the versions keeps the floor explicit should its defaults ever change.
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Wraps a TCP acceptor: every connection is offered the current certificate.
pub struct TlsAcceptor<A> {
    inner: A,
    certificates: Certificates,
}

impl<A> TlsAcceptor<A> {
    pub fn new(inner: A, certificates: Certificates) -> Self {
        TlsAcceptor {
            inner,
            certificates,
        }
    }
}

impl<A: Acceptor> Acceptor for TlsAcceptor<A> {
    type Io = Handshake<A::Io>;

    fn local_addr(&self) -> Vec<LocalAddr> {
        self.inner.local_addr()
    }

    async fn accept(&mut self) -> io::Result<(Self::Io, LocalAddr, RemoteAddr, Scheme)> {
        let (io, local, remote, _) = self.inner.accept().await?;
        // The handshake runs on the connection's own task (on its first read or write), so a
        // slow or silent client never holds up the accept loop.
        // The clock starts now, at accept: a client that never sends its hello is dropped too.
        let accept = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            tokio_rustls::TlsAcceptor::from(self.certificates.current()).accept(io),
        );
        Ok((
            Handshake::Pending(Box::pin(accept)),
            local,
            remote,
            Scheme::HTTPS,
        ))
    }
}

/// A server-side TLS stream that completes its handshake on first use.
pub enum Handshake<IO> {
    // Boxed, both: a connection's state moves once, and the two are large and unequal.
    Pending(Pin<Box<tokio::time::Timeout<tokio_rustls::Accept<IO>>>>),
    Ready(Box<tokio_rustls::server::TlsStream<IO>>),
    Failed,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Handshake<IO> {
    /// Drives the handshake; `Ready(Ok(stream))` once it is done.
    fn poll_stream(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<&mut tokio_rustls::server::TlsStream<IO>>> {
        if let Handshake::Pending(accept) = self {
            match accept.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(Ok(stream))) => *self = Handshake::Ready(Box::new(stream)),
                Poll::Ready(Err(_elapsed)) => {
                    tracing::debug!(
                        timeout_secs = HANDSHAKE_TIMEOUT.as_secs(),
                        "TLS handshake timed out; dropping the connection"
                    );
                    *self = Handshake::Failed;
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the TLS handshake did not complete in time",
                    )));
                }
                Poll::Ready(Ok(Err(e))) => {
                    // A plaintext request or an old protocol version ends here, unanswered.
                    tracing::debug!(error = %e, "TLS handshake failed");
                    *self = Handshake::Failed;
                    return Poll::Ready(Err(e));
                }
            }
        }
        match self {
            Handshake::Ready(stream) => Poll::Ready(Ok(stream)),
            _ => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the TLS handshake failed",
            ))),
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for Handshake<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut().poll_stream(cx) {
            Poll::Ready(Ok(stream)) => Pin::new(stream).poll_read(cx, buf),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Handshake<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().poll_stream(cx) {
            Poll::Ready(Ok(stream)) => Pin::new(stream).poll_write(cx, buf),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().poll_stream(cx) {
            Poll::Ready(Ok(stream)) => Pin::new(stream).poll_flush(cx),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().poll_stream(cx) {
            Poll::Ready(Ok(stream)) => Pin::new(stream).poll_shutdown(cx),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::local_ca::LocalCa;

    fn temp_dir(tag: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("paystream-{tag}-{}", uuid::Uuid::new_v4()))
    }

    #[test]
    fn unreadable_files_are_named_and_a_bad_reload_keeps_the_certificate_in_use() {
        let dir = temp_dir("acceptor");
        let ca = LocalCa::generate(&dir).unwrap();
        let files = TlsFiles {
            cert: ca.cert.clone(),
            key: ca.key.clone(),
        };
        let certificates = Certificates::load(files.clone()).unwrap();
        let before = Arc::as_ptr(&certificates.current());

        // A renewal caught half-written: the key is garbage. The old configuration stays.
        std::fs::write(&ca.key, "not a key").unwrap();
        let err = certificates.reload().unwrap_err().to_string();
        assert!(
            err.contains("server-key.pem") && !err.contains("not a key"),
            "{err}"
        );
        assert_eq!(Arc::as_ptr(&certificates.current()), before);

        let missing = TlsFiles {
            cert: dir.join("absent.pem"),
            key: ca.key.clone(),
        };
        let err = Certificates::load(missing).err().unwrap().to_string();
        assert!(err.contains("absent.pem"), "{err}");
        std::fs::write(&ca.cert, "").unwrap();
        let err = Certificates::load(files).err().unwrap().to_string();
        assert!(err.contains("no PEM certificate"), "{err}");

        // The CA's own certificate with the server's key: they do not match.
        LocalCa::generate(&dir).unwrap();
        let mismatched = TlsFiles {
            cert: ca.ca_cert.clone(),
            key: ca.key.clone(),
        };
        assert!(Certificates::load(mismatched).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn outbound_trust_reads_a_bundle_and_names_a_bad_one() {
        let dir = temp_dir("client");
        let ca = LocalCa::generate(&dir).unwrap();
        assert_eq!(crate::tls::root_certificates(&ca.ca_cert).unwrap().len(), 1);
        assert!(crate::tls::client_builder(Some(&ca.ca_cert))
            .unwrap()
            .build()
            .is_ok());
        let err = crate::tls::root_certificates(&dir.join("absent.pem")).unwrap_err();
        assert_eq!(err.var, crate::tls::CA_CERT_VAR);
        std::fs::write(dir.join("empty.pem"), "").unwrap();
        assert!(crate::tls::root_certificates(&dir.join("empty.pem")).is_err());
        // Made once, then kept: `up --tls` hands out the same CA every time.
        let (again, made) = LocalCa::ensure(&dir).unwrap();
        assert!(!made);
        assert_eq!(
            std::fs::read(&again.ca_cert).unwrap(),
            std::fs::read(&ca.ca_cert).unwrap()
        );
        let fresh = temp_dir("fresh");
        let (_, made) = LocalCa::ensure(&fresh).unwrap();
        assert!(made);
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_dir_all(&fresh);
    }
}
