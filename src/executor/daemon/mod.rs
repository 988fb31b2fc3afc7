//! HTTPS daemon: server, authentication, TLS, metrics, configuration.
