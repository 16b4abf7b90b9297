"""Names the ServerApp; `flwr-rs-serverapp` (Rust) serves `logreg.server_app:app`."""

app = None
