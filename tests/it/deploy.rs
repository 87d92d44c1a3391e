//! What deploy/ and the Dockerfile ship: the container configuration checks with a PKI from
//! `certs init`, an unreadable key is explained, and the compose and Kubernetes examples mount
//! what the gateway reads (and not the CA key), as the image's user, with the right probes.
//! No container engine runs here; scripts/dockerfile-build.sh replays the image build.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use crate::cli::BIN;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap()
}

fn portcullis(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env("APP_URL", "http://127.0.0.1:8080")
        .env_remove("PORTCULLIS_CONFIG")
        .output()
        .unwrap()
}

/// deploy/gateway.yaml with its certificate folder moved to `certs`.
fn container_config(dir: &Path) -> PathBuf {
    let certs = dir.join("certs");
    let text =
        read("deploy/gateway.yaml").replace("/etc/portcullis/certs", &certs.to_string_lossy());
    let path = dir.join("gateway.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

fn certs_init(dir: &Path, extra: &[&str]) {
    let mut args = vec!["certs", "init", "--dir", "certs"];
    args.extend_from_slice(extra);
    let o = portcullis(dir, &args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn the_container_config_checks_with_the_files_the_docs_mount() {
    let dir = tempfile::tempdir().unwrap();
    certs_init(dir.path(), &["--host", "legacy-app"]);
    // Only what the Secret carries: the CA key is not needed, and must not be.
    std::fs::remove_file(dir.path().join("certs/ca.key")).unwrap();
    let config = container_config(dir.path());
    let o = portcullis(dir.path(), &["check", "-c", &config.to_string_lossy()]);
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn an_unreadable_key_names_the_user_and_the_files_owner() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    certs_init(dir.path(), &[]);
    let config = container_config(dir.path());
    // The image's uid reads the folder and the config, but not a key left at 0600.
    for p in [dir.path(), &dir.path().join("certs")] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
    let o = if root {
        // Root reads every file: check as the image's user instead.
        Command::new("setpriv")
            .args(["--reuid=10001", "--regid=10001", "--clear-groups", BIN])
            .args(["check", "-c", &config.to_string_lossy()])
            .env("APP_URL", "http://127.0.0.1:8080")
            .output()
            .expect("setpriv (util-linux)")
    } else {
        // The owner itself cannot read a mode-0000 file.
        let key = dir.path().join("certs/server.key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o000)).unwrap();
        portcullis(dir.path(), &["check", "-c", &config.to_string_lossy()])
    };
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("tls.key: "), "{err}");
    assert!(
        err.contains("server.key: permission denied: portcullis runs as uid "),
        "{err}"
    );
    if root {
        assert!(
            err.contains("runs as uid 10001 gid 10001 and the file is owned by uid 0"),
            "{err}"
        );
        assert!(err.contains("with mode 0600"), "{err}");
    }
    assert_eq!(
        err.matches("permission denied").count(),
        1,
        "one error: {err}"
    );
}

/// The files deploy/gateway.yaml reads, by name.
fn files_the_gateway_reads() -> Vec<String> {
    let text = read("deploy/gateway.yaml");
    let mut names: Vec<String> = text
        .split(|c: char| c.is_whitespace() || "[]{},\"".contains(c))
        .filter_map(|w| w.strip_prefix("/etc/portcullis/certs/"))
        .map(str::to_owned)
        .collect();
    names.sort();
    names.dedup();
    names
}

fn image_user() -> i64 {
    let dockerfile = read("Dockerfile");
    let user = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("the Dockerfile sets USER");
    user.split(':').next().unwrap().trim().parse().unwrap()
}

#[test]
fn the_sidecar_runs_as_the_images_user_with_only_the_gateways_files() {
    let text = read("deploy/kubernetes/sidecar.yaml");
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
    let pod = &docs[0]["spec"]["template"]["spec"];
    let uid = image_user();
    for key in ["runAsUser", "runAsGroup", "fsGroup"] {
        assert_eq!(pod["securityContext"][key].as_i64(), Some(uid), "{key}");
    }
    let gw = pod["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "portcullis")
        .unwrap();
    let probe = |name: &str| -> Vec<String> {
        serde_json::from_value(gw[name]["exec"]["command"].clone()).unwrap()
    };
    assert_eq!(probe("readinessProbe"), ["portcullis", "health"]);
    assert_eq!(probe("livenessProbe"), ["portcullis", "health", "--live"]);

    // Folder mounts only: a subPath mount never sees a ConfigMap or Secret update.
    let mounts = gw["volumeMounts"].as_array().unwrap();
    assert!(
        mounts.iter().all(|m| m.get("subPath").is_none()),
        "{mounts:?}"
    );
    let mount_of = |volume: &str| {
        mounts.iter().find(|m| m["name"] == volume).unwrap()["mountPath"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let config_path = gw["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "PORTCULLIS_CONFIG")
        .expect("PORTCULLIS_CONFIG points into the config folder")["value"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(config_path, format!("{}/gateway.yaml", mount_of("config")));
    assert_eq!(mount_of("certs"), "/etc/portcullis/certs");

    // The Secret is group-readable (fsGroup) and holds what the gateway reads, nothing more.
    let secret = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "certs")
        .unwrap();
    // Kubernetes reads YAML 1.1, where a leading 0 is octal: 0440 is r--r-----.
    assert!(secret["secret"].get("defaultMode").is_some(), "{secret:?}");
    assert!(text.contains("defaultMode: 0440 }"), "{secret:?}");
    let mut from_files: Vec<String> = text
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("--from-file=certs/"))
        .map(str::to_owned)
        .collect();
    from_files.sort();
    assert_eq!(from_files, files_the_gateway_reads());
    assert!(
        !text.contains("--from-file=certs/ "),
        "the whole folder is never mounted"
    );
}

#[test]
fn compose_mounts_only_the_gateways_files_and_can_run_as_their_owner() {
    let text = read("deploy/docker-compose.yml");
    let compose: Value = serde_saphyr::from_str(&text).unwrap();
    let gw = &compose["services"]["portcullis"];
    assert!(
        gw["user"]
            .as_str()
            .unwrap()
            .starts_with("${PORTCULLIS_USER:-"),
        "{gw:?}"
    );
    let mut certs: Vec<String> = gw["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str()?.strip_prefix("../certs/"))
        .map(|v| v.split(':').next().unwrap().to_owned())
        .collect();
    certs.sort();
    assert_eq!(certs, files_the_gateway_reads());
    assert!(
        !text.contains("../certs:"),
        "the whole folder is never mounted"
    );
}

/// Every `portcullis_*` series name an alert rule or a dashboard panel queries.
fn queried_metrics() -> Vec<String> {
    let mut text = read("deploy/prometheus/alerts.yml");
    let dashboard: Value = serde_json::from_str(&read("deploy/grafana/portcullis.json")).unwrap();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            text.push_str(target["expr"].as_str().unwrap());
            text.push('\n');
        }
    }
    let mut names: Vec<String> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("portcullis_"))
        .map(str::to_owned)
        .collect();
    names.sort();
    names.dedup();
    names
}

#[tokio::test]
async fn alerts_and_the_dashboard_query_only_metrics_the_gateway_exports() {
    use crate::support::{FakeUpstream, TestGateway, TestPki, admin_get, gateway::yaml};
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    let stranger = pki.client("stranger");
    let up = FakeUpstream::start().await;
    let policy = "
principals:
  - { name: readers, cert: { cn: \"reader-*\" }, roles: [reader] }
routes:
  - { name: down, match: { prefix: /down/ }, upstream: dead, allow: { roles: [reader] } }
  - name: reader
    match: { prefix: / }
    upstream: app
    allow: { roles: [reader] }
    rate_limit: { rate: 1/min, burst: 1 }
limits:
  idle_timeout: 300ms
";
    // A second upstream where nothing listens.
    let text = yaml(&pki, up.addr, policy).replacen(
        "upstreams:\n",
        "upstreams:\n  dead:\n    url: http://127.0.0.1:1\n    connect_timeout: 1s\n",
        1,
    );
    let gw = TestGateway::start(&pki, &text).await;
    // A series for every family: answered, refused by policy and by the limiter, an upstream
    // error, a failed handshake, a closed idle connection, a reload.
    let c = gw.client(Some(&bob));
    assert_eq!(c.get("/x").await.unwrap().status, 200);
    assert_eq!(c.get("/x").await.unwrap().status, 429);
    assert_eq!(c.get("/down/x").await.unwrap().status, 502);
    assert_eq!(
        gw.client(Some(&stranger)).get("/x").await.unwrap().status,
        403
    );
    assert!(gw.client(None).get("/x").await.is_err());
    let idle = c.connect().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    drop(idle);
    portcullis::reload::reload(&gw.shared, &pki.file("gateway.yaml")).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let exported = admin_get(gw.admin.unwrap(), "/metrics").await;

    let queried = queried_metrics();
    assert!(queried.len() >= 10, "{queried:?}");
    for name in &queried {
        let present = exported.lines().any(|l| {
            l.strip_prefix(name.as_str())
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        });
        assert!(present, "{name} is queried but not exported:\n{exported}");
    }
}
