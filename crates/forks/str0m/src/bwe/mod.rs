//! Google Congestion Control (GoogCC) Bandwidth Estimation based on TWCC feedback.
//!
//! This implementation is ported from libWebRTC's GoogCC and goes beyond the simplified
//! IETF draft (<https://datatracker.ietf.org/doc/html/draft-ietf-rmcat-gcc-02>) to include
//! WebRTC's production features:
//!
//! - Delay-based control (trendline estimator with AIMD rate control)
//! - Loss-based control (with inherent loss rate estimation)
//! - Probe controller with state machine and multi-stage probing strategy
//! - ALR (Application Limited Region) detection and periodic probing
//! - Link capacity estimation from ALR probes
//!
//! The probe controller in particular closely matches WebRTC's `ProbeController` behavior
//! and default constants, enabling compatible bandwidth discovery with WebRTC endpoints.

use std::cmp::Ordering;
use std::fmt;
use std::time::{Duration, Instant};

use crate::Reason;
use crate::rtp_::{Bitrate, DataSize, TwccClusterId, TwccSendRecord, TwccSeq};
use crate::util::Soonest;

mod acked_bitrate_estimator;
mod alr_detector;
pub(crate) mod api;
mod delay;
mod link_capacity_estimator;
mod loss_controller;
mod macros;
mod probe;
mod smoother;
mod time;

use acked_bitrate_estimator::AckedBitrateEstimator;
use alr_detector::AlrDetector;
use delay::DelayController;
use link_capacity_estimator::LinkCapacityEstimator;
use loss_controller::{LossController, LossControllerState};
use macros::log_loss;
use smoother::EstimateSmoother;

pub(crate) use macros::{log_pacer_media_debt, log_pacer_padding_debt};
#[cfg(test)]
pub(crate) use probe::ProbeKind;
pub(crate) use probe::{BandwidthLimitedCause, ProbeEstimator};
pub(crate) use probe::{ProbeClusterState, ProbeControl};

#[cfg(feature = "_internal_test_exports")]
pub use probe::ProbeClusterConfig;
#[cfg(not(feature = "_internal_test_exports"))]
pub(crate) use probe::ProbeClusterConfig;

const INITIAL_BITRATE_WINDOW: Duration = Duration::from_millis(500);
const BITRATE_WINDOW: Duration = Duration::from_millis(150);
const STARTUP_PHASE: Duration = Duration::from_secs(2);

pub struct Bwe {
    bwe: SendSideBandwidthEstimator,
    desired_bitrate: Bitrate,
    minimum_bitrate: Bitrate,
    smoother: EstimateSmoother,
    // Tessera fork: `set_pacing_floor`, `set_pacing_ceiling`.
    pacing_floor: Bitrate,
    pacing_ceiling: Option<Bitrate>,
}

impl Bwe {
    pub fn new(initial: Bitrate) -> Self {
        let send_side_bwe = SendSideBandwidthEstimator::new(initial);
        Bwe {
            bwe: send_side_bwe,
            desired_bitrate: Bitrate::ZERO,
            minimum_bitrate: Bitrate::ZERO,
            smoother: EstimateSmoother::new(),
            pacing_floor: Bitrate::ZERO,
            pacing_ceiling: None,
        }
    }

    pub fn handle_timeout(&mut self, now: Instant, do_probe: bool) -> Option<ProbeClusterConfig> {
        let result = self.bwe.handle_timeout(self.desired_bitrate, do_probe, now);
        if let Some(estimate) = self.bwe.last_estimate() {
            self.smoother.record(now, estimate);
        }
        result
    }

    pub fn start_probe(&mut self, config: ProbeClusterConfig, now: Instant) -> bool {
        self.bwe.start_probe(config, now)
    }

    pub fn end_probe(&mut self, now: Instant, cluster_id: TwccClusterId) {
        self.bwe.end_probe(now, cluster_id);
    }

    pub fn reset(&mut self, init_bitrate: Bitrate) {
        self.bwe.reset(init_bitrate);
    }

