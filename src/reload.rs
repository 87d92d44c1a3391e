//! Configuration reload: build a complete new snapshot aside, then swap it in atomically, or
//! keep serving the old one and say why. A reload runs on SIGHUP and whenever the config file
//! or a file it names changes on disk ([`watch`]).
//!
//! Requests keep the snapshot they started with; connections keep the TLS configuration of
//! their handshake. Upstream pools are rebuilt with the snapshot (idle keep-alive connections
//! of the old one close when its last request ends).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::gateway::{Shared, State};
use crate::metrics::ResultLabel;

/// Reloads `path` into `shared`: the new configuration must load, pass its own policy
/// `tests:`, and build (every file it names read and checked) before it is swapped in.
///
/// # Errors
/// The new configuration's problems; the old snapshot stays live.
pub fn reload(shared: &Shared, path: &Path) -> Result<(), crate::config::ConfigErrors> {
    // The new configuration's own policy tests must pass before it is served.
    let result = crate::config::load(path).and_then(|config| {
        crate::explain::enforce_tests(&config)?;
        State::build(config)
    });
    let label = |r: &str| ResultLabel {
        result: r.to_owned(),
    };
    match result {
        Ok(state) => {
            for w in state.config.warnings.iter().chain(&state.warnings) {
                tracing::warn!(warning = %w, "configuration warning");
            }
            let changes = crate::access::diff(&shared.state.load().config, &state.config);
            shared.install(state);
            crate::access::log(&changes);
            shared
                .metrics
                .config_reloads
                .get_or_create(&label("success"))
                .inc();
            tracing::info!(config = %path.display(), "configuration reloaded");
            Ok(())
        }
        Err(e) => {
            shared
                .metrics
                .config_reloads
                .get_or_create(&label("error"))
                .inc();
            tracing::error!(config = %path.display(), error = %e, "reload failed; still serving the previous configuration");
            Err(e)
        }
    }
}

/// How long the files must stay quiet after a change before they are read: a certificate
/// and its key written a few milliseconds apart (or Kubernetes swapping a whole Secret) load
/// as one new pair.
const QUIET: Duration = Duration::from_millis(200);
/// The longest a stream of changes can put a reload off.
const MAX_DELAY: Duration = Duration::from_secs(1);
/// How often a polling watcher looks, where inotify is not available.
const POLL: Duration = Duration::from_secs(1);

