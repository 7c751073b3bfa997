//! A certificate authority of one machine, for `paystream up --tls` and the tests: a CA and a
//! server certificate for `localhost`, `127.0.0.1` and `::1`, as PEM files under one folder.
//! Kept once made, so a browser or curl told to trust the CA keeps trusting it.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

#[derive(Debug, thiserror::Error)]
pub enum LocalCaError {
    #[error("cannot write {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot make the certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
}

/// Where the files are.
#[derive(Debug, Clone)]
pub struct LocalCa {
    /// The CA certificate: what clients trust (`curl --cacert`, `PAYSTREAM_CA_CERT`).
    pub ca_cert: PathBuf,
    /// The server's certificate (`PAYSTREAM_TLS_CERT`).
    pub cert: PathBuf,
    /// The server's private key (`PAYSTREAM_TLS_KEY`), readable by its owner only.
    pub key: PathBuf,
}

impl LocalCa {
    fn at(dir: &Path) -> Self {
        LocalCa {
            ca_cert: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server-key.pem"),
        }
    }

    /// The CA and certificate in `dir`, made there first if any file is missing.
    pub fn ensure(dir: &Path) -> Result<(Self, bool), LocalCaError> {
        let ca = Self::at(dir);
        if ca.ca_cert.exists() && ca.cert.exists() && ca.key.exists() {
            return Ok((ca, false));
        }
        Ok((Self::generate(dir)?, true))
    }

    /// A new CA and server certificate in `dir`, replacing any there.
    pub fn generate(dir: &Path) -> Result<Self, LocalCaError> {
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| LocalCaError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "paystream local development CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params.self_signed(&ca_key)?;

        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ])?;
        params
            .distinguished_name
            .push(DnType::CommonName, "paystream localhost");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = params.signed_by(&key, &ca_cert, &ca_key)?;

        let ca = Self::at(dir);
        std::fs::write(&ca.ca_cert, ca_cert.pem()).map_err(io(&ca.ca_cert))?;
        std::fs::write(&ca.cert, cert.pem()).map_err(io(&ca.cert))?;
        write_private(&ca.key, &key.serialize_pem()).map_err(io(&ca.key))?;
        // The CA's key is not kept: nothing else is ever signed with it, so a stolen copy of
        // the folder cannot mint certificates for other names.
        Ok(ca)
    }
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?
        .write_all(contents.as_bytes())
}
