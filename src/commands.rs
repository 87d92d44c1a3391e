//! What each subcommand does. Errors are returned to `main`, which prints them once.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::cli::{CertsCommand, Command, KeysCommand, TotpCommand};
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
            let _log = crate::observability::init(config.logging.format);
            runtime()?.block_on(crate::server::run(config))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check(c) => check(&c.path),
        Command::Demo(c) => {
            runtime()?.block_on(crate::demo::run(&c.path))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Health { admin, live } => health(&admin, live),
        Command::Diff { old, new, config } => diff(&old, new.as_deref().unwrap_or(&config.path)),
        Command::Explain(a) => {
            let config = config::load(&a.config.path)?;
            let req = crate::explain::ExplainRequest {
                method: a.method,
                path: a.path,
                host: a.host,
                cert: a.cert,
                api_key: a.api_key,
                bearer: a.bearer,
                basic: a.basic,
                otp: a.otp,
                source_ip: a.source_ip,
            };
            let e = crate::explain::explain(&config, &req)?;
            print!("{}", e.text);
            Ok(if e.allowed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            })
        }
        Command::Test(c) => {
            let config = config::load(&c.path)?;
            if config.tests.is_empty() {
                bail!(
                    "{} has no tests: add cases under tests: (see docs/policy.md)",
                    c.path.display()
                );
            }
            let failed = report_tests(&config);
            if failed > 0 {
                bail!("{failed} of {} policy tests failed", config.tests.len());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys(KeysCommand::New { id }) => {
            print!("{}", crate::explain::new_key_text(&id)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Passwd => passwd(),
        Command::Totp(TotpCommand::Code {
            secret_file,
            secret,
        }) => {
            let text = match (secret_file, secret) {
                (Some(f), _) => std::fs::read_to_string(&f)
                    .map_err(|e| anyhow::anyhow!(crate::config::read_error(&f, &e)))?,
                (None, Some(s)) => s,
                (None, None) => anyhow::bail!("give --secret-file FILE or --secret BASE32"),
            };
            let bytes = crate::auth::totp::parse_secret(&text).map_err(anyhow::Error::msg)?;
            let settings = crate::config::TotpSettings {
                header: http::HeaderName::from_static("x-otp"),
                digits: 6,
                period: 30,
                skew: 0,
            };
            let t = crate::auth::totp::Totp::new(&bytes, &settings);
            println!("{}", t.code_at(crate::auth::totp::now_secs()));
            Ok(ExitCode::SUCCESS)
        }
        Command::Totp(TotpCommand::New { id, issuer }) => {
            print!(
                "{}",
                crate::auth::totp::enrollment_text(&id, &issuer).map_err(anyhow::Error::msg)?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Certs(cmd) => certs(cmd),
    }
}

/// The runtime `run` and `demo` serve on. With one CPU to run on (a sidecar's usual share,
/// or a process pinned with `taskset`), a single-threaded runtime: the multi-threaded one
/// would still run one worker, plus a thread for the accept loop, and pay for cross-thread
/// wake-ups and queues on every task. Measured side by side on one pinned core (4 rounds x
/// 4 s, plain template): 35.4k vs 31.0k requests per CPU-second, p99 1.55 vs 2.12 ms. With
/// more CPUs, tokio's work-stealing scheduler with a worker per CPU.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut builder = if cores == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    builder
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
    let mut warnings = config.warnings.clone();
    warnings.extend(self::warnings(&config));
    let state = State::build(config)?;
    warnings.extend(state.warnings.iter().cloned());
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
    let config = &state.config;
    if !config.tests.is_empty() {
        let failed = report_tests(config);
        if failed > 0 {
            bail!("{failed} of {} policy tests failed", config.tests.len());
        }
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

/// Prints each test's outcome; returns how many failed.
fn report_tests(config: &Config) -> usize {
    let outcomes = crate::explain::run_tests(config);
    let mut failed = 0;
    for o in &outcomes {
        match &o.failure {
            None => println!("ok    {}", o.name),
            Some(why) => {
                failed += 1;
                println!("FAIL  {}: {why}", o.name);
            }
        }
    }
    println!(
        "policy tests: {} passed, {failed} failed",
        outcomes.len() - failed
    );
    failed
}

/// Methods a route leaves out reach the next route that matches, as nginx's `limit_except`
/// users do not expect: `/admin/` restricted to GET and POST for admins lets PUT through to a
/// catch-all route for readers. Warned when that next route is broader than the restricted
/// one (a route for the same path that takes the other methods is deliberate).
fn method_fall_through(config: &Config) -> Vec<String> {
    const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
    let mut out = Vec::new();
    for (i, route) in config.routes.iter().enumerate() {
        let m = &route.matcher;
        let Some(allowed) = &m.methods else { continue };
        let (path, shown) = match (&m.exact, &m.prefix) {
            (Some(exact), _) => (exact.as_str(), exact.clone()),
            (None, Some(prefix)) => (
                prefix.as_str(),
                format!("{}/...", prefix.trim_end_matches('/')),
            ),
            (None, None) => ("/", "/...".to_owned()),
        };
        let left_out: Vec<&str> = METHODS
            .iter()
            .copied()
            .filter(|name| !allowed.iter().any(|a| a.as_str() == *name))
            .collect();
        for later in &config.routes[i + 1..] {
            let l = &later.matcher;
            let host = l.host.is_none()
                || l.host.as_ref().map(|h| h.pattern()) == m.host.as_ref().map(|h| h.pattern());
            let same_path = l.exact == m.exact && l.prefix == m.prefix;
            if !host || same_path || l.exact.is_some() || !l.matches_path(path) {
                continue;
            }
            let caught: Vec<&str> = left_out
                .iter()
                .copied()
                .filter(|name| {
                    l.methods
                        .as_ref()
                        .is_none_or(|ms| ms.iter().any(|x| x.as_str() == *name))
                })
                .collect();
            if !caught.is_empty() {
                let verb = if caught.len() == 1 { "falls" } else { "fall" };
                out.push(format!(
                    "{} {shown} {verb} through to route {:?}: route {:?} allows only {}; add a route for {shown} that decides the other methods, or drop its `methods`",
                    caught.join("/"),
                    later.name,
                    route.name,
                    allowed.iter().map(http::Method::as_str).collect::<Vec<_>>().join(", "),
                ));
                break;
            }
        }
    }
    out
}

/// `passwd`: one line from stdin (without its newline) → argon2id hash.
fn passwd() -> anyhow::Result<ExitCode> {
    use std::io::{BufRead, IsTerminal};
    if std::io::stdin().is_terminal() {
        eprintln!("password (input is shown; pipe it in to keep it off the screen):");
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("cannot read the password from stdin")?;
    let password = line.strip_suffix('\n').unwrap_or(&line);
    let password = password.strip_suffix('\r').unwrap_or(password);
    let hash = crate::auth::hash_password(password)
        .map_err(|e| anyhow::anyhow!("cannot hash the password: {e}"))?;
    println!("{hash}");
    Ok(ExitCode::SUCCESS)
}

/// What `check` warns about: principals and roles no route uses, routes shadowed by an
/// earlier route, and routes open to callers without any credential that do not say
/// `allow: anyone`.
fn warnings(config: &Config) -> Vec<String> {
    use crate::config::RouteSettings;
    let used: std::collections::BTreeSet<&str> = config
        .routes
        .iter()
        .filter_map(|r| match &r.allow {
            Allow::Rules(rules) => Some(rules.roles.iter().map(String::as_str)),
            _ => None,
        })
        .flatten()
        .collect();
    let any_authenticated = config.routes.iter().any(|r| match &r.allow {
        Allow::Authenticated => true,
        Allow::Rules(rules) => rules.roles.is_empty() && !rules.factors.is_empty(),
        Allow::Anyone => false,
    });
    let mut out = Vec::new();
    for p in &config.principals {
        if !p.roles.is_empty() && !p.roles.iter().any(|r| used.contains(r.as_str())) {
            out.push(format!(
                "principal {:?} grants no role that a route allows",
                p.name
            ));
        } else if p.roles.is_empty() && !any_authenticated {
            out.push(format!(
                "principal {:?} has no roles and no route allows authenticated callers",
                p.name
            ));
        }
    }
    let granted: std::collections::BTreeSet<&str> = config
        .principals
        .iter()
        .flat_map(|p| p.roles.iter().map(String::as_str))
        .collect();
    for role in &granted {
        if !used.contains(role) {
            out.push(format!("role {role:?} is granted but no route allows it"));
        }
    }
    // A route is shadowed when an earlier route matches every request it could match.
    let covers = |a: &RouteSettings, b: &RouteSettings| -> bool {
        let (am, bm) = (&a.matcher, &b.matcher);
        let host = am.host.is_none()
            || (bm.host.as_ref().map(|h| h.pattern()) == am.host.as_ref().map(|h| h.pattern()));
        let methods = match (&am.methods, &bm.methods) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(a), Some(b)) => b.iter().all(|m| a.contains(m)),
        };
        let path = match (&bm.exact, &bm.prefix) {
            (Some(exact), _) => am.matches_path(exact),
            (None, Some(prefix)) => am.exact.is_none() && am.matches_path(prefix),
            (None, None) => am.exact.is_none() && am.prefix.as_deref().is_none_or(|p| p == "/"),
        };
        host && methods && path
    };
    out.extend(method_fall_through(config));
    for (i, later) in config.routes.iter().enumerate() {
        if let Some(earlier) = config.routes[..i].iter().find(|e| covers(e, later)) {
            out.push(format!(
                "route {:?} is never used: route {:?} before it matches all of its requests",
                later.name, earlier.name
            ));
        }
        if let Allow::Rules(rules) = &later.allow
            && !rules.needs_credential()
        {
            out.push(format!(
                "route {:?} is reachable without any credential (only `when` conditions); say allow: anyone if that is intended, or add roles or factors",
                later.name
            ));
        }
    }
    out
}

/// `diff`: the access report between two configurations (the one a reload logs).
fn diff(old: &Path, new: &Path) -> anyhow::Result<ExitCode> {
    let before = config::load(old)?;
    let after = config::load(new)?;
    let changes = crate::access::diff(&before, &after);
    for c in &changes {
        println!("{c}");
    }
    if changes.is_empty() {
        println!(
            "{} -> {}: nobody gains or loses access",
            old.display(),
            new.display()
        );
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(ExitCode::from(3))
    }
}

/// `health`: GET /readyz (or /healthz with `--live`) on the admin listener.
fn health(admin: &str, live: bool) -> anyhow::Result<ExitCode> {
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
    let (path, state) = if live {
        ("/healthz", "alive")
    } else {
        ("/readyz", "ready")
    };
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf)?;
    let head = String::from_utf8_lossy(&buf[..n]);
    if head.starts_with("HTTP/1.1 200") {
        println!("{state}");
        Ok(ExitCode::SUCCESS)
    } else {
        bail!(
            "not {state}: {}",
            head.lines().next().unwrap_or("no answer")
        )
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
            // The development credentials the example gateway.yaml names (API key, password,
            // one-time-code secret, token signing key), beside the development PKI.
            crate::demo::credentials(&dir)?;
            println!(
                "wrote development credentials in {} and {}",
                dir.join("demo").display(),
                dir.join("token-signing.key").display()
            );
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
        CertsCommand::Revoke {
            serial,
            cert,
            dir,
            force,
        } => {
            let serial = match (serial, cert) {
                (Some(s), _) => {
                    let serial = pki::parse_serial(&s)?;
                    if !force {
                        pki::check_serial_issued(&dir, &serial)?;
                    }
                    serial
                }
                (None, Some(file)) => {
                    if !force {
                        pki::check_issued_by_ca(&dir, &file)?;
                    }
                    pki::serial_of(&file)?
                }
                (None, None) => bail!("give --serial HEX or --cert FILE"),
            };
            let n = pki::revoke(&dir, &serial)?;
            println!(
                "revoked serial {}; {} now lists {n} certificate(s). Running gateways reload it when the file changes",
                hex::encode(&serial),
                dir.join("ca.crl").display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