/// Reloads on SIGHUP, and when the config file or any file it names changes: written in place,
/// replaced by a rename, or swapped in by Kubernetes (whose mounted paths are symlinks through
/// a `..data` symlink that is replaced as a whole). Changes are debounced ([`QUIET`]), and a
/// reload happens only when some file's content differs from what was last loaded, so a touch
/// or an unrelated file in the same folder does nothing. An invalid new configuration keeps
/// the last good one; it is tried again when a file changes again.
///
/// The watches (and the SIGHUP handler) are installed when this is called, before the
/// gateway says it is serving.
pub fn watch(shared: Arc<Shared>, path: PathBuf) -> impl std::future::Future<Output = ()> + Send {
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let (tx, mut changes) = tokio::sync::mpsc::channel::<()>(64);
    let mut watcher = Watcher::new(tx);
    let mut files = watched_files(&path, Some(&shared.state.load().config));
    watcher.watch(&files);
    let mut loaded = fingerprint(&files);
    async move {
        loop {
            #[cfg(unix)]
            let hup_signal = async {
                match hup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let hup_signal = std::future::pending::<Option<()>>();
            tokio::select! {
                Some(()) = hup_signal => {
                    tracing::info!("SIGHUP received");
                }
                got = changes.recv() => {
                    if got.is_none() {
                        return;
                    }
                    settle(&mut changes).await;
                    if fingerprint(&files) == loaded {
                        continue;
                    }
                    tracing::info!(config = %path.display(), "a configuration file changed");
                }
            }
            let now = fingerprint(&files);
            let (shared2, path2) = (shared.clone(), path.clone());
            let _ = tokio::task::spawn_blocking(move || reload(&shared2, &path2)).await;
            // The new configuration may name other files; one that does not parse keeps the
            // files of the last good one, plus itself.
            let next = match crate::config::load(&path) {
                Ok(c) => watched_files(&path, Some(&c)),
                Err(_) => {
                    let mut keep = files.clone();
                    keep.extend(watched_files(&path, None));
                    keep.sort();
                    keep.dedup();
                    keep
                }
            };
            // Where the files resolve to may have moved (a symlink swap) even when their names
            // did not, so the watches are always brought up to date.
            watcher.watch(&next);
            if next != files {
                files = next;
                loaded = fingerprint(&files);
            } else {
                loaded = now;
            }
        }
    }
}

/// Waits until no change has arrived for [`QUIET`], or [`MAX_DELAY`] has passed.
async fn settle(changes: &mut tokio::sync::mpsc::Receiver<()>) {
    let give_up = tokio::time::Instant::now() + MAX_DELAY;
    loop {
        let quiet = tokio::time::Instant::now() + QUIET;
        tokio::select! {
            got = changes.recv() => if got.is_none() { return },
            () = tokio::time::sleep_until(quiet.min(give_up)) => return,
        }
        if tokio::time::Instant::now() >= give_up {
            return;
        }
    }
}

/// The config file and every file it reads, as written (relative paths resolved).
pub fn watched_files(path: &Path, config: Option<&crate::config::Config>) -> Vec<PathBuf> {
    let mut files = vec![path.to_path_buf()];
    if let Some(c) = config {
        let t = &c.tls;
        files.push(t.cert.path.clone());
        files.push(t.key.path.clone());
        files.extend(t.client_ca.iter().map(|f| f.path.clone()));
        files.extend(t.crls.iter().map(|f| f.path.clone()));
        let r = &c.rate_limits.redis_tls;
        files.extend(
            [&r.ca, &r.cert, &r.key]
                .into_iter()
                .flatten()
                .map(|f| f.path.clone()),
        );
        files.extend(c.principals.iter().filter_map(|p| match &p.totp {
            Some(crate::config::TotpSource::File(f)) => Some(f.path.clone()),
            _ => None,
        }));
        files.extend(c.tokens.iter().map(|t| t.signing_key.path.clone()));
        if let Some(jwt) = &c.jwt {
            if let Some(crate::config::JwksSource::File(f)) = &jwt.jwks {
                files.push(f.path.clone());
            }
            files.extend(jwt.jwks_ca.iter().map(|f| f.path.clone()));
        }
    }
    files.sort();
    files.dedup();
    files
}

/// What each file holds now (a hash of its bytes; `None` when unreadable), in order.
fn fingerprint(files: &[PathBuf]) -> Vec<Option<u64>> {
    use std::hash::{Hash, Hasher};
    files
        .iter()
        .map(|f| {
            std::fs::read(f).ok().map(|bytes| {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                bytes.hash(&mut h);
                h.finish()
            })
        })
        .collect()
}

/// A directory watcher: inotify where it works, polling where it does not (inotify
/// instances exhausted, or a file system without it).
struct Watcher {
    inner: Option<Box<dyn notify::Watcher + Send>>,
    dirs: Vec<PathBuf>,
}

impl Watcher {
    fn new(tx: tokio::sync::mpsc::Sender<()>) -> Watcher {
        let tell = move |event: notify::Result<notify::Event>| {
            // Any event in a watched folder is a hint; contents decide. A full channel
            // already holds a hint.
            if event.is_ok() {
                let _ = tx.try_send(());
            }
        };
        let inner: Option<Box<dyn notify::Watcher + Send>> = match notify::recommended_watcher(
            tell.clone(),
        ) {
            Ok(w) => Some(Box::new(w)),
            Err(e) => {
                tracing::warn!(error = %e, "no inotify watcher; polling the configuration files every second");
                let config = notify::Config::default().with_poll_interval(POLL);
                match notify::PollWatcher::new(tell, config) {
                    Ok(w) => Some(Box::new(w)),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot watch the configuration files; reload with SIGHUP");
                        None
                    }
                }
            }
        };
        Watcher {
            inner,
            dirs: Vec::new(),
        }
    }

    /// Watches the folders that hold `files`: both the folder of each path as written and
    /// the folder of the file it resolves to, so a replaced directory entry, a swapped
    /// symlink and an in-place write behind a symlink are all seen.
    fn watch(&mut self, files: &[PathBuf]) {
        let Some(w) = self.inner.as_mut() else { return };
        let mut dirs: Vec<PathBuf> = files
            .iter()
            .flat_map(|f| [Some(f.clone()), std::fs::canonicalize(f).ok()])
            .flatten()
            .filter_map(|f| f.parent().map(Path::to_path_buf))
            .map(|d| {
                if d.as_os_str().is_empty() {
                    PathBuf::from(".")
                } else {
                    d
                }
            })
            // One watch per folder, however it was spelled.
            .map(|d| std::fs::canonicalize(&d).unwrap_or(d))
            .collect();
        dirs.sort();
        dirs.dedup();
        for d in self.dirs.iter().filter(|d| !dirs.contains(d)) {
            let _ = w.unwatch(d);
        }
        for d in dirs.iter().filter(|d| !self.dirs.contains(d)) {
            if let Err(e) = w.watch(d, notify::RecursiveMode::NonRecursive) {
                tracing::warn!(dir = %d.display(), error = %e, "cannot watch this folder for changes");
            }
        }
        self.dirs = dirs;
    }
}
