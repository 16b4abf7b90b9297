//! Helpers shared by the mock-server tests.
#![allow(dead_code, unreachable_pub)] // each test binary uses a subset
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_stream::wrappers::TcpListenerStream;

/// A FAB (ZIP) whose pyproject.toml names these components and carries `config` lines under
/// `[tool.flwr.app.config]`.
pub fn fab(serverapp: &str, clientapp: &str, config: &str) -> Vec<u8> {
    let pyproject = format!(
        "[project]\nname = \"mock\"\nversion = \"1.0.0\"\n\n[tool.flwr.app]\npublisher = \"test\"\n\n\
         [tool.flwr.app.components]\nserverapp = \"{serverapp}\"\nclientapp = \"{clientapp}\"\n\n\
         [tool.flwr.app.config]\n{config}\n"
    );
    flwr_core::FabBuilder::new(pyproject).build().expect("FAB")
}

/// Serves `router` on a free loopback port until the returned sender is dropped or fired.
pub async fn serve(router: tonic::transport::server::Router) -> (SocketAddr, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let (stop, stopped) = oneshot::channel::<()>();
    // Detached on purpose: the server lives until `stop` fires, not until a handle drops.
    #[allow(clippy::disallowed_methods)]
    tokio::spawn(async move {
        router
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = stopped.await;
            })
            .await
            .expect("server");
    });
    (address, stop)
}
