//! TLS: one crypto provider (ring) for every client in the process — awc, the search engine's
//! reqwest client and the OTLP exporter's. reqwest is built without a provider of its own, so
//! one must be installed before any of its clients is built; this is the first thing `main`
//! does (and what embedders of `app::run` get too).

/// Installs ring as the process's rustls provider; a no-op when one is installed already.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
