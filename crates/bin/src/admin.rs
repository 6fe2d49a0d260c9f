//! Operator controls: leadership transfer and membership changes, over HTTP and as
//! `keel admin` commands.

use std::sync::Arc;

use axum::Router;

use crate::http::Node;

/// Flags of `keel admin`.
#[derive(Debug, Clone, clap::Args)]
pub struct AdminArgs {}

/// Admin routes, merged into the client API router.
pub fn router(_node: Arc<Node>) -> Router {
    Router::new()
}

/// Runs `keel admin …`.
pub async fn run(_args: AdminArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
