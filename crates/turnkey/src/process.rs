//! Process plumbing shared by `serve` and `issuer`: the runtime, logging, signals, the bounded HTTP
//! listeners ([`HttpRun`]), the metrics registry and its `/metrics` listener.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use prometheus::{Encoder as _, Registry, TextEncoder};
use turnkey_relay::tls::CertResolver;

use crate::config::values::LogFormat;
use crate::config::Settings;
use crate::obs;

/// The control runtime: its worker and blocking threads run below the relay's shards
/// (`turnkey_relay::priority`; the shards are started from the thread calling `block_on`).
pub(crate) fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .on_thread_start(|| {
            if let Err(e) = turnkey_relay::priority::lower_this_thread() {
                tracing::debug!(error = %e, "cannot lower a control thread's priority");
            }
        })
        .enable_all()
        .build()
}

/// The registry with the process metrics ([`crate::proc_cpu`]) and `turnkey_build_info`.
pub(crate) fn new_registry() -> anyhow::Result<Registry> {
    let registry = Registry::new();
    registry.register(Box::new(crate::proc_cpu::ProcessMetrics::for_self()?))?;
    obs::register_build_info(&registry)?;
    Ok(registry)
}

pub(crate) async fn bind_metrics(s: &Settings) -> anyhow::Result<Option<tokio::net::TcpListener>> {
    match s.metrics.listen.0 {
        Some(addr) => {
            Ok(Some(tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot bind metrics {addr}"))?))
        }
        None => Ok(None),
    }
}

pub(crate) fn spawn_sighup(cert: Option<Arc<CertResolver>>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot install SIGHUP handler");
                return;
            }
        };
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                match &cert {
                    Some(c) => match c.reload() {
                        Ok(()) => tracing::info!(cert = %c.cert_path().display(), "SIGHUP: TLS certificate reloaded"),
                        Err(e) => {
                            tracing::warn!(error = %e, "SIGHUP: cannot reload the TLS certificate; keeping the old one")
                        }
                    },
                    None => tracing::info!("SIGHUP: nothing to reload"),
                }
            }
        });
    }
    #[cfg(not(unix))]
    let _ = cert;
}

/// How an HTTP listener (issuer or metrics) runs: its bounds and the shutdown signal.
pub(crate) struct HttpRun {
    limits: turnkey_issuer::HttpLimits,
    stop: tokio::sync::watch::Receiver<bool>,
}

impl HttpRun {
    pub(crate) fn new(limits: &turnkey_issuer::HttpLimits, stop: &tokio::sync::watch::Receiver<bool>) -> Self {
        Self { limits: limits.clone(), stop: stop.clone() }
    }

    /// Serves `router` on `listener` within the limits until the stop signal.
    pub(crate) async fn serve(self, listener: tokio::net::TcpListener, router: axum::Router) -> std::io::Result<()> {
        let mut stop = self.stop;
        turnkey_issuer::serve(listener, router, self.limits, async move {
            let _ = stop.wait_for(|v| *v).await;
        })
        .await
    }
}

pub(crate) async fn serve_metrics(listener: tokio::net::TcpListener, registry: Registry, http: HttpRun) {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let registry = registry.clone();
            async move {
                let mut buf = Vec::new();
                let enc = TextEncoder::new();
                if enc.encode(&registry.gather(), &mut buf).is_err() {
                    return (
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                        [("content-type", "text/plain")],
                        Vec::new(),
                    );
                }
                (axum::http::StatusCode::OK, [("content-type", prometheus::TEXT_FORMAT)], buf)
            }
        }),
    );
    let res = http.serve(listener, app).await;
    if let Err(e) = res {
        tracing::error!(error = %e, "metrics server failed");
    }
}

pub(crate) async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot install SIGTERM handler");
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    // Give the log line a moment; the drain itself is bounded by drain_grace.
    tokio::time::sleep(Duration::from_millis(1)).await;
}

pub(crate) fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("TURNKEY_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if format == LogFormat::Json {
        builder.json().init();
    } else {
        builder.init();
    }
}