    pub fn update<'t>(
        &mut self,
        records: impl Iterator<Item = &'t crate::rtp_::TwccSendRecord> + Clone,
        now: Instant,
    ) {
        self.bwe.update(records, now);
    }

    pub fn poll_estimate(&mut self) -> Option<Bitrate> {
        self.smoother.poll()
    }

    pub fn poll_timeout(&self) -> (Option<Instant>, Reason) {
        self.bwe.poll_timeout()
    }

    pub fn last_estimate(&self) -> Option<Bitrate> {
        self.bwe.last_estimate()
    }

    /// Tessera fork: see `SendSideBandwidthEstimator::delivered_bitrate`.
    pub fn delivered_bitrate(&self, window: Duration) -> Option<Bitrate> {
        self.bwe.delivered_bitrate(window)
    }

    /// Tessera fork: see `SendSideBandwidthEstimator::latest_rtt`.
    pub fn latest_rtt(&self) -> Option<Duration> {
        self.bwe.latest_rtt()
    }

    /// Tessera fork: see `SendSideBandwidthEstimator::queue_delay`.
    pub fn queue_delay(&self) -> Option<Duration> {
        self.bwe.queue_delay()
    }

    /// Tessera fork: see `SendSideBandwidthEstimator::queue_left`.
    pub fn queue_left(&self, now: Instant) -> Option<(Duration, Instant)> {
        self.bwe.queue_left(now)
    }

    /// Tessera fork: see `SendSideBandwidthEstimator::loss_limited`.
    pub fn loss_limited(&self) -> bool {
        self.bwe.loss_limited()
    }

    /// Tessera fork: see `SendSideBandwidthEstimator::recent_loss`.
    pub fn recent_loss(&self) -> f64 {
        self.bwe.recent_loss()
    }

    pub fn on_media_sent(&mut self, payload_size: DataSize, is_padding: bool, now: Instant) {
        if !is_padding {
            // Update ALR detector with media bytes sent
            self.bwe.on_media_sent(payload_size, now);
        }
    }

    pub fn is_overusing(&self) -> bool {
        self.bwe.is_overusing()
    }

    pub fn set_bitrate(&mut self, minimum: Bitrate, desired: Bitrate) {
        self.minimum_bitrate = minimum.min(desired);
        self.desired_bitrate = desired;
    }

    pub fn minimum_bitrate(&self) -> Bitrate {
        self.minimum_bitrate
    }

    /// Tessera fork: see `BweApi::set_pacing_floor`.
    pub fn set_pacing_floor(&mut self, floor: Bitrate) {
        self.pacing_floor = floor;
    }

    pub fn pacing_floor(&self) -> Bitrate {
        self.pacing_floor
    }

    /// Tessera fork: see `BweApi::set_pacing_ceiling`.
    pub fn set_pacing_ceiling(&mut self, ceiling: Option<Bitrate>) {
        self.pacing_ceiling = ceiling;
    }

    pub fn pacing_ceiling(&self) -> Option<Bitrate> {
        self.pacing_ceiling
    }
}

struct SendSideBandwidthEstimator {
    delay_controller: DelayController,
    loss_controller: LossController,
    acked_bitrate_estimator: AckedBitrateEstimator,
    probe_control: ProbeControl,
    probe_estimator: ProbeEstimator,
    // First nonempty transport feedback; starts loss estimation and enables ALR probing.
    started_at: Option<Instant>,
    alr_detector: AlrDetector,
    link_capacity_estimator: LinkCapacityEstimator,
    last_updated_estimate: Option<Bitrate>,
    // Tessera fork: what the remote received over the last `DELIVERED_WINDOW` (its receive
    // time, bytes), for `delivered_bitrate`.
    delivered: std::collections::VecDeque<(Instant, DataSize)>,
    // Tessera fork: the least round trip of the latest feedback's acknowledged packets.
    latest_rtt: Option<Duration>,
    // Tessera fork: `queue_delay`'s base, the least one-way delay (remote receive time less
    // send time, seconds; the clocks' offset included) of this window and the one before, and
    // when this window began; and the latest acknowledged packet's delay over that base.
    owd_base: (f64, f64, Option<Instant>),
    queue_delay: Option<(Duration, Instant)>,
    // Tessera fork: the share of packets reported lost, averaged over the last few feedbacks.
    recent_loss: f64,
    // Tessera fork: `update`'s acknowledged packets, kept for their capacity (cleared first).
    acked_scratch: Vec<AckedPacket>,
}

