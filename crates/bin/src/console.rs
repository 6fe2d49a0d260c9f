//! The web console served by every node at `/console`.

use std::sync::Arc;

use axum::Router;

use crate::http::Node;

/// The console's routes.
pub fn router(node: Arc<Node>) -> Router {
    Router::new().with_state(node)
}
