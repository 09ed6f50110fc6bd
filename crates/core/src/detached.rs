//! [`run_detached`]: work that must finish even when its caller is dropped.

use std::future::Future;

/// Runs `work` in a task of its own and waits for it: a caller dropped
/// meanwhile (a client gone, a timeout around it) does not stop it halfway.
/// Without a runtime it runs inline. `None` when the task panicked or the
/// runtime shut down.
///
/// `work` is boxed on the inline path, so that the caller's future does not
/// hold it in place: a deep chain of async calls otherwise overflows the
/// compiler's query depth when it computes the caller's layout.
pub async fn run_detached<F>(work: F) -> Option<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => runtime.spawn(work).await.ok(),
        Err(_) => Some(Box::pin(work).await),
    }
}
