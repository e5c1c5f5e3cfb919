//! The scenarios: which fault the chaos proxy injects, and into which dependency.

use super::Timings;
use serde_json::json;
use stormwall_chaos::{ChaosError, ChaosServer, Stream, Toxic, ToxicKind};

/// A fault scenario of the demo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Healthy,
    PaymentLatency,
    InventoryDown,
    PaymentFailingHalf,
    NotificationDown,
    Recovery,
}

impl Scenario {
    pub const ALL: [Scenario; 6] = [
        Scenario::Healthy,
        Scenario::PaymentLatency,
        Scenario::InventoryDown,
        Scenario::PaymentFailingHalf,
        Scenario::NotificationDown,
        Scenario::Recovery,
    ];

    /// The name used on the command line and in the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Healthy => "healthy",
            Scenario::PaymentLatency => "payment-latency",
            Scenario::InventoryDown => "inventory-down",
            Scenario::PaymentFailingHalf => "payment-failing-50",
            Scenario::NotificationDown => "notification-down",
            Scenario::Recovery => "recovery",
        }
    }

    /// What a person reads.
    pub fn title(self) -> &'static str {
        match self {
            Scenario::Healthy => "healthy",
            Scenario::PaymentLatency => "payment +2 s latency",
            Scenario::InventoryDown => "inventory down after 1/4",
            Scenario::PaymentFailingHalf => "payment failing 50 %",
            Scenario::NotificationDown => "notification down",
            Scenario::Recovery => "payment down, then back",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The dependency under fault: 0 payment, 1 inventory, 2 notification.
    pub fn failing(self) -> Option<usize> {
        match self {
            Scenario::Healthy => None,
            Scenario::PaymentLatency | Scenario::PaymentFailingHalf | Scenario::Recovery => Some(0),
            Scenario::InventoryDown => Some(1),
            Scenario::NotificationDown => Some(2),
        }
    }

    /// Injects the fault (the proxies are named payment, inventory, notification); a
    /// fault that changes during the run comes with the task that changes it (abort it
    /// when the run ends). `at_payment` counts the orders that have reached payment, of
    /// `orders` in the run.
    pub async fn inject(
        self,
        chaos: &ChaosServer,
        t: &Timings,
        mut at_payment: tokio::sync::watch::Receiver<u64>,
        orders: u64,
    ) -> Result<Option<tokio::task::JoinHandle<()>>, ChaosError> {
        chaos.reset()?;
        let disabled = json!({ "enabled": false });
        match self {
            Scenario::Healthy => {}
            Scenario::PaymentLatency => {
                let ms = t.scaled(2.0).as_millis() as u64;
                chaos.add_toxic(
                    "payment",
                    Toxic::new(ToxicKind::Latency {
                        latency: ms,
                        jitter: 0,
                    }),
                )?;
            }
            Scenario::InventoryDown => {
                // Healthy for the first quarter of the orders (stale-on-error's cache fills
                // with the popular items), then down.
                let chaos = chaos.clone();
                return Ok(Some(tokio::spawn(async move {
                    let _ = at_payment.wait_for(|n| *n >= orders / 4).await;
                    let _ = chaos.update("inventory", &disabled).await;
                })));
            }
            Scenario::PaymentFailingHalf => {
                let mut reset = Toxic::new(ToxicKind::ResetPeer { timeout: 0 });
                reset.stream = Stream::Upstream;
                reset.toxicity = 0.5;
                chaos.add_toxic("payment", reset)?;
            }
            Scenario::NotificationDown => {
                chaos.update("notification", &disabled).await?;
            }
            Scenario::Recovery => {
                // Payment is down for (scaled) 10 s and until two orders in three have
                // reached it: on a slow machine the orders reach payment late, and a time
                // alone could end the outage before the flow saw it.
                chaos.update("payment", &disabled).await?;
                let (chaos, back) = (chaos.clone(), t.scaled(10.0));
                return Ok(Some(tokio::spawn(async move {
                    tokio::time::sleep(back).await;
                    let _ = at_payment.wait_for(|n| *n >= orders * 2 / 3).await;
                    let _ = chaos.update("payment", &json!({ "enabled": true })).await;
                })));
            }
        }
        Ok(None)
    }
}