/// Tessera fork: a probe result below the estimate lowers it to no less than this share of
/// the acknowledged rate (libwebrtc's kProbeDropThroughputFraction).
const PROBE_DROP_THROUGHPUT_FRACTION: f64 = 0.85;

/// Tessera fork: each of the two windows `queue_delay`'s base is the least of.
const OWD_BASE_WINDOW: Duration = Duration::from_secs(30);

/// Tessera fork: the span `delivered_bitrate` measures over.
const DELIVERED_WINDOW: Duration = Duration::from_millis(300);

impl SendSideBandwidthEstimator {
    pub fn new(initial_bitrate: Bitrate) -> Self {
        let mut alr_detector = AlrDetector::new();
        alr_detector.set_estimated_bitrate(initial_bitrate);

        let mut loss_controller = LossController::new();
        loss_controller.set_bandwidth_estimate(initial_bitrate);

        Self {
            delay_controller: DelayController::new(initial_bitrate),
            loss_controller,
            acked_bitrate_estimator: AckedBitrateEstimator::new(
                INITIAL_BITRATE_WINDOW,
                BITRATE_WINDOW,
            ),
            probe_control: ProbeControl::new(),
            probe_estimator: ProbeEstimator::new(),
            started_at: None,
            alr_detector,
            link_capacity_estimator: LinkCapacityEstimator::new(),
            last_updated_estimate: None,
            delivered: std::collections::VecDeque::new(),
            latest_rtt: None,
            owd_base: (f64::INFINITY, f64::INFINITY, None),
            queue_delay: None,
            recent_loss: 0.0,
            acked_scratch: Vec::new(),
        }
    }

    /// Tessera fork: the least round trip of the latest transport-wide feedback's acknowledged
    /// packets (a link's queue shows here at once, in stats a second later).
    pub fn latest_rtt(&self) -> Option<Duration> {
        self.latest_rtt
    }

    /// Tessera fork: how long the latest acknowledged packet waited in the path's queues: its
    /// one-way delay over the least seen in the last 30-60 s (the remote's and our clocks'
    /// offset cancels out; a base that old follows their drift and a route change). Unlike
    /// the round trip, it does not include how long the remote held its feedback, up to
    /// ~250 ms at an audio-only rate.
    pub fn queue_delay(&self) -> Option<Duration> {
        self.queue_delay.map(|(d, _)| d)
    }

    /// Tessera fork: how much of `queue_delay` is left at `now` if little was sent since its
    /// packet: that wait less the time since the packet was sent (the queue drains in real
    /// time); and when that packet was sent. A queue that kept filling after it is not seen
    /// here until a later packet's feedback.
    pub fn queue_left(&self, now: Instant) -> Option<(Duration, Instant)> {
        self.queue_delay.map(|(d, sent)| (d.saturating_sub(now.saturating_duration_since(sent)), sent))
    }

    /// Tessera fork: the share of packets the latest transport-wide feedbacks reported lost
    /// (each feedback weighs half: about the last 200 ms).
    pub fn recent_loss(&self) -> f64 {
        self.recent_loss
    }

    /// Tessera fork: the rate the remote received at over the last `window` of its receive
    /// times (at most `DELIVERED_WINDOW`), unsmoothed (the acknowledged-bitrate estimator
    /// averages over seconds); `None` until that window holds two thirds of `window`.
    pub fn delivered_bitrate(&self, window: Duration) -> Option<Bitrate> {
        let (last, _) = *self.delivered.back()?;
        let (mut first, mut bytes, mut first_bytes) = (last, 0u64, 0u64);
        for (t, b) in self.delivered.iter().rev().take_while(|(t, _)| last.saturating_duration_since(*t) <= window) {
            (first, first_bytes) = (*t, b.as_bytes_usize() as u64);
            bytes += first_bytes;
        }
        // The first packet's bytes arrived before the span starts.
        let bytes = bytes - first_bytes;
        let span = last.saturating_duration_since(first);
        if span < window * 2 / 3 {
            return None;
        }
        Some(Bitrate::bps((bytes as f64 * 8.0 / span.as_secs_f64()) as u64))
    }

    /// Whether the delay-based detector currently signals overuse.
    ///
    /// This is useful for gating behaviors (like padding/probing) that would otherwise
    /// re-excite the system while we're already congested.
    pub fn is_overusing(&self) -> bool {
        self.delay_controller.is_overusing()
    }

