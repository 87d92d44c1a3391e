//! Configuration reload: build a complete new snapshot aside, then swap it in atomically, or
//! keep serving the old one and say why.
//!
//! Requests keep the snapshot they started with; connections keep the TLS configuration of
//! their handshake. Upstream pools are rebuilt with the snapshot (idle keep-alive connections
//! of the old one close when its last request ends).

use std::path::{Path, PathBuf};
use std::sync::Arc;

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
            shared.install(state);
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
                .get_or_create(&label("failure"))
                .inc();
            tracing::error!(config = %path.display(), error = %e, "reload failed; still serving the previous configuration");
            Err(e)
        }
    }
}

/// Reloads on every SIGHUP. The handler is installed when this is called (so before the
/// gateway reports that it is serving), not when the future is first polled.
pub fn on_sighup(
    shared: Arc<Shared>,
    path: PathBuf,
) -> impl std::future::Future<Output = ()> + Send {
    #[cfg(unix)]
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    async move {
        #[cfg(unix)]
        if let Some(mut hup) = hup {
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP received");
                let _ = reload(&shared, &path);
            }
        }
        #[cfg(not(unix))]
        let _ = (shared, path);
    }
}
