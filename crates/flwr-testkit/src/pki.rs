//! A throw-away CA and server certificate, made with the `openssl` command.
//!
//! The steps are those of the `certificates/generate.sh` script in Flower's examples
//! (advanced-tensorflow, authentication), which Flower's TLS guide tells users to run:
//!
//! 1. `openssl genrsa -out ca.key 4096`
//! 2. `openssl req -new -x509 -key ca.key -sha256 -subj "/C=DE/ST=HH/O=CA, Inc." -days 365
//!    -out ca.crt`
//! 3. `openssl genrsa -out server.key 4096`
//! 4. `openssl req -new -key server.key -out server.csr -config certificate.conf`
//! 5. `openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial
//!    -out server.pem -days 365 -sha256 -extfile certificate.conf -extensions req_ext`
//!
//! `certificate.conf` gives the server `CN = localhost` and the subjectAltNames `localhost`,
//! `::1` and `127.0.0.1`. The result is what real deployments feed the SuperLink
//! (`--ssl-ca-certfile ca.crt --ssl-certfile server.pem --ssl-keyfile server.key`), the SuperNode
//! (`--root-certificates ca.crt`) and the `flwr` CLI (`root-certificates = "ca.crt"`), so it also
//! shows whether our TLS stack accepts what openssl produces (RSA keys in PKCS#8 PEM).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use flwr_runtime::child::combined;
use flwr_runtime::ChildError;

use crate::{io_error, CommandLine, Result};

/// Bound on each openssl step (4096-bit RSA keys take a few seconds on a busy machine).
const STEP_TIMEOUT: Duration = Duration::from_secs(120);

/// The openssl configuration of step 4 and 5, as in Flower's examples.
const CERTIFICATE_CONF: &str = "\
[req]
default_bits = 4096
prompt = no
default_md = sha256
req_extensions = req_ext
distinguished_name = dn

[dn]
C = DE
ST = HH
O = Flower
CN = localhost

[req_ext]
subjectAltName = @alt_names

[alt_names]
DNS.1 = localhost
IP.1 = ::1
IP.2 = 127.0.0.1
";

/// Paths of a generated CA and server certificate.
#[derive(Clone, Debug)]
pub struct Pki {
    /// `ca.crt`: the self-signed CA certificate (root certificate for clients).
    pub ca_cert: PathBuf,
    /// `ca.key`: the CA's RSA key.
    pub ca_key: PathBuf,
    /// `server.pem`: the server certificate, signed by the CA.
    pub server_cert: PathBuf,
    /// `server.key`: the server's RSA key.
    pub server_key: PathBuf,
}

impl Pki {
    /// Generates `ca.crt`, `ca.key`, `server.pem` and `server.key` (plus `certificate.conf`,
    /// `server.csr` and `ca.srl`) in `dir`, creating it if needed and overwriting old files.
    ///
    /// # Errors
    ///
    /// [`ChildError::Io`] if `openssl` is not on `PATH` or a file cannot be written,
    /// [`ChildError::Command`] if a step fails, [`ChildError::Timeout`] if one hangs.
    pub fn generate_with_openssl(dir: &Path) -> Result<Self> {
        fs::create_dir_all(dir).map_err(io_error(format!(
            "creating PKI directory {}",
            dir.display()
        )))?;
        let conf = dir.join("certificate.conf");
        fs::write(&conf, CERTIFICATE_CONF)
            .map_err(io_error(format!("writing {}", conf.display())))?;

        let steps: [&[&str]; 5] = [
            &["genrsa", "-out", "ca.key", "4096"],
            &[
                "req",
                "-new",
                "-x509",
                "-key",
                "ca.key",
                "-sha256",
                "-subj",
                "/C=DE/ST=HH/O=CA, Inc.",
                "-days",
                "365",
                "-out",
                "ca.crt",
            ],
            &["genrsa", "-out", "server.key", "4096"],
            &[
                "req",
                "-new",
                "-key",
                "server.key",
                "-out",
                "server.csr",
                "-config",
                "certificate.conf",
            ],
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.pem",
                "-days",
                "365",
                "-sha256",
                "-extfile",
                "certificate.conf",
                "-extensions",
                "req_ext",
            ],
        ];
        for args in steps {
            let command = CommandLine::new("openssl")
                .args(args.iter().copied())
                .current_dir(dir);
            let output = command.output(STEP_TIMEOUT)?;
            if !output.status.success() {
                return Err(ChildError::Command {
                    command: command.to_string(),
                    reason: format!("exited with {}", output.status),
                    output: combined(&output),
                }
                .into());
            }
        }

        let pki = Self {
            ca_cert: dir.join("ca.crt"),
            ca_key: dir.join("ca.key"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
        };
        for file in [&pki.ca_cert, &pki.ca_key, &pki.server_cert, &pki.server_key] {
            if !file.is_file() {
                return Err(ChildError::Io {
                    context: "generating the PKI with openssl".to_owned(),
                    source: std::io::Error::other(format!("{} was not created", file.display())),
                }
                .into());
            }
        }
        Ok(pki)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_certificate_is_signed_by_the_ca_and_names_loopback() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = Pki::generate_with_openssl(&dir.path().join("certs")).expect("openssl");

        let verify = CommandLine::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(&pki.ca_cert)
            .arg(&pki.server_cert)
            .output(STEP_TIMEOUT)
            .expect("verify runs");
        assert!(verify.status.success(), "{}", combined(&verify));

        let text = CommandLine::new("openssl")
            .args(["x509", "-noout", "-text", "-in"])
            .arg(&pki.server_cert)
            .output(STEP_TIMEOUT)
            .expect("x509 runs");
        let text = String::from_utf8_lossy(&text.stdout);
        assert!(
            text.contains("DNS:localhost, IP Address:0:0:0:0:0:0:0:1, IP Address:127.0.0.1"),
            "{text}"
        );
        assert!(text.contains("CN = localhost"), "{text}");
    }
}
