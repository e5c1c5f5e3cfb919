//! How long the outbox keeps published events and the inbox keeps processed event ids.

use super::now_ms;
use crate::SagaError;
use std::time::Duration;
use stormwall_durable::storage::InvalidOption;

/// How long choreography's tables keep what they no longer need; older rows are purged
/// (by [`Relay::retention`](super::Relay::retention) for the outbox it reads, or by the
/// `purge` functions of [`SqliteOutbox`](super::SqliteOutbox),
/// [`SqliteInbox`](super::SqliteInbox) and `PostgresOutbox`).
///
/// The inbox deduplicates for at least `inbox`: an event delivered again within `inbox`
/// of being processed is skipped; one delivered again later — a consumer group down
/// longer than that, an event requeued by hand after it — is processed again. Keep
/// `inbox` longer than the longest redelivery you expect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionOptions {
    /// How long an outbox keeps an event after it was published. On a PostgreSQL outbox
    /// that consumer groups read, an event goes only once every group's checkpoint has
    /// passed it, never while it is a dead letter; one never published by a relay counts
    /// from its commit if no relay ever published from that outbox. Default 7 days; valid
    /// 1 s ..= 3650 days.
    pub outbox: Duration,
    /// How long an inbox keeps the id of an event it processed (its deduplication).
    /// Default 7 days; valid 1 s ..= 3650 days.
    pub inbox: Duration,
}

impl Default for RetentionOptions {
    fn default() -> Self {
        RetentionOptions {
            outbox: Duration::from_secs(7 * 24 * 3600),
            inbox: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// The longest retention: 3650 days.
const LONGEST: Duration = Duration::from_secs(3650 * 24 * 3600);

impl RetentionOptions {
    /// Checks each retention is within 1 s ..= 3650 days; the error names the field.
    pub fn validate(&self) -> Result<(), SagaError> {
        for (field, value) in [
            ("RetentionOptions::outbox", self.outbox),
            ("RetentionOptions::inbox", self.inbox),
        ] {
            if value < Duration::from_secs(1) || value > LONGEST {
                return Err(SagaError::Config(
                    InvalidOption::new(field, value, "between 1 s and 3650 days").to_string(),
                ));
            }
        }
        Ok(())
    }

    /// The outbox's cutoff now (ms since the epoch): rows published at or before go.
    pub(crate) fn outbox_cutoff(&self) -> Result<i64, SagaError> {
        self.validate()?;
        Ok(now_ms() - self.outbox.as_millis() as i64)
    }

    /// The inbox's cutoff now (ms since the epoch): ids processed at or before go.
    pub(crate) fn inbox_cutoff(&self) -> Result<i64, SagaError> {
        self.validate()?;
        Ok(now_ms() - self.inbox.as_millis() as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retentions_outside_their_range_are_refused_naming_the_field() {
        assert!(RetentionOptions::default().validate().is_ok());
        let zero = RetentionOptions {
            inbox: Duration::ZERO,
            ..Default::default()
        };
        let e = zero.validate().unwrap_err().to_string();
        assert!(
            e.contains(
                "RetentionOptions::inbox = 0ns is invalid: valid is between 1 s and 3650 days"
            ),
            "{e}"
        );
        let long = RetentionOptions {
            outbox: LONGEST + Duration::from_secs(1),
            ..Default::default()
        };
        let e = long.validate().unwrap_err().to_string();
        assert!(e.contains("RetentionOptions::outbox"), "{e}");
        assert!(long.outbox_cutoff().is_err());
    }
}
