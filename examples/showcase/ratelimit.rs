//! Routes of this capability (added when its crate lands).

use axum::Router;

use crate::Backend;

/// Lines of the index page for these routes.
pub const INDEX: &str = "";

/// The routes, with their layers.
pub fn routes(_backend: &Backend) -> Router {
    Router::new()
}
