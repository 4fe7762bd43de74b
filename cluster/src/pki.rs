//! `flagstaff tls`: a CA and node certificates as files, for a cluster without a PKI of its
//! own (and for `cluster up --tls`). Layout of a directory: `ca.pem`, `ca-key.pem`, and
//! `NAME.pem` / `NAME-key.pem` per certificate; keys are written with mode 0600.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Subcommand;
use flagstaff_node::config::TlsFiles;
use flagstaff_node::tls::ca::{Authority, Issued};

use crate::local_cluster::write_private;

#[derive(Subcommand)]
pub enum TlsCmd {
    /// Make a new CA: DIR/ca.pem (give it to every node, SDK and client) and DIR/ca-key.pem
    /// (keep it safe: only `tls cert` needs it). Refuses to replace an existing CA.
    Ca {
        #[arg(long)]
        dir: PathBuf,
        /// The CA's common name.
        #[arg(long, default_value = "Flagstaff cluster CA")]
        name: String,
    },
    /// Issue a certificate signed by DIR's CA: DIR/NAME.pem and DIR/NAME-key.pem, for serving
    /// and for connecting to peers, valid for a year for each --host. Run it again to renew:
    /// a node reads changed files by itself.
    Cert {
        #[arg(long)]
        dir: PathBuf,
        /// The files' name and the certificate's common name, e.g. `node-1`.
        #[arg(long)]
        name: String,
        /// An IP address or DNS name clients and peers reach the node by (repeat it).
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
    },
}

/// The files of a directory.
pub struct Dir(pub PathBuf);

impl Dir {
    pub fn ca(&self) -> TlsFiles {
        self.files("ca")
    }

    pub fn files(&self, name: &str) -> TlsFiles {
        TlsFiles {
            cert: self.0.join(format!("{name}.pem")),
            key: self.0.join(format!("{name}-key.pem")),
        }
    }

    /// Makes a CA and writes it, unless one is there already.
    pub fn create_ca(&self, name: &str) -> anyhow::Result<Authority> {
        let files = self.ca();
        for path in [&files.cert, &files.key] {
            if path.exists() {
                bail!("{} exists: a CA is there already", path.display());
            }
        }
        std::fs::create_dir_all(&self.0)
            .with_context(|| format!("creating {}", self.0.display()))?;
        let ca = Authority::generate(name)?;
        write_private(&files.key, &ca.key_pem())?;
        write_file(&files.cert, &ca.cert_pem)?;
        Ok(ca)
    }

    pub fn load_ca(&self) -> anyhow::Result<Authority> {
        Authority::load(&self.ca()).context("reading the CA (make one with `flagstaff tls ca`)")
    }

    /// Writes a certificate and its key under `name`, each file replaced whole.
    pub fn write(&self, name: &str, issued: &Issued) -> anyhow::Result<TlsFiles> {
        if name.is_empty()
            || name == "ca"
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            || name.starts_with('.')
        {
            bail!("--name {name:?}: use letters, digits, '-', '_' and '.', and not \"ca\"");
        }
        let files = self.files(name);
        replace(&files.key, |tmp| write_private(tmp, &issued.key_pem))?;
        replace(&files.cert, |tmp| write_file(tmp, &issued.cert_pem))?;
        Ok(files)
    }
}

fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Writes `path` by writing a sibling and renaming it over, so a reader sees the old file or
/// the new one, never half of one.
fn replace(path: &Path, write: impl FnOnce(&Path) -> anyhow::Result<()>) -> anyhow::Result<()> {
    let tmp = path.with_extension("pem.tmp");
    let _ = std::fs::remove_file(&tmp);
    write(&tmp)?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

pub fn run(cmd: TlsCmd) -> anyhow::Result<()> {
    match cmd {
        TlsCmd::Ca { dir, name } => {
            let dir = Dir(dir);
            dir.create_ca(&name)?;
            let files = dir.ca();
            println!(
                "CA {name:?}: {} (trust it everywhere), {} (keep it safe)",
                files.cert.display(),
                files.key.display()
            );
        }
        TlsCmd::Cert { dir, name, hosts } => {
            let dir = Dir(dir);
            let issued = dir.load_ca()?.issue(&name, &hosts)?;
            let files = dir.write(&name, &issued)?;
            println!(
                "{} and {} for {}",
                files.cert.display(),
                files.key.display(),
                hosts.join(", ")
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::client::danger::ServerCertVerifier;
    use rustls::client::WebPkiServerVerifier;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::RootCertStore;

    use super::*;

    fn verifier(ca: &Path) -> Arc<WebPkiServerVerifier> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .unwrap()
    }

    #[test]
    fn a_ca_read_back_from_its_files_issues_certificates_that_verify_for_their_hosts_only() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = Dir(tmp.path().join("pki"));
        dir.create_ca("test CA").unwrap();
        let again = dir.create_ca("test CA").err().unwrap();
        assert!(again.to_string().contains("exists"), "{again:#}");

        let hosts = vec!["10.0.0.1".to_string(), "node-1.example".to_string()];
        let issued = dir.load_ca().unwrap().issue("node-1", &hosts).unwrap();
        let files = dir.write("node-1", &issued).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&files.key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        let leaf = CertificateDer::from_pem_file(&files.cert).unwrap();
        let check = verifier(&dir.ca().cert);
        let verify = |host: &'static str| {
            check.verify_server_cert(
                &leaf,
                &[],
                &ServerName::try_from(host).unwrap(),
                &[],
                UnixTime::now(),
            )
        };
        verify("10.0.0.1").unwrap();
        verify("node-1.example").unwrap();
        assert!(verify("10.0.0.2").is_err());

        // Another CA's certificate does not verify against this one.
        let other = Dir(tmp.path().join("other"));
        other.create_ca("other CA").unwrap();
        let foreign = other.load_ca().unwrap().issue("x", &hosts).unwrap();
        let foreign = CertificateDer::from_pem_slice(foreign.cert_pem.as_bytes()).unwrap();
        let host = ServerName::try_from("10.0.0.1").unwrap();
        assert!(check
            .verify_server_cert(&foreign, &[], &host, &[], UnixTime::now())
            .is_err());

        // A CA key that is not the CA certificate's is refused when read.
        std::fs::copy(other.ca().key, dir.ca().key).unwrap();
        assert!(dir.load_ca().is_err());
        for bad in ["", "ca", "../x", ".hidden", "a b"] {
            assert!(dir.write(bad, &issued).is_err(), "{bad:?} was accepted");
        }
    }
}