    /// Update ALR detector with actual bytes sent.
    ///
    /// Should be called for media packets (not padding/probes).
    /// This is typically called from the session's packet sending logic.
    pub fn on_media_sent(&mut self, bytes: DataSize, now: Instant) {
        self.alr_detector.on_bytes_sent(bytes, now);
    }

    /// Record a packet from a TWCC report.
    // Tessera fork: the records are walked in place, as often as needed (`Clone`), and the
    // acknowledged packets go into a buffer kept between feedbacks: no allocation per feedback
    // (a `Vec` of each, growing, before).
    pub fn update<'t>(&mut self, records: impl Iterator<Item = &'t TwccSendRecord> + Clone, now: Instant) {
        let send_records = records;
        if send_records.clone().next().is_none() {
            return;
        }
        let _ = self.started_at.get_or_insert(now);

        // Feed records to probe estimator for analysis and process any new probe results
        let mut latest_probe_result = None;
        for (config, bitrate) in self.probe_estimator.update(send_records.clone()) {
            latest_probe_result = Some(bitrate);

            // Update link capacity estimator for every successful ALR probe, not just the latest.
            // The estimator internally takes the max of all probe results, building up knowledge
            // of proven link capacity. This differs from the delay controller, which only receives
            // the latest probe result (matching WebRTC's FetchAndResetLastEstimatedBitrate behavior).
            if config.is_alr_probe() {
                self.link_capacity_estimator.update_from_probe(bitrate, now);
            }
        }

        let acked_packets = &mut self.acked_scratch;
        acked_packets.clear();

        let mut max_rtt = None;
        let mut count = 0;
        let mut lost = 0;
        for record in send_records.clone() {
            count += 1;
            let Ok(acked_packet) = record.try_into() else {
                lost += 1;
                continue;
            };
            acked_packets.push(acked_packet);
            max_rtt = max_rtt.max(record.rtt());
        }
        acked_packets.sort_by(AckedPacket::order_by_receive_time);
        // Tessera fork: `latest_rtt`, the least of this feedback's round trips: the others
        // include how long the remote held their feedback (up to its interval).
        if let Some(rtt) = send_records.clone().filter_map(|r| r.rtt()).min() {
            self.latest_rtt = Some(rtt);
        }

        // Tessera fork: `queue_delay`.
        if let Some(p) = acked_packets.iter().max_by_key(|p| p.local_send_time) {
            let owd = |p: &AckedPacket| match p.remote_recv_time.checked_duration_since(p.local_send_time) {
                Some(d) => d.as_secs_f64(),
                None => -p.local_send_time.duration_since(p.remote_recv_time).as_secs_f64(),
            };
            let (this, before, since) = &mut self.owd_base;
            if since.is_none_or(|t| now.saturating_duration_since(t) >= OWD_BASE_WINDOW) {
                (*before, *this, *since) = (*this, f64::INFINITY, Some(now));
            }
            *this = acked_packets.iter().map(owd).fold(*this, f64::min);
            let base = this.min(*before);
            self.queue_delay = Some((Duration::from_secs_f64((owd(p) - base).max(0.0)), p.local_send_time));
        }

        for acked_packet in acked_packets.iter() {
            self.acked_bitrate_estimator
                .update(acked_packet.remote_recv_time, acked_packet.size);
            // Tessera fork: `delivered_bitrate`.
            self.delivered
                .push_back((acked_packet.remote_recv_time, acked_packet.size));
        }
        if let Some(&(latest, _)) = self.delivered.back() {
            while self.delivered.front().is_some_and(|(t, _)| {
                latest.saturating_duration_since(*t) > DELIVERED_WINDOW
            }) {
                self.delivered.pop_front();
            }
        }

        let acked_bitrate = self.acked_bitrate_estimator.current_estimate();

        // Use the latest probe result from this update, if any
        // Tessera fork: one below the current estimate lowers it no further than 0.85 of the
        // acknowledged rate, as libwebrtc's GoogCC does (`limit_probes_lower_than_throughput_
        // estimate_`, kProbeDropThroughputFraction): a cluster received slowly behind a
        // frame's packets in the link's queue read 202 kbit/s on a 600 kbit/s link carrying
        // 280 kbit/s of media (harness, capped-600).
        let current = self.delay_controller.last_estimate();
        let probe_result = latest_probe_result.map(|p| match (current, acked_bitrate) {
            (Some(c), Some(a)) => p.max(c.min(a * PROBE_DROP_THROUGHPUT_FRACTION)),
            _ => p,
        });

        let is_probe_result = probe_result.is_some();

        // Update delay controller with the latest probe result
        let maybe_estimate =
            self.delay_controller
                .update(&acked_packets, acked_bitrate, probe_result, now);

        let Some(delay_estimate) = maybe_estimate else {
            return;
        };

        let loss = if count == 0 {
            0.0
        } else {
            lost as f64 / count as f64
        };
        // Tessera fork: `recent_loss`.
        self.recent_loss = (self.recent_loss + loss) / 2.0;
        log_loss!(loss);

        // During startup with no loss, use delay-based estimate directly
        if in_startup_phase(self.started_at, now) && loss <= 0.001 {
            self.loss_controller.set_bandwidth_estimate(delay_estimate);
            return;
        }

        // When probe succeeds, set bandwidth directly
        if is_probe_result {
            self.loss_controller.set_bandwidth_estimate(delay_estimate);
        }

        if let Some(acked_bitrate) = acked_bitrate {
            self.loss_controller.set_acknowledged_bitrate(acked_bitrate);
        }

        // This corresponds to UpdateLossBasedEstimator + UpdateEstimate
        self.loss_controller
            .update_bandwidth_estimate(send_records, delay_estimate);

        // Loss-based result is capped by delay_based_limit
        let loss_result = self.loss_controller.loss_based_result();
        if let Some(loss_estimate) = loss_result.bandwidth_estimate {
            if loss_estimate > delay_estimate {
                // Loss controller produced higher estimate than delay controller
                // Cap it at delay estimate (delay controller is the upper limit)
                self.loss_controller.set_bandwidth_estimate(delay_estimate);
            }
        }

        // Feed the (possibly combined) estimate into subcomponents wanting it.
        self.propagate_estimate();
    }

    pub fn poll_timeout(&self) -> (Option<Instant>, Reason) {
        let delay_timeout = Some(self.delay_controller.poll_timeout());
        let probe_timeout = Some(self.probe_control.poll_timeout());
        let probe_estimator_timeout = Some(self.probe_estimator.poll_timeout());
        (delay_timeout, Reason::BweDelayControl)
            .soonest((probe_timeout, Reason::BweProbeControl))
            .soonest((probe_estimator_timeout, Reason::BweProbeEstimator))
    }

    /// Handle periodic timeout for BWE components.
    pub fn handle_timeout(
        &mut self,
        desired_bitrate: Bitrate,
        do_probe: bool,
        now: Instant,
    ) -> Option<ProbeClusterConfig> {
        self.delay_controller
            .handle_timeout(self.acked_bitrate_estimator.current_estimate(), now);

        // Update probe control with desired bitrate.
        self.probe_control.set_desired_bitrate(desired_bitrate);

        // Empty media queues are application-limited too. Advance the budget
        // without charging probe/padding bytes, including before the first media.
        if do_probe {
            self.alr_detector.handle_timeout(now);
        }

        // Get ALR state and forward to both probe control and loss controller
        let alr_start_time = self.alr_detector.alr_start_time();
        // ALR probing requires feedback for at least one sent packet.
        if let Some(t) = alr_start_time.filter(|_| self.started_at.is_some()) {
            self.probe_control.set_alr_start_time(t);
        } else {
            self.probe_control.set_alr_stop_time(now);
        }

        self.loss_controller.set_alr_start_time(alr_start_time);

        // Get link capacity estimate and forward to loss controller.
        let link_capacity = self.link_capacity_estimator.capacity_estimate(now);
        self.loss_controller
            .set_link_capacity_estimate(link_capacity);

        // Clean up expired probe cluster state
        self.probe_estimator.handle_timeout(now);

        // Feed the current estimate into subcontrollers, if it changed.
        self.propagate_estimate();

        // If we can't probe, clear any pending/active probes
        if !do_probe {
            self.probe_estimator.clear_probes();
        }

        self.probe_control.enable(do_probe);

        // Timeout-driven probe logic (WebRTC `Process()` equivalent).
        self.probe_control.handle_timeout(now)
    }

    fn propagate_estimate(&mut self) {
        // Do we have a value?
        let Some(estimate) = self.last_estimate() else {
            return;
        };
        // Did it change?
        if self.last_updated_estimate == Some(estimate) {
            return;
        }

        let cause = self.bandwidth_limited_cause();

        self.probe_control.set_estimated_bitrate(estimate, cause);
        self.alr_detector.set_estimated_bitrate(estimate);

        // Don't update until this changes.
        self.last_updated_estimate = Some(estimate);
    }

    /// Tessera fork: whether the loss controller holds the estimate down (its decreasing
    /// state, in which no probe is sent).
    pub fn loss_limited(&self) -> bool {
        matches!(self.loss_controller.loss_based_result().state, LossControllerState::Decreasing)
    }

    fn bandwidth_limited_cause(&self) -> BandwidthLimitedCause {
        if self.delay_controller.is_overusing() {
            return BandwidthLimitedCause::DelayBasedLimitedDelayIncreased;
        }

        match self.loss_controller.loss_based_result().state {
            LossControllerState::DelayBased => BandwidthLimitedCause::DelayBasedLimited,
            LossControllerState::Increasing => BandwidthLimitedCause::LossLimitedBweIncreasing,
            LossControllerState::Decreasing => BandwidthLimitedCause::LossLimitedBwe,
        }
    }

    /// Get the latest estimate.
    pub fn last_estimate(&self) -> Option<Bitrate> {
        let delay_estimate = self.delay_controller.last_estimate();

        let loss_result = self.loss_controller.loss_based_result();

        // Only apply loss-based limiting when actively in a loss-limiting state
        match loss_result.state {
            LossControllerState::DelayBased => {
                // Loss controller defers to delay-based estimate
                delay_estimate
            }
            LossControllerState::Decreasing | LossControllerState::Increasing => {
                // Loss controller is actively limiting or recovering
                match (delay_estimate, loss_result.bandwidth_estimate) {
                    (Some(de), Some(le)) => Some(de.min(le)),
                    (None, le @ Some(_)) => le,
                    (de @ Some(_), None) => de,
                    (None, None) => None,
                }
            }
        }
    }

    /// Start analyzing a probe cluster.
    ///
    /// This should be called when the pacer starts sending a probe cluster,
    /// to tell the estimator which cluster to watch for in TWCC feedback.
    /// Returns `true` if the probe was started, `false` if rejected.
    pub fn start_probe(&mut self, config: ProbeClusterConfig, now: Instant) -> bool {
        self.probe_estimator.probe_start(config, now)
    }

    /// End a probe cluster and mark it for cleanup.
    ///
    /// This should be called when the pacer finishes sending a probe cluster.
    /// The estimator will continue collecting feedback for a cluster history period
    /// to allow late-arriving TWCC reports to refine the estimate.
    pub fn end_probe(&mut self, now: Instant, cluster_id: TwccClusterId) {
        self.probe_estimator.end_probe(now, cluster_id);
    }

    pub fn reset(&mut self, init_bitrate: Bitrate) {
        *self = Self::new(init_bitrate);
    }
}

