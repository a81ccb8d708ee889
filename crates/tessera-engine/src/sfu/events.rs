//! What a peer's events do: the connection coming up, sections added, RTP to forward, keyframe
//! requests, bandwidth estimates, data channels and stats.

use super::*;

impl Sfu {
    pub(super) fn handle_event(&mut self, id: u64, event: Event, now: Instant) {
        match event {
            Event::Connected => {
                if let Some(s) = self.sessions.get_mut(&id) {
                    s.connected = true;
                    tracing::info!(parent: &s.span, "connected");
                    if matches!(s.role, Role::Viewer { .. }) {
                        self.setup_consumers(id);
                        self.allocate(id, now);
                    }
                }
            }
            Event::MediaAdded(m) => {
                if let Some(s) = self.sessions.get_mut(&id) {
                    if let Role::Viewer { send_mids, .. } = &mut s.role {
                        send_mids.push(m.mid);
                        // Sections can be reported after the connection is up.
                        if s.connected {
                            self.setup_consumers(id);
                            self.allocate(id, now);
                        }
                        return;
                    }
                    if let Role::Publisher { producers } = &mut s.role {
                        let layers = match &m.simulcast {
                            Some(sim) => sim.recv.iter().map(|l| Layer::new(Some(l.rid), now)).collect(),
                            None => vec![Layer::new(None, now)],
                        };
                        producers.push(Producer { mid: m.mid, kind: m.kind, layers, announced: false, codec: None, red: None });
                    }
                }
            }
            Event::RtpPacket(pkt) => self.forward(id, pkt, now),
            Event::KeyframeRequest(req) => self.keyframe_request_from_viewer(id, req.mid, now),
            Event::ChannelOpen(ch, label) if self.speed_tests.contains(&id) => self.speed_channel_opened(id, ch, &label),
            Event::ChannelData(d) if self.speed_tests.contains(&id) => self.speed_channel_data(id, d.id, d.binary, &d.data, now),
            Event::ChannelOpen(ch, label) => self.channel_opened(id, ch, &label),
            Event::ChannelClose(ch) => self.channel_closed(id, ch),
            Event::ChannelData(d) => self.channel_data(id, d.id, &d.data, now),
            Event::PeerStats(s) => self.note_peer_stats(id, s, now),
            Event::MediaIngressStats(s) => self.note_ingress_stats(id, s),
            Event::MediaEgressStats(s) => self.note_egress_stats(id, s),
            Event::EgressBitrateEstimate(BweKind::Twcc { estimate, .. }) => {
                if let Some(Session { role: Role::Viewer { estimate_bps, .. }, .. }) = self.sessions.get_mut(&id) {
                    *estimate_bps = Some(estimate.as_f64());
                }
            }
            _ => {}
        }
    }
}
