//! Network quality scores (PRODUCT.md §9) as plain values: a score from loss and round trip,
//! and what a participant's report holds.

use std::time::Duration;
use tessera_model::UserId;

/// Reports go out this often, from the last 2 s of measurements.
pub const QUALITY_INTERVAL: Duration = Duration::from_secs(2);
/// A direction with no packet for this long is disconnected (score 6).
pub const DISCONNECTED_AFTER: Duration = Duration::from_secs(3);

/// The score for loss `loss_pct` (%) and round trip `rtt_ms`: 1 best … 5 worst, 0 unknown (no
/// loss measured yet). A round trip not measured yet counts as none: loss alone decides.
pub fn score(loss_pct: Option<f64>, rtt_ms: Option<f64>) -> u8 {
    let Some(l) = loss_pct else { return 0 };
    let r = rtt_ms.unwrap_or(0.0);
    if l < 1.0 && r < 100.0 {
        1
    } else if l < 3.0 && r < 200.0 {
        2
    } else if l < 8.0 && r < 400.0 {
        3
    } else if l < 15.0 && r < 800.0 {
        4
    } else {
        5
    }
}

/// One participant's quality: a score per direction (0 unknown or not used, 1–5, 6
/// disconnected) and what it was made of.
#[derive(Debug, Clone, PartialEq)]
pub struct QualityReport {
    pub user: UserId,
    pub uplink: u8,
    pub downlink: u8,
    pub uplink_rtt: Option<f64>,
    pub uplink_loss: Option<f64>,
    pub downlink_rtt: Option<f64>,
    pub downlink_loss: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_follow_the_table() {
        assert_eq!(score(None, Some(10.0)), 0);
        assert_eq!(score(Some(0.0), Some(20.0)), 1);
        assert_eq!(score(Some(0.5), None), 1);
        assert_eq!(score(Some(0.5), Some(150.0)), 2);
        assert_eq!(score(Some(2.9), Some(50.0)), 2);
        assert_eq!(score(Some(5.0), Some(100.0)), 3);
        assert_eq!(score(Some(1.0), Some(399.0)), 3);
        assert_eq!(score(Some(8.0), Some(10.0)), 4);
        assert_eq!(score(Some(14.9), Some(799.0)), 4);
        assert_eq!(score(Some(15.0), Some(10.0)), 5);
        assert_eq!(score(Some(0.0), Some(800.0)), 5);
    }
}