/// A RTP packet that has been sent and acknowledged by the receiver in a TWCC report.
#[derive(Debug, Copy, Clone)]
pub struct AckedPacket {
    /// The TWCC sequence number
    seq_no: TwccSeq,
    /// The size of the packets in bytes.
    size: DataSize,
    /// When we sent the packet
    local_send_time: Instant,
    /// When the packet was received at the remote, note this Instant is only usable with other
    /// instants of the same type i.e. those that represent a TWCC reported receive time for this
    /// session.
    remote_recv_time: Instant,
    /// The local time when received confirmation that the other side received the seq i.e. when we
    /// received the TWCC report for this packet.
    local_recv_time: Instant,
}

impl AckedPacket {
    fn rtt(&self) -> Duration {
        self.local_recv_time - self.local_send_time
    }

    fn order_by_receive_time(lhs: &Self, rhs: &Self) -> Ordering {
        if lhs.remote_recv_time != rhs.remote_recv_time {
            lhs.remote_recv_time.cmp(&rhs.remote_recv_time)
        } else if lhs.local_send_time != rhs.local_send_time {
            lhs.local_send_time.cmp(&rhs.local_send_time)
        } else {
            lhs.seq_no.cmp(&rhs.seq_no)
        }
    }
}

// NB: Extracted for lifetime reasons
fn in_startup_phase(started_at: Option<Instant>, now: Instant) -> bool {
    started_at
        .map(|s| now.duration_since(s) <= STARTUP_PHASE)
        .unwrap_or(false)
}

