//! Process signals: SIGTERM (systemd, kill) or SIGINT (Ctrl-C) start a graceful shutdown.
//!
//! The handlers are registered by [`install`], synchronously, before the daemon announces that it is
//! listening: a signal that arrives at any moment after that line starts a drain instead of killing the
//! process with the default action.

use std::future::Future;

/// Registers the handlers now; the returned future resolves on the first SIGTERM or SIGINT.
/// Must be called inside the tokio runtime.
pub fn install() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    #[cfg(unix)]
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    Ok(async move {
        #[cfg(unix)]
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT received: shutting down"),
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("Ctrl-C received: shutting down");
        }
    })
}
