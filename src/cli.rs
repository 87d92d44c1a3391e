//! Command-line syntax: subcommands and flags only. No I/O here; `commands` carries them out.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// portcullis: a mutual-TLS reverse proxy and API gateway.
#[derive(Debug, Parser)]
#[command(name = "portcullis", version, about, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// `-c FILE`, shared by the commands that read gateway.yaml.
#[derive(Debug, Args)]
pub struct ConfigArg {
    /// The configuration file.
    #[arg(
        id = "config",
        short = 'c',
        long = "config",
        env = "PORTCULLIS_CONFIG",
        default_value = "gateway.yaml",
        value_name = "FILE"
    )]
    pub path: PathBuf,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve: terminate mTLS, authorize and forward, until SIGTERM or SIGINT (SIGHUP reloads).
    Run(ConfigArg),
    /// Validate the configuration and the files it names; exit 0 when valid, 1 otherwise.
    Check(ConfigArg),
    /// First run: create ./certs if missing, start an echo upstream and the gateway from
    /// ./gateway.yaml, and print curl commands to try.
    Demo(ConfigArg),
    /// Dry-run one request through the policy: identity, factors, principals, roles, the
    /// route and the rule that decided. No network I/O. Exit 0 when allowed, 3 when denied.
    Explain(ExplainArgs),
    /// Run the `tests:` cases of the configuration; exit 1 when any fails.
    Test(ConfigArg),
    /// API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Read a password on stdin and print its argon2id hash for a `basic` principal.
    Passwd,
    /// One-time codes (RFC 6238).
    #[command(subcommand)]
    Totp(TotpCommand),
    /// Who gains or loses access to each route between two configurations; exit 0 when
    /// nobody does, 3 when someone does, 1 on an error.
    Diff {
        /// The configuration before the change.
        #[arg(value_name = "OLD.yaml")]
        old: PathBuf,
        /// The configuration after it (default: -c, $PORTCULLIS_CONFIG, ./gateway.yaml).
        #[arg(value_name = "NEW.yaml")]
        new: Option<PathBuf>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Exit 0 when the admin listener's /readyz answers 200 (Docker HEALTHCHECK, a
    /// readiness probe); with --live, when /healthz does (a liveness probe).
    Health {
        /// Check that the process is alive (/healthz) rather than ready to serve (/readyz):
        /// a draining gateway is alive but not ready, and must not be restarted.
        #[arg(long)]
        live: bool,
        /// The admin listener's address.
        #[arg(
            long,
            env = "PORTCULLIS_ADMIN",
            default_value = "127.0.0.1:9901",
            value_name = "ADDR"
        )]
        admin: String,
    },
    /// Development PKI: a CA, server and client certificates, and a CRL.
    #[command(subcommand)]
    Certs(CertsCommand),
}

/// `portcullis explain` flags.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The configuration.
    #[command(flatten)]
    pub config: ConfigArg,
    /// Request method.
    #[arg(long, default_value = "GET")]
    pub method: String,
    /// Request path (with an optional query, which is ignored).
    #[arg(long)]
    pub path: String,
    /// Host header.
    #[arg(long)]
    pub host: Option<String>,
    /// PEM file of the client certificate presented.
    #[arg(long, value_name = "PEM")]
    pub cert: Option<PathBuf>,
    /// API key presented.
    #[arg(long = "api-key", value_name = "KEY")]
    pub api_key: Option<String>,
    /// Bearer token presented.
    #[arg(long, value_name = "JWT")]
    pub bearer: Option<String>,
    /// Basic credentials presented.
    #[arg(long, value_name = "USER:PASS")]
    pub basic: Option<String>,
    /// One-time code presented (checked against the secrets of the principals the other
    /// credentials identify, and not used up).
    #[arg(long, value_name = "CODE")]
    pub otp: Option<String>,
    /// Client address (default 127.0.0.1).
    #[arg(long = "source-ip", value_name = "IP")]
    pub source_ip: Option<std::net::IpAddr>,
}

/// `portcullis keys ...`.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Print a fresh random API key once (first line, alone), then the principals entry that
    /// holds only its SHA-256.
    New {
        /// The principal's name.
        #[arg(long)]
        id: String,
    },
}

/// `portcullis totp ...`.
#[derive(Debug, Subcommand)]
pub enum TotpCommand {
    /// Print a fresh base32 TOTP secret once (first line, alone), its otpauth:// URI, a QR
    /// code of it for the terminal, and the principals entry to paste. Compatible with pyotp
    /// and authenticator apps (SHA-1, 6 digits, 30 s).
    New {
        /// The principal's name (the account shown in the authenticator app).
        #[arg(long)]
        id: String,
        /// The issuer shown in the authenticator app.
        #[arg(long, default_value = "portcullis")]
        issuer: String,
    },
    /// Print the current code of a secret (SHA-1, 6 digits, 30 s), as an authenticator app
    /// shows it: for scripts and trying out a setup.
    Code {
        /// A file holding the base32 secret.
        #[arg(
            long,
            value_name = "FILE",
            conflicts_with = "secret",
            required_unless_present = "secret"
        )]
        secret_file: Option<PathBuf>,
        /// The base32 secret itself (visible in the process list: prefer --secret-file).
        #[arg(long)]
        secret: Option<String>,
    },
}

/// `portcullis certs ...`.
#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Create DIR/ca.crt+key, server.crt+key (localhost, 127.0.0.1, ::1 and --host names),
    /// clients/NAME.crt+key and an empty ca.crl. Refuses a folder that already has a CA.
    Init {
        /// Where to write.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// A client certificate to issue, as NAME or NAME:OU (repeatable).
        #[arg(long = "client", value_name = "NAME[:OU]")]
        clients: Vec<String>,
        /// An extra server name or IP address (repeatable).
        #[arg(long = "host", value_name = "NAME")]
        hosts: Vec<String>,
    },
    /// Issue DIR/clients/NAME.crt and NAME.key, signed by DIR/ca.key.
    Issue {
        /// Subject common name (also the file name).
        #[arg(long)]
        cn: String,
        /// Subject organization.
        #[arg(long)]
        o: Option<String>,
        /// Subject organizational unit.
        #[arg(long)]
        ou: Option<String>,
        /// A URI SAN such as a SPIFFE ID (repeatable).
        #[arg(long = "san-uri", value_name = "URI")]
        san_uri: Vec<String>,
        /// Validity in days.
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=3650))]
        days: u32,
        /// The PKI folder.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
    },
    /// Add a certificate to DIR/ca.crl and re-sign it.
    Revoke {
        /// The serial number in hex.
        #[arg(
            long,
            required_unless_present = "cert",
            conflicts_with = "cert",
            value_name = "HEX"
        )]
        serial: Option<String>,
        /// The certificate file to revoke.
        #[arg(long, value_name = "FILE")]
        cert: Option<PathBuf>,
        /// The PKI folder.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// Revoke even a certificate this CA did not issue, or a serial that matches no
        /// certificate in the folder (one whose file is gone).
        #[arg(long)]
        force: bool,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }
}