impl TryFrom<&TwccSendRecord> for AckedPacket {
    type Error = ();

    fn try_from(value: &TwccSendRecord) -> Result<Self, Self::Error> {
        let Some(remote_recv_time) = value.remote_recv_time() else {
            return Err(());
        };
        let Some(local_recv_time) = value.local_recv_time() else {
            return Err(());
        };

        Ok(Self {
            seq_no: value.seq(),
            size: value.size().into(),
            local_send_time: value.local_send_time(),
            remote_recv_time,
            local_recv_time,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BandwidthUsage {
    Overuse,
    Normal,
    Underuse,
}

impl fmt::Display for BandwidthUsage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BandwidthUsage::Overuse => write!(f, "overuse"),
            BandwidthUsage::Normal => write!(f, "normal"),
            BandwidthUsage::Underuse => write!(f, "underuse"),
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::rtp_::TwccPacketId;

    #[test]
    fn alr_probing_waits_for_nonempty_transport_feedback() {
        let start = Instant::now();
        let desired = Bitrate::mbps(3);
        let mut bwe = SendSideBandwidthEstimator::new(Bitrate::kbps(300));

        // Initial discovery must work before feedback or media exists.
        assert!(bwe.handle_timeout(desired, true, start).is_some());
        assert!(bwe.handle_timeout(desired, true, start).is_some());
        for second in 1..=7 {
            let now = start + Duration::from_secs(second);
            bwe.update(std::iter::empty(), now);
            assert!(
                bwe.handle_timeout(desired, true, now).is_none(),
                "empty feedback must not authorize periodic ALR probes"
            );
        }
        assert!(bwe.alr_detector.alr_start_time().is_some());
        assert!(bwe.started_at.is_none());

        // Feedback for an actual sent packet authorizes ALR discovery.
        let now = start + Duration::from_secs(8);
        let record = TwccSendRecord::test_new(
            TwccPacketId::new(1u64),
            now - Duration::from_millis(20),
            240,
            now,
            Some(now - Duration::from_millis(10)),
        );
        bwe.update(std::iter::once(&record), now);
        let probe = bwe.handle_timeout(desired, true, now).unwrap();
        assert!(probe.is_alr_probe());

        // A reset starts discovery afresh, including the feedback requirement.
        bwe.reset(Bitrate::kbps(300));
        assert!(bwe.handle_timeout(desired, true, now).is_some());
        assert!(bwe.handle_timeout(desired, true, now).is_some());
        for second in 1..=7 {
            assert!(
                bwe.handle_timeout(desired, true, now + Duration::from_secs(second))
                    .is_none()
            );
        }
    }

    #[test]
    fn bitrate_targets_survive_estimator_reset() {
        let mut bwe = Bwe::new(Bitrate::kbps(300));
        bwe.set_bitrate(Bitrate::kbps(800), Bitrate::mbps(3));
        bwe.reset(Bitrate::kbps(200));
        assert_eq!(bwe.minimum_bitrate(), Bitrate::kbps(800));
        assert_eq!(bwe.desired_bitrate, Bitrate::mbps(3));
        assert_eq!(bwe.last_estimate(), Some(Bitrate::kbps(200)));
    }

    #[test]
    fn minimum_is_clamped_to_desired_and_can_be_cleared() {
        let mut bwe = Bwe::new(Bitrate::kbps(300));
        bwe.set_bitrate(Bitrate::mbps(2), Bitrate::mbps(1));
        assert_eq!(bwe.minimum_bitrate(), Bitrate::mbps(1));
        assert_eq!(bwe.desired_bitrate, Bitrate::mbps(1));
        bwe.set_bitrate(Bitrate::ZERO, Bitrate::mbps(1));
        assert_eq!(bwe.minimum_bitrate(), Bitrate::ZERO);
        assert_eq!(bwe.desired_bitrate, Bitrate::mbps(1));
    }
}
