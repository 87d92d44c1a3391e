//! What each subcommand does. Errors are returned to `main`, which prints them once.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::cli::{CertsCommand, Command};
use crate::config::{self, Allow, Config};
use crate::gateway::State;
use crate::pki;

/// Certificates expiring sooner than this are warned about by `check`.
const EXPIRY_WARNING: i64 = 30 * 24 * 3600;

/// Runs a subcommand.
///
/// # Errors
/// Anything that makes the command fail; the caller prints it and exits 1.
pub fn execute(command: Command) -> anyhow::Result<ExitCode> {
    crate::tls::install_provider();
    match command {
        Command::Run(c) => {
            let config = config::load(&c.path)?;
            crate::observability::init(config.logging.format);
            runtime()?.block_on(crate::server::run(config))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check(c) => check(&c.path),
        Command::Demo(c) => {
            runtime()?.block_on(crate::demo::run(&c.path))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Health { admin } => health(&admin),
        Command::Certs(cmd) => certs(cmd),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// `check`: the whole configuration and every file it names, plus warnings.
fn check(path: &Path) -> anyhow::Result<ExitCode> {
    let config = config::load(path)?;
    let summary = (
        config.routes.len(),
        config.principals.len(),
        config.upstreams.len(),
    );
    let warnings = warnings(&config);
    let state = State::build(config)?;
    let mut expired = Vec::new();
    let mut soon = Vec::new();
    for (file, at) in &state.expiries.certificates {
        let left = crate::tls::seconds_until(*at);
        if left <= 0 {
            expired.push(format!(
                "{file}: certificate expired {} days ago",
                -left / 86400
            ));
        } else if left < EXPIRY_WARNING {
            soon.push(format!(
                "{file}: certificate expires in {} days",
                left / 86400
            ));
        }
    }
    for (file, at) in &state.expiries.crls {
        if crate::tls::seconds_until(*at) <= 0 {
            soon.push(format!(
                "{file}: CRL is past its next update; publish a fresh one"
            ));
        }
    }
    for w in warnings.iter().chain(&soon) {
        eprintln!("warning: {w}");
    }
    if !expired.is_empty() {
        bail!("{}", expired.join("\n  "));
    }
    println!(
        "{}: ok ({} routes, {} principals, {} upstreams)",
        path.display(),
        summary.0,
        summary.1,
        summary.2
    );
    Ok(ExitCode::SUCCESS)
}

/// Principals and roles that no route uses.
fn warnings(config: &Config) -> Vec<String> {
    let used: std::collections::BTreeSet<&str> = config
        .routes
        .iter()
        .filter_map(|r| match &r.allow {
            Allow::Roles(roles) => Some(roles.iter().map(String::as_str)),
            _ => None,
        })
        .flatten()
        .collect();
    let mut out = Vec::new();
    for p in &config.principals {
        if !p.roles.iter().any(|r| used.contains(r.as_str())) {
            out.push(format!(
                "principal {:?} grants no role that a route allows",
                p.name
            ));
        }
    }
    out
}

/// `health`: GET /readyz on the admin listener.
fn health(admin: &str) -> anyhow::Result<ExitCode> {
    use std::io::{Read, Write};
    use std::net::{TcpStream, ToSocketAddrs};

    let addr = admin
        .to_socket_addrs()
        .with_context(|| format!("--admin {admin:?} is not an address"))?
        .next()
        .with_context(|| format!("--admin {admin:?} resolves to nothing"))?;
    // A wildcard listen address is reached over loopback.
    let addr = if addr.ip().is_unspecified() {
        std::net::SocketAddr::new(
            if addr.is_ipv4() {
                [127, 0, 0, 1].into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            },
            addr.port(),
        )
    } else {
        addr
    };
    let timeout = Duration::from_secs(3);
    let mut s = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("cannot reach the admin listener at {addr}"))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "GET /readyz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf)?;
    let head = String::from_utf8_lossy(&buf[..n]);
    if head.starts_with("HTTP/1.1 200") {
        println!("ready");
        Ok(ExitCode::SUCCESS)
    } else {
        bail!("not ready: {}", head.lines().next().unwrap_or("no answer"))
    }
}

fn certs(cmd: CertsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        CertsCommand::Init {
            dir,
            clients,
            hosts,
        } => {
            let specs: Vec<_> = clients.iter().map(|c| pki::parse_client_arg(c)).collect();
            let files = pki::init(&dir, &specs, &hosts)?;
            for f in files {
                println!("wrote {}", f.display());
            }
        }
        CertsCommand::Issue {
            cn,
            o,
            ou,
            san_uri,
            days,
            dir,
        } => {
            let spec = pki::ClientSpec {
                cn,
                o,
                ou,
                san_uri,
                days,
                ..Default::default()
            };
            let (crt, key) = pki::issue(&dir, &spec)?;
            println!("wrote {}\nwrote {}", crt.display(), key.display());
        }
        CertsCommand::Revoke { serial, cert, dir } => {
            let serial = match (serial, cert) {
                (Some(s), _) => pki::parse_serial(&s)?,
                (None, Some(file)) => pki::serial_of(&file)?,
                (None, None) => bail!("give --serial HEX or --cert FILE"),
            };
            let n = pki::revoke(&dir, &serial)?;
            println!(
                "revoked serial {}; {} now lists {n} certificate(s). Running gateways pick it up on reload (SIGHUP)",
                hex::encode(&serial),
                dir.join("ca.crl").display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
