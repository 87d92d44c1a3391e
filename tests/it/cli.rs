//! The built binary: config errors with positions, check, certs, run + SIGTERM, and demo.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_remove("PORTCULLIS_CONFIG")
        .output()
        .expect("run portcullis")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

const BASE: &str = "listen: \"127.0.0.1:0\"
tls:
  cert: certs/server.crt
  key: certs/server.key
  client_ca: certs/ca.crt
upstreams:
  legacy:
    url: http://127.0.0.1:9
";

fn pki_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let o = run(
        dir.path(),
        &[
            "certs",
            "init",
            "--client",
            "ops-alice:Platform",
            "--client",
            "reader-bob",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    dir
}

#[test]
fn check_reports_a_typo_with_file_line_column_and_key() {
    let dir = pki_dir();
    let yaml = format!(
        "{BASE}routes:\n  - name: admin\n    match: {{ prefix: /admin/ }}\n    upstream: legacy\n    alow: {{ roles: [admin] }}\n"
    );
    std::fs::write(dir.path().join("bad.yaml"), yaml).unwrap();
    let o = run(dir.path(), &["check", "-c", "bad.yaml"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("bad.yaml:13:5: routes[0].alow: unknown field `alow`"),
        "{err}"
    );
}

#[test]
fn check_reports_cipher_suites_that_are_unknown_repeated_or_leave_a_version_without_one() {
    let dir = pki_dir();
    let with = |suites: &str, extra: &str| {
        BASE.replace(
            "  client_ca: certs/ca.crt\n",
            &format!("  client_ca: certs/ca.crt\n  cipher_suites: {suites}\n{extra}"),
        )
    };
    let cases = [
        (
            with("[TLS_AES_128_GCM_SHA256, ECDHE-RSA-AES128-GCM-SHA256]", ""),
            "gateway.yaml:6:43: tls.cipher_suites: unknown cipher suite \"ECDHE-RSA-AES128-GCM-SHA256\" (known: TLS_AES_128_GCM_SHA256,",
        ),
        (
            with("[TLS_AES_128_GCM_SHA256, TLS_AES_128_GCM_SHA256]", ""),
            "gateway.yaml:6:43: tls.cipher_suites: TLS_AES_128_GCM_SHA256 is listed twice",
        ),
        (
            with("[TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256]", ""),
            "gateway.yaml:6:18: tls.cipher_suites: no TLS 1.3 suite",
        ),
        (
            with("[TLS_AES_256_GCM_SHA384]", ""),
            "gateway.yaml:6:18: tls.cipher_suites: no TLS 1.2 suite, so TLS 1.2 clients could not connect",
        ),
    ];
    for (yaml, expected) in cases {
        std::fs::write(dir.path().join("gateway.yaml"), &yaml).unwrap();
        let o = run(dir.path(), &["check"]);
        assert_eq!(o.status.code(), Some(1), "{yaml}");
        assert!(stderr(&o).contains(expected), "{}", stderr(&o));
    }
    // TLS 1.3 only needs no TLS 1.2 suite.
    let yaml = with("[TLS_AES_256_GCM_SHA384]", "  min_version: \"1.3\"\n")
        + "routes:\n  - name: all\n    match: { prefix: / }\n    upstream: legacy\n    allow: anyone\n";
    std::fs::write(dir.path().join("gateway.yaml"), &yaml).unwrap();
    let o = run(dir.path(), &["check"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn check_reports_every_semantic_problem_at_once() {
    let dir = pki_dir();
    let yaml = format!(
        "{BASE}    timeout: 5x\nroutes:\n  - name: admin\n    match: {{ prefix: /admin/ }}\n    upstream: legcy\n    allow: {{ roles: [admn], when: {{ source_ip: nowhere }} }}\n"
    );
    std::fs::write(dir.path().join("gateway.yaml"), yaml).unwrap();
    let o = run(dir.path(), &["check"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("gateway.yaml has 3 problems"), "{err}");
    assert!(
        err.contains("gateway.yaml:9:14: upstreams.legacy.timeout: expected a duration"),
        "{err}"
    );
    assert!(
        err.contains(
            "gateway.yaml:13:15: routes[0].upstream: unknown upstream \"legcy\" (known: legacy)"
        ),
        "{err}"
    );
    assert!(
        err.contains("gateway.yaml:14:48: routes[0].allow.when.source_ip: expected a CIDR"),
        "{err}"
    );
}

#[test]
fn check_accepts_the_repository_example_and_reports_missing_files_at_their_key() {
    let dir = pki_dir();
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/gateway.yaml")).unwrap();
    std::fs::write(dir.path().join("gateway.yaml"), &example).unwrap();
    let o = run(dir.path(), &["check", "-c", "gateway.yaml"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("gateway.yaml: ok (4 routes, 4 principals, 1 upstreams)"),
        "{}",
        stdout(&o)
    );

    std::fs::remove_file(dir.path().join("certs/ca.crl")).unwrap();
    let o = run(dir.path(), &["check", "-c", "gateway.yaml"]);
    assert_eq!(o.status.code(), Some(1));
    let line = example
        .lines()
        .position(|l| l.contains("crl: [certs/ca.crl]"))
        .unwrap()
        + 1;
    assert!(
        stderr(&o).contains(&format!("gateway.yaml:{line}:9: tls.crl[0]: ")),
        "{}",
        stderr(&o)
    );
    // A development credential file is reported at the key that names it, too.
    std::fs::remove_file(dir.path().join("certs/demo/alice.argon2")).unwrap();
    let o = run(dir.path(), &["check", "-c", "gateway.yaml"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("principals[3].basic.argon2_file: ")
            && stderr(&o).contains("alice.argon2"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn unset_environment_variables_are_errors_not_empty_strings() {
    let dir = pki_dir();
    let yaml = format!(
        "{BASE}routes:\n  - name: r\n    match: {{ prefix: / }}\n    upstream: legacy\n    allow: anyone\nadmin:\n  listen: \"${{PORTCULLIS_TEST_UNSET_VAR}}\"\n"
    );
    std::fs::write(dir.path().join("gateway.yaml"), yaml).unwrap();
    let o = run(dir.path(), &["check"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("gateway.yaml:15:11: admin.listen: environment variable PORTCULLIS_TEST_UNSET_VAR is not set"), "{}", stderr(&o));
    let o = Command::new(BIN)
        .arg("check")
        .current_dir(dir.path())
        .env("PORTCULLIS_TEST_UNSET_VAR", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn usage_errors_exit_2_and_every_command_has_help() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(run(dir.path(), &["frobnicate"]).status.code(), Some(2));
    assert_eq!(run(dir.path(), &["certs", "revoke"]).status.code(), Some(2));
    assert_eq!(run(dir.path(), &["diff"]).status.code(), Some(2));
    for cmd in [
        &["run", "--help"][..],
        &["check", "--help"],
        &["demo", "--help"],
        &["health", "--help"],
        &["diff", "--help"],
        &["certs", "init", "--help"],
        &["certs", "issue", "--help"],
        &["certs", "revoke", "--help"],
    ] {
        let o = run(dir.path(), cmd);
        assert!(
            o.status.success() && stdout(&o).contains("Usage"),
            "{cmd:?}"
        );
    }
    let o = run(dir.path(), &["check", "-c", "missing.yaml"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).starts_with("error: missing.yaml: cannot read the configuration"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn certs_issue_and_revoke_update_the_pki_without_overwriting() {
    let dir = pki_dir();
    let o = run(
        dir.path(),
        &[
            "certs",
            "issue",
            "--cn",
            "batch",
            "--o",
            "Acme",
            "--san-uri",
            "spiffe://acme/batch",
            "--days",
            "7",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(dir.path().join("certs/clients/batch.key").exists());
    let o = run(dir.path(), &["certs", "issue", "--cn", "batch"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "issuing the same name twice must fail"
    );
    let o = run(dir.path(), &["certs", "init"]);
    assert_eq!(o.status.code(), Some(1), "init must not overwrite a CA");
    let before = std::fs::read(dir.path().join("certs/ca.crl")).unwrap();
    let o = run(
        dir.path(),
        &["certs", "revoke", "--cert", "certs/clients/batch.crt"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("now lists 1 certificate"),
        "{}",
        stdout(&o)
    );
    assert_ne!(
        before,
        std::fs::read(dir.path().join("certs/ca.crl")).unwrap()
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("certs/clients/batch.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "private keys are not readable by others");
    }
}

#[test]
fn certs_revoke_refuses_a_foreign_certificate_or_an_unknown_serial_unless_forced() {
    let dir = pki_dir();
    let crl = || std::fs::read(dir.path().join("certs/ca.crl")).unwrap();
    let before = crl();
    // A certificate from another CA: same file layout, different issuer.
    let other = tempfile::tempdir().unwrap();
    let o = run(other.path(), &["certs", "init", "--client", "reader-bob"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let foreign = other.path().join("certs/clients/reader-bob.crt");
    let foreign = foreign.to_str().unwrap();
    let o = run(dir.path(), &["certs", "revoke", "--cert", foreign]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("reader-bob.crt was not issued by the CA in certs"),
        "{}",
        stderr(&o)
    );
    let o = run(dir.path(), &["certs", "revoke", "--serial", "0badc0de"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o)
            .contains("no certificate in certs (server.crt, clients/*.crt) has serial 0badc0de"),
        "{}",
        stderr(&o)
    );
    assert_eq!(before, crl(), "a refused revocation changes nothing");

    // A serial of a certificate the CA issued is found; --force publishes any serial.
    let bob = portcullis::pki::serial_of(&dir.path().join("certs/clients/reader-bob.crt")).unwrap();
    let o = run(
        dir.path(),
        &["certs", "revoke", "--serial", &hex::encode(&bob)],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(
        dir.path(),
        &["certs", "revoke", "--serial", "0badc0de", "--force"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("now lists 2 certificate"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn run_reloads_when_the_config_file_changes() {
    let dir = pki_dir();
    let yaml = format!(
        "{BASE}routes:\n  - name: r\n    match: {{ prefix: / }}\n    upstream: legacy\n    allow: authenticated\nlogging:\n  format: json\n"
    );
    std::fs::write(dir.path().join("gateway.yaml"), &yaml).unwrap();
    let (mut child, mut out, _) = serve(dir.path());
    std::fs::write(
        dir.path().join("gateway.yaml"),
        yaml.replace("name: r\n", "name: renamed\n"),
    )
    .unwrap();
    // read_until blocks on the pipe: should the reload never be logged, stop the gateway so
    // the pipe ends and the test fails instead of hanging.
    let (done, cancel) = std::sync::mpsc::channel::<()>();
    let pid = child.id();
    let guard = std::thread::spawn(move || {
        if cancel.recv_timeout(Duration::from_secs(15)).is_err() {
            sigterm(pid);
        }
    });
    let lines = read_until(&mut out, "configuration reloaded", Duration::from_secs(10));
    // SIGHUP still reloads at once.
    let hup = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let after_hup = read_until(&mut out, "configuration reloaded", Duration::from_secs(10));
    let _ = done.send(());
    let _ = guard.join();
    sigterm(child.id());
    let _ = child.wait();
    assert!(
        after_hup.iter().any(|l| l.contains("SIGHUP received"))
            && after_hup
                .iter()
                .any(|l| l.contains("configuration reloaded")),
        "{after_hup:#?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("configuration reloaded")),
        "no reload after the file changed: {lines:#?}"
    );
    // The reload says who gained and lost access, a JSON line per route.
    let changes: Vec<serde_json::Value> = lines
        .iter()
        .filter(|l| l.contains("access changed"))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(changes.len(), 2, "{lines:#?}");
    assert_eq!(changes[0]["route"], "r");
    assert_eq!(changes[0]["change"], "removed");
    assert_eq!(changes[0]["lost"], "(any authenticated caller)");
    assert_eq!(changes[1]["route"], "renamed");
    assert_eq!(changes[1]["change"], "added");
    assert_eq!(changes[1]["gained"], "(any authenticated caller)");
}

#[test]
fn diff_reports_who_gains_or_loses_access() {
    let dir = tempfile::tempdir().unwrap();
    let config = |admin_roles: &str| {
        format!(
            "{BASE}principals:\n  - {{ name: ops, cert: {{ cn: \"ops-*\" }}, roles: [admin, reader] }}\n  - {{ name: readers, cert: {{ cn: \"reader-*\" }}, roles: [reader] }}\nroutes:\n  - {{ name: admin, match: {{ prefix: /admin/ }}, upstream: legacy, allow: {{ roles: [{admin_roles}] }} }}\n  - {{ name: reader, match: {{ prefix: / }}, upstream: legacy, allow: {{ roles: [reader] }} }}\n"
        )
    };
    std::fs::write(dir.path().join("old.yaml"), config("admin")).unwrap();
    std::fs::write(dir.path().join("gateway.yaml"), config("admin, reader")).unwrap();
    // NEW defaults to ./gateway.yaml; no certificate file is needed to compare policies.
    let o = run(dir.path(), &["diff", "old.yaml"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert_eq!(stdout(&o), "route \"admin\": gained readers\n");
    let o = run(dir.path(), &["diff", "gateway.yaml", "old.yaml"]);
    assert_eq!(o.status.code(), Some(3));
    assert_eq!(stdout(&o), "route \"admin\": lost readers\n");
    let o = run(dir.path(), &["diff", "old.yaml", "old.yaml"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("nobody gains or loses access"),
        "{}",
        stdout(&o)
    );
    let o = run(dir.path(), &["diff", "missing.yaml"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("missing.yaml"), "{}", stderr(&o));
}

/// `portcullis run` in `dir` with stdout piped, once it says it is serving: the child, its
/// stdout, and the lines read so far.
fn serve(
    dir: &Path,
) -> (
    std::process::Child,
    BufReader<std::process::ChildStdout>,
    Vec<String>,
) {
    let mut child = Command::new(BIN)
        .args(["run"])
        .current_dir(dir)
        .env_remove("PORTCULLIS_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let lines = read_until(&mut out, "portcullis is serving", Duration::from_secs(20));
    assert!(
        lines.iter().any(|l| l.contains("portcullis is serving")),
        "{lines:?}"
    );
    (child, out, lines)
}

/// Reads child stdout lines until one contains `marker` or the deadline passes.
fn read_until(reader: &mut impl BufRead, marker: &str, deadline: Duration) -> Vec<String> {
    let start = Instant::now();
    let mut lines = Vec::new();
    let mut line = String::new();
    while start.elapsed() < deadline {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                lines.push(line.trim_end().to_owned());
                if line.contains(marker) {
                    break;
                }
            }
        }
    }
    lines
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn sigterm(pid: u32) {
    let ok = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -TERM failed");
}

#[test]
fn run_logs_json_access_lines_without_secrets_and_exits_0_on_sigterm() {
    let dir = pki_dir();
    let yaml = format!(
        "{BASE}principals:\n  - {{ name: readers, cert: {{ cn: \"reader-*\" }}, roles: [reader] }}\n\
         routes:\n  - name: r\n    match: {{ prefix: / }}\n    upstream: legacy\n    allow: {{ roles: [reader] }}\n\
         logging:\n  format: json\n"
    );
    std::fs::write(dir.path().join("gateway.yaml"), yaml).unwrap();
    let (mut child, out, lines) = serve(dir.path());
    let serving = lines
        .iter()
        .find(|l| l.contains("portcullis is serving"))
        .unwrap_or_else(|| panic!("{lines:?}"));
    let v: serde_json::Value =
        serde_json::from_str(serving).expect("JSON logs when stdout is not a terminal");
    assert_eq!(v["level"], "INFO");
    let listen = v["listen"].as_str().expect("listen field").to_owned();
    let port = listen.rsplit(':').next().unwrap();

    let o = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--cacert",
            "certs/ca.crt",
        ])
        .args([
            "--cert",
            "certs/clients/reader-bob.crt",
            "--key",
            "certs/clients/reader-bob.key",
        ])
        .args([
            "-H",
            "Authorization: Bearer sekrit-token",
            "-H",
            "Cookie: session=sekrit-cookie",
        ])
        .arg(format!(
            "https://localhost:{port}/report?api_key=sekrit-query"
        ))
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "401",
        "a bearer token without jwt: configured is refused: {}",
        stderr(&o)
    );

    sigterm(child.id());
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0));
    let rest: Vec<String> = out.lines().map_while(Result::ok).collect();
    let access = rest
        .iter()
        .find(|l| l.contains("portcullis::access"))
        .unwrap_or_else(|| panic!("no access log line in {rest:#?}"));
    let a: serde_json::Value = serde_json::from_str(access).unwrap();
    assert_eq!(a["status"], 401);
    assert_eq!(a["decision"], "bad_credential");
    assert_eq!(a["route"], "r", "the route the refused request was for");
    assert_eq!(a["path"], "/report");
    assert_eq!(a["identity"], "CN=reader-bob");
    for line in lines.iter().chain(&rest) {
        assert!(!line.contains("sekrit"), "a secret reached the log: {line}");
    }
}

#[test]
fn demo_prints_curl_commands_that_do_what_they_say() {
    if Command::new("curl").arg("--version").output().is_err() {
        panic!("curl is required for this test; the README's test command installs it");
    }
    let dir = tempfile::tempdir().unwrap();
    let (gw, admin, up) = (free_port(), free_port(), free_port());
    let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/gateway.yaml"))
        .unwrap()
        .replace("127.0.0.1:8443", &format!("127.0.0.1:{gw}"))
        .replace("127.0.0.1:9901", &format!("127.0.0.1:{admin}"))
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{up}"));
    std::fs::write(dir.path().join("gateway.yaml"), example).unwrap();
    // Pinned to one CPU, so the single-threaded runtime serves it (the JSON access log test
    // above runs on every CPU, with the multi-threaded one).
    let mut child = Command::new("taskset")
        .args(["-c", "0", BIN, "demo"])
        .current_dir(dir.path())
        .env_remove("PORTCULLIS_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let lines = read_until(&mut out, "Press Ctrl-C", Duration::from_secs(30));
    // Keep draining stdout so the demo never blocks on a full pipe.
    std::thread::spawn(move || for _ in out.lines() {});
    // Each command follows a comment that says what it gets: "# allowed (200): ...".
    let mut steps: Vec<(String, &String)> = Vec::new();
    let mut expect = None;
    for l in &lines {
        if let Some(comment) = l.strip_prefix("# ") {
            // The first comment line carries it; a second line may have parentheses too.
            if expect.is_none()
                && let Some(code) = comment.split_once('(').and_then(|(_, r)| r.split_once(')'))
            {
                expect = Some(code.0.to_owned());
            }
        } else if ["curl ", "for ", "TOKEN="].iter().any(|p| l.starts_with(p)) {
            steps.push((expect.take().expect("a comment before each command"), l));
        }
    }
    assert_eq!(
        steps
            .iter()
            .map(|(want, _)| want.as_str())
            .collect::<Vec<_>>(),
        ["200", "403", "200", "401", "200", "429", "200", "200"],
        "{lines:#?}"
    );
    let sh = |script: &str| {
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    // What the login line left in $TOKEN, for the command after it.
    let mut token = String::new();
    for (want, cmd) in &steps {
        let o = if cmd.starts_with("TOKEN=") {
            let o = sh(&format!("{cmd}\nprintf %s \"$TOKEN\""));
            token = String::from_utf8_lossy(&o.stdout).into_owned();
            assert_eq!(token.split('.').count(), 3, "{cmd}: a JWT, got {token:?}");
            continue;
        } else if cmd.starts_with("for ") {
            sh(cmd)
        } else {
            sh(&format!(
                "TOKEN='{token}'\n{cmd} -sS -o /dev/null -w '%{{http_code}}'"
            ))
        };
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        let last = out.split_whitespace().last().unwrap_or("");
        assert_eq!(
            last,
            want,
            "{cmd}\n{out}\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        if cmd.starts_with("for ") {
            assert!(
                out.starts_with("200 "),
                "the first of the loop is still allowed: {out}"
            );
        }
    }
    let curls: Vec<&String> = lines.iter().filter(|l| l.starts_with("curl ")).collect();
    // Plain HTTP to the TLS port gets the readable 400 the README shows.
    let plain = curls[3].replace("https://", "http://");
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!("{plain} -sS -w ' %{{http_code}}'"))
        .current_dir(dir.path())
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&o.stdout);
    assert!(
        answer.starts_with(r#"{"error":"plain HTTP request sent to the HTTPS port: use https://""#)
            && answer.ends_with(" 400"),
        "{plain}: {answer}"
    );
    assert!(dir.path().join("certs/clients/reader-bob.key").exists());
    let health = Command::new(BIN)
        .args(["health", "--admin", &format!("127.0.0.1:{admin}")])
        .output()
        .unwrap();
    assert!(health.status.success(), "health: {}", stderr(&health));
    sigterm(child.id());
    let _ = child.wait();
    let health = Command::new(BIN)
        .args(["health", "--admin", &format!("127.0.0.1:{admin}")])
        .output()
        .unwrap();
    assert_eq!(
        health.status.code(),
        Some(1),
        "health fails once the gateway is gone"
    );
}

fn run_stdin(dir: &Path, args: &[&str], input: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn keys_new_prints_the_key_alone_then_an_entry_with_only_its_hash() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(dir.path(), &["keys", "new", "--id", "reporting-job"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    let key = text.lines().next().unwrap();
    assert!(key.starts_with("pk_") && key.len() > 40, "{key}");
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(key.as_bytes()));
    assert!(text.contains(&format!("sha256: \"{digest}\"")), "{text}");
    assert!(text.contains("name: reporting-job"));
    assert_eq!(text.matches(key).count(), 1, "the key is printed once");
    let again = stdout(&run(dir.path(), &["keys", "new", "--id", "x"]));
    assert_ne!(again.lines().next(), Some(key), "keys are random");
}

#[test]
fn passwd_hashes_stdin_with_argon2id() {
    use argon2::PasswordVerifier;
    let dir = tempfile::tempdir().unwrap();
    let o = run_stdin(dir.path(), &["passwd"], "s3cret pass\n");
    assert!(o.status.success(), "{}", stderr(&o));
    let hash = stdout(&o).trim().to_owned();
    assert!(hash.starts_with("$argon2id$v=19$"), "{hash}");
    let parsed = argon2::PasswordHash::new(&hash).unwrap();
    assert!(
        argon2::Argon2::default()
            .verify_password(b"s3cret pass", &parsed)
            .is_ok()
    );
    assert!(
        !stdout(&o).contains("s3cret"),
        "the password is never echoed"
    );
    assert_eq!(
        run_stdin(dir.path(), &["passwd"], "\n").status.code(),
        Some(1),
        "an empty password is refused"
    );
}

const POLICY_WITH_TESTS: &str = r#"principals:
  - { name: ops, cert: { cn: "ops-*", ou: Platform }, roles: [admin, reader] }
  - { name: readers, cert: { cn: "reader-*" }, roles: [reader] }
  - { name: reporting-job, api_key: { sha256: "SHA" }, roles: [reports] }
routes:
  - name: admin
    match: { prefix: /admin/, methods: [GET, DELETE] }
    upstream: legacy
    allow: { roles: [admin], factors: [certificate], when: { source_ip: 10.0.0.0/8 } }
  - { name: reports, match: { prefix: /reports/ }, upstream: legacy, allow: { roles: [reports] } }
  - { name: reader, match: { prefix: / }, upstream: legacy, allow: { roles: [reader] } }
tests:
  - name: ops can delete users from the office network
    request: { method: DELETE, path: /admin/users/7, cert: { cn: ops-alice, ou: Platform }, source_ip: 10.1.2.3 }
    expect: allow
    route: admin
  - name: ops cannot from elsewhere
    request: { method: DELETE, path: /admin/users/7, cert: { cn: ops-alice, ou: Platform } }
    expect: "403"
  - name: the batch job reads reports
    request: { path: /reports/daily, api_key_id: reporting-job }
    expect: allow
  - name: nobody without credentials
    request: { path: /anything }
    expect: "401"
"#;

fn policy_dir(extra_test: &str) -> (tempfile::TempDir, String) {
    let dir = pki_dir();
    let o = run(dir.path(), &["keys", "new", "--id", "reporting-job"]);
    let key = stdout(&o).lines().next().unwrap().to_owned();
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(key.as_bytes()));
    let yaml = format!(
        "{BASE}{}{extra_test}",
        POLICY_WITH_TESTS.replace("SHA", &digest)
    );
    std::fs::write(dir.path().join("gateway.yaml"), yaml).unwrap();
    (dir, key)
}

#[test]
fn test_runs_the_cases_and_check_fails_on_a_failing_one() {
    let (dir, _) = policy_dir("");
    let o = run(dir.path(), &["test"]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("policy tests: 4 passed, 0 failed"),
        "{}",
        stdout(&o)
    );
    assert!(run(dir.path(), &["check"]).status.success());

    let (dir, _) = policy_dir(
        "  - name: readers may delete users\n    request: { method: DELETE, path: /admin/users/7, cert: { cn: reader-bob } }\n    expect: allow\n    route: admin\n",
    );
    for cmd in ["test", "check"] {
        let o = run(dir.path(), &[cmd]);
        assert_eq!(o.status.code(), Some(1), "{cmd}");
        let out = stdout(&o);
        assert!(
            out.contains("FAIL  readers may delete users: expected allow, got 403"),
            "{out}"
        );
        assert!(
            out.contains("rule:       allow.roles: the caller has none of them"),
            "{out}"
        );
    }
}

#[test]
fn explain_prints_the_decision_and_exits_0_3_or_1() {
    let (dir, key) = policy_dir("");
    let alice = ["--cert", "certs/clients/ops-alice.crt"];
    let o = run(
        dir.path(),
        &[
            &[
                "explain",
                "--method",
                "DELETE",
                "--path",
                "/admin/../admin/users/7",
                "--source-ip",
                "10.9.9.9",
            ][..],
            &alice,
        ]
        .concat(),
    );
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    for want in [
        "request:    DELETE /admin/users/7",
        "identity:   OU=Platform,CN=ops-alice",
        "factors:    certificate",
        "principals: ops",
        "roles:      admin, reader",
        "route:      admin (allow: { roles: [admin], factors: [certificate], when: 1 condition(s) })",
        "decision:   allow",
        "rate limit: none on this route",
    ] {
        assert!(out.contains(want), "missing {want:?} in\n{out}");
    }
    let o = run(
        dir.path(),
        &[
            &["explain", "--method", "DELETE", "--path", "/admin/users/7"][..],
            &alice,
        ]
        .concat(),
    );
    assert_eq!(o.status.code(), Some(3));
    assert!(
        stdout(&o).contains("rule:       allow.when.source_ip"),
        "{}",
        stdout(&o)
    );

    let o = run(
        dir.path(),
        &["explain", "--path", "/reports/x", "--api-key", &key],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(stdout(&o).contains("identity:   reporting-job"));
    let o = run(
        dir.path(),
        &["explain", "--path", "/reports/x", "--api-key", "pk_wrong"],
    );
    assert_eq!(o.status.code(), Some(3));
    assert!(
        stdout(&o).contains("credential: api_key refused: unknown API key"),
        "{}",
        stdout(&o)
    );
    assert!(!stdout(&o).contains("pk_wrong"), "the key is not echoed");
    let o = run(
        dir.path(),
        &["explain", "--path", "/x", "--cert", "nope.pem"],
    );
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn check_warns_about_unused_principals_shadowed_and_open_routes() {
    let dir = pki_dir();
    let yaml = format!(
        r#"{BASE}principals:
  - {{ name: readers, cert: {{ cn: "reader-*" }}, roles: [reader] }}
  - {{ name: auditors, cert: {{ cn: "audit-*" }}, roles: [audit] }}
routes:
  - {{ name: all, match: {{ prefix: / }}, upstream: legacy, allow: {{ roles: [reader] }} }}
  - {{ name: reports, match: {{ prefix: /reports/ }}, upstream: legacy, allow: {{ roles: [reader] }} }}
  - {{ name: lan, match: {{ prefix: /lan/, host: lan.example }}, upstream: legacy, allow: {{ when: {{ source_ip: 10.0.0.0/8 }} }} }}
  - {{ name: closed, match: {{ prefix: /closed/ }}, upstream: legacy, allow: {{ roles: [ghost] }} }}
"#
    );
    std::fs::write(dir.path().join("gateway.yaml"), yaml).unwrap();
    let o = run(dir.path(), &["check"]);
    assert!(
        o.status.success(),
        "warnings do not fail check: {}",
        stderr(&o)
    );
    let err = stderr(&o);
    for want in [
        "warning: principal \"auditors\" grants no role that a route allows",
        "warning: role \"audit\" is granted but no route allows it",
        "warning: route \"reports\" is never used: route \"all\" before it matches all of its requests",
        "warning: route \"lan\" is reachable without any credential",
        "warning: gateway.yaml:16:85: routes[3].allow.roles: no principal grants role \"ghost\", so nobody holds it",
    ] {
        assert!(err.contains(want), "missing {want:?} in\n{err}");
    }
}

#[test]
fn check_accepts_a_redis_store_without_reaching_it_and_rejects_bad_limits() {
    let dir = pki_dir();
    let good = format!(
        "{BASE}routes:\n  - {{ name: r, match: {{ prefix: / }}, upstream: legacy, allow: anyone, rate_limit: {{ key: ip, rate: 10/s, burst: 20 }} }}\nrate_limits:\n  store: redis://127.0.0.1:9/0\n  on_store_error: deny\n  default: {{ key: identity, rate: 100/s, burst: 200 }}\n"
    );
    std::fs::write(dir.path().join("gateway.yaml"), good).unwrap();
    let o = run(dir.path(), &["check"]);
    assert!(
        o.status.success(),
        "check builds the state without connecting: {}",
        stderr(&o)
    );

    let bad = format!(
        "{BASE}routes:\n  - {{ name: r, match: {{ prefix: / }}, upstream: legacy, allow: anyone, rate_limit: {{ key: tenant, rate: 10/fortnight }} }}\nrate_limits:\n  store: memcached://x\n"
    );
    std::fs::write(dir.path().join("gateway.yaml"), bad).unwrap();
    let err = stderr(&run(dir.path(), &["check"]));
    assert!(err.contains("gateway.yaml has 3 problems"), "{err}");
    assert!(err.contains("routes[0].rate_limit.key: expected one of identity, principal, ip, route, got \"tenant\""), "{err}");
    assert!(
        err.contains("routes[0].rate_limit.rate: expected a rate such as 100/s"),
        "{err}"
    );
    assert!(
        err.contains(
            "rate_limits.store: expected local, redis://host:port/db or rediss://host:port/db"
        ),
        "{err}"
    );
}

#[test]
fn totp_new_prints_the_secret_alone_then_the_uri_a_qr_code_and_the_entry() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(
        dir.path(),
        &["totp", "new", "--id", "alice", "--issuer", "Acme"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    let mut lines = text.lines();
    let secret = lines.next().unwrap();
    assert_eq!(
        crate::support::otp::base32_decode(secret).len(),
        20,
        "a 160-bit base32 secret alone on the first line: {secret}"
    );
    let uri = lines.next().unwrap();
    assert!(
        uri.starts_with("otpauth://totp/Acme:alice?") && uri.contains(&format!("secret={secret}")),
        "{uri}"
    );
    assert!(uri.contains("issuer=Acme"), "{uri}");
    assert!(
        text.lines().filter(|l| l.contains('█')).count() > 20,
        "a QR code drawn for the terminal"
    );
    assert!(
        text.contains("totp: { secret: \"${ALICE_TOTP}\" }"),
        "the entry takes the secret from the environment: {text}"
    );
    assert_eq!(
        text.matches(secret).count(),
        2,
        "the secret is on the first line and in the URI only"
    );
    let again = stdout(&run(dir.path(), &["totp", "new", "--id", "alice"]));
    assert_ne!(again.lines().next(), Some(secret), "secrets are random");
    assert!(
        again
            .lines()
            .nth(1)
            .unwrap()
            .starts_with("otpauth://totp/portcullis:alice?")
    );
    let bad = run(dir.path(), &["totp", "new", "--id", "a:b"]);
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("cannot make the enrollment URI"),
        "{}",
        stderr(&bad)
    );
}

#[test]
fn explain_and_policy_tests_understand_one_time_codes() {
    use crate::support::otp::{self, SECRET};
    let dir = pki_dir();
    let yaml = format!(
        r#"{BASE}principals:
  - {{ name: ops, cert: {{ cn: "ops-*" }}, totp: {{ secret: "{SECRET}" }}, roles: [admin] }}
  - {{ name: readers, cert: {{ cn: "reader-*" }}, roles: [admin] }}
routes:
  - {{ name: admin, match: {{ prefix: / }}, upstream: legacy, allow: {{ roles: [admin], factors: [certificate, totp] }} }}
tests:
  - name: ops with a code
    request: {{ path: /x, cert: {{ cn: ops-alice }}, totp: true }}
    expect: allow
  - name: ops without one
    request: {{ path: /x, cert: {{ cn: ops-alice }} }}
    expect: "403"
"#
    );
    let file = dir.path().join("gateway.yaml");
    std::fs::write(&file, &yaml).unwrap();
    let o = run(dir.path(), &["test"]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("2 passed, 0 failed"), "{}", stdout(&o));

    // A code for a caller whose principal has no secret is a 401 at the gateway: the test says so.
    std::fs::write(
        &file,
        format!("{yaml}  - name: bob with a code\n    request: {{ path: /x, cert: {{ cn: reader-bob }}, totp: true }}\n    expect: allow\n"),
    )
    .unwrap();
    let o = run(dir.path(), &["test"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("no principal the request identifies has a totp secret"),
        "{}",
        stdout(&o)
    );

    let alice = [
        "explain",
        "--path",
        "/x",
        "--cert",
        "certs/clients/ops-alice.crt",
    ];
    let code = otp::code(SECRET, otp::now());
    let o = run(dir.path(), &[&alice[..], &["--otp", &code]].concat());
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("factors:    certificate, totp"),
        "{}",
        stdout(&o)
    );
    // explain does not use the code up: the same code explains the same way again.
    let o = run(dir.path(), &[&alice[..], &["--otp", &code]].concat());
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let o = run(dir.path(), &[&alice[..], &["--otp", wrong]].concat());
    assert_eq!(o.status.code(), Some(3));
    assert!(
        stdout(&o).contains("credential: totp refused: wrong one-time code"),
        "{}",
        stdout(&o)
    );
    let o = run(dir.path(), &alice);
    assert_eq!(o.status.code(), Some(3), "no code: factors unmet");
}

#[test]
fn explain_and_policy_tests_understand_login_tokens() {
    let dir = pki_dir();
    let pem = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
        .unwrap()
        .serialize_pem();
    std::fs::write(dir.path().join("token.key"), &pem).unwrap();
    let hash = portcullis::auth::hash_password("pw").unwrap();
    let yaml = format!(
        r#"{BASE}tokens: {{ signing_key: token.key, login_factors: [basic] }}
principals:
  - {{ name: alice, basic: {{ user: alice, argon2: "{hash}" }}, roles: [admin] }}
routes:
  - {{ name: admin, match: {{ prefix: / }}, upstream: legacy, allow: {{ roles: [admin], factors: [basic] }} }}
tests:
  - name: a token from a password login
    request: {{ path: /x, token: {{ principals: [alice], amr: [basic] }} }}
    expect: allow
  - name: a token from another kind of login
    request: {{ path: /x, token: {{ principals: [alice], amr: [api_key] }} }}
    expect: "403"
"#
    );
    let file = dir.path().join("gateway.yaml");
    std::fs::write(&file, &yaml).unwrap();
    let o = run(dir.path(), &["test"]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("2 passed, 0 failed"), "{}", stdout(&o));

    // A token the gateway would issue, made with its key, explained as --bearer.
    let config = portcullis::config::load(&file).unwrap();
    let issuer =
        portcullis::auth::tokens::TokenIssuer::new(config.tokens.as_ref().unwrap(), pem.as_bytes())
            .unwrap();
    let (token, _) = issuer
        .issue("alice", &["alice".to_owned()], &["basic"], None)
        .unwrap();
    let o = run(dir.path(), &["explain", "--path", "/x", "--bearer", &token]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("token (this gateway's, for alice, login factors basic"),
        "{out}"
    );
    assert!(out.contains("factors:    basic, token"), "{out}");
    let o = run(
        dir.path(),
        &["explain", "--path", "/x", "--bearer", &format!("{token}x")],
    );
    assert_eq!(o.status.code(), Some(3));
    assert!(
        stdout(&o).contains("credential: token refused"),
        "{}",
        stdout(&o)
    );
}
