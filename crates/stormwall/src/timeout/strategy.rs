use super::{TimeoutFuture, TimeoutOptions};
use crate::pipeline::{Context, Strategy};
use crate::telemetry::Telemetry;
use crate::Error;
use std::future::Future;

/// Cancels the operation (drops its future) once `timeout` has elapsed, and fails with
/// [`Error::Timeout`].
///
/// Placed outermost it is a total timeout; placed inside retry it is an attempt timeout.
/// The deadline is written into the [`Context`] so the operation and inner strategies can
/// read the remaining time; an inner timeout whose deadline falls after an outer one's
/// arms no timer of its own.
#[derive(Debug, Clone)]
pub struct Timeout {
    options: TimeoutOptions,
    /// Set once by `attach` when the pipeline is built.
    telemetry: Telemetry,
}

impl Timeout {
    /// A timeout strategy with `options`, validated.
    pub fn new(options: impl Into<TimeoutOptions>) -> Result<Self, crate::ConfigError> {
        let options = options.into();
        options.validate().map_err(|e| e.within("timeout"))?;
        Ok(Timeout {
            options,
            telemetry: Telemetry::default(),
        })
    }

    /// The options this strategy runs with.
    pub fn options(&self) -> &TimeoutOptions {
        &self.options
    }
}

crate::pipeline::attach_telemetry!([] Timeout);

impl<T, E> Strategy<T, E> for Timeout {
    #[inline]
    fn execute<F, Fut>(
        &self,
        mut ctx: Context,
        op: F,
    ) -> impl Future<Output = Result<T, Error<E>>> + Send
    where
        F: Fn(Context) -> Fut + Copy + Send + Sync,
        Fut: Future<Output = Result<T, Error<E>>> + Send,
        T: Send,
        E: Send,
    {
        let timeout = self.options.timeout;
        let now = crate::clock::poll_now();
        let deadline = crate::clock::deadline_after(now, timeout);
        let armed = ctx.tighten_deadline(deadline);
        TimeoutFuture::new(op(ctx), now, deadline, armed, timeout, &self.telemetry)
    }
}
