//! Change data capture: `GET /db/changes?from=<lsn>` and `keel changes`.

use std::sync::Arc;

use axum::Router;

use crate::http::Node;

/// Flags of `keel changes`.
#[derive(Debug, Clone, clap::Args)]
pub struct ChangesArgs {
    /// HTTP URL of any cluster node.
    #[arg(default_value = "http://127.0.0.1:4001")]
    pub url: String,
}

/// The change stream's routes.
pub fn router(node: Arc<Node>) -> Router {
    Router::new().with_state(node)
}

/// Runs `keel changes`.
pub async fn run(args: ChangesArgs) -> anyhow::Result<()> {
    anyhow::bail!("keel changes is not built yet (asked for {})", args.url)
}
