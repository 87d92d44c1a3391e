//! The built binary: config errors with positions, check, certs, run + SIGTERM, and demo.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

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
fn check_reports_every_semantic_problem_at_once() {
    let dir = pki_dir();
    let yaml = format!(
        "{BASE}    timeout: 5x\nroutes:\n  - name: admin\n    match: {{ prefix: /admin/ }}\n    upstream: legcy\n    allow: {{ roles: [admn] }}\n"
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
    assert!(err.contains("gateway.yaml:14:22: routes[0].allow.roles: no principal grants role \"admn\" (none are defined)"), "{err}");
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
        stdout(&o).contains("gateway.yaml: ok (3 routes, 2 principals, 1 upstreams)"),
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
    for cmd in [
        &["run", "--help"][..],
        &["check", "--help"],
        &["demo", "--help"],
        &["health", "--help"],
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
    let mut child = Command::new(BIN)
        .args(["run"])
        .current_dir(dir.path())
        .env_remove("PORTCULLIS_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let lines = read_until(&mut out, "portcullis is serving", Duration::from_secs(20));
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
    assert_eq!(String::from_utf8_lossy(&o.stdout), "502", "{}", stderr(&o));

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
    assert_eq!(a["status"], 502);
    assert_eq!(a["path"], "/report");
    assert_eq!(a["route"], "r");
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
    let mut child = Command::new(BIN)
        .arg("demo")
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
    let curls: Vec<&String> = lines.iter().filter(|l| l.starts_with("curl ")).collect();
    assert_eq!(curls.len(), 4, "{lines:#?}");
    let expected = ["200", "403", "200", "refused"];
    for (cmd, want) in curls.iter().zip(expected) {
        let o = Command::new("sh")
            .arg("-c")
            .arg(format!("{cmd} -sS -o /dev/null -w '%{{http_code}}'"))
            .current_dir(dir.path())
            .output()
            .unwrap();
        let code = String::from_utf8_lossy(&o.stdout).into_owned();
        if want == "refused" {
            assert!(
                !o.status.success() && code == "000",
                "{cmd}: expected a refused handshake, got {code}"
            );
        } else {
            assert_eq!(code, want, "{cmd}\n{}", String::from_utf8_lossy(&o.stderr));
        }
    }
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
