//! The tokio runtime behind every pipeline: one worker thread that drives timers and the
//! Redis store's connections. Futures of `await pipeline.execute(..)` are polled on the
//! event loop's thread, inside this runtime's context (see `driver`).

use std::sync::OnceLock;
use tokio::runtime::Runtime;

/// The runtime, made on first use.
pub(crate) fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("stormwall")
            .enable_all()
            .build()
            // Only fails when the OS refuses a thread: nothing to recover.
            .unwrap_or_else(|e| panic!("stormwall: cannot start its tokio runtime: {e}"))
    })
}
