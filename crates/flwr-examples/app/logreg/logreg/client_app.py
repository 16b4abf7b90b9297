"""Names the ClientApp; `flwr-rs-clientapp` (Rust) serves `logreg.client_app:app`."""

app = None
