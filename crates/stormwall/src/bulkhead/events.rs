/// Why a bulkhead rejected a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BulkheadRejection {
    /// Every slot and every queue place was taken.
    Full,
    /// The call waited in the queue for `queue_timeout` without getting a slot.
    QueueTimeout,
}

/// Raised when a bulkhead rejected a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BulkheadRejected {
    /// Why.
    pub reason: BulkheadRejection,
    /// Slots taken at that moment.
    pub in_use: u32,
    /// Calls queued at that moment.
    pub queued: u32,
}
