//! The media task's loop: commands, UDP datagrams, ICE-TCP frames and timers in; datagrams,
//! frames, tap packets, publisher lists and room events out.

use super::*;

use super::dispatch::{next_tcp, DatagramBatch, WorkerInbox};

/// Which of our addresses a datagram from `source` was most likely sent to. Exact for a single
/// candidate; with several, loopback talks to loopback and everyone else to the first
/// interface address.
fn destination_for(candidates: &[SocketAddr], source: SocketAddr) -> SocketAddr {
    if let Some(c) = candidates.iter().find(|c| c.ip() == source.ip()) {
        return *c;
    }
    candidates.iter().find(|c| c.ip().is_loopback() == source.ip().is_loopback()).or(candidates.first()).copied().unwrap_or(source)
}

/// Datagrams read per wake-up before timers and commands get a turn.
const RECV_BATCH: usize = 64;
/// Peers whose timeouts run before their datagrams go to the egress thread: a viewer's frame is
/// one message, so a part is about a quarter of a full batch.
const TIMEOUT_PART: usize = 64;

/// Where a worker's datagrams come from: the socket itself when it is the only worker, else the
/// dispatcher's batches.
pub(super) enum Ingress {
    Socket(UdpSocket),
    Dispatched(WorkerInbox),
}

/// What woke the worker on its datagram input.
enum Received {
    One(std::io::Result<(usize, SocketAddr)>),
    Batch(DatagramBatch),
}

impl Ingress {
    async fn next(&mut self, buf: &mut [u8]) -> Option<Received> {
        match self {
            Ingress::Socket(socket) => Some(Received::One(socket.recv_from(buf).await)),
            Ingress::Dispatched(inbox) => inbox.datagrams.recv().await.map(Received::Batch),
        }
    }
}

/// The shared UDP port as one worker sees it: its datagrams in, its egress thread out, and the
/// addresses the port is known by.
pub(super) struct UdpPort {
    pub ingress: Ingress,
    pub egress: super::egress::Egress,
    pub candidates: Vec<SocketAddr>,
}

/// A worker among the others: its index, where it reports how busy it is (its slot; the
/// busiest worker's share goes to the shared counters, which `/healthz` reads), the room
/// placement it confirms, and the other workers, for commands that reached it for their rooms.
pub(super) struct WorkerPlace {
    pub index: usize,
    pub busy: Arc<[std::sync::atomic::AtomicU64]>,
    pub placement: Arc<super::placement::Placement>,
    pub peers: Arc<[mpsc::WeakSender<Command>]>,
}

/// How often a worker gives up the placement of rooms it no longer holds anything of.
const RELEASE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

impl WorkerPlace {
    /// Sends a room command to the room's worker (a pipe's other end), unless that is this
    /// worker or the room is placed nowhere (the satellite asks again).
    fn to_room_worker(&self, cmd: Command) {
        let Some(owner) = cmd.room().and_then(|key| self.placement.owner(key)).filter(|w| *w != self.index) else { return };
        self.send_to(owner, cmd);
    }

    /// Hands a command to worker `w` without waiting on its queue here.
    fn send_to(&self, w: usize, cmd: Command) {
        if let Some(tx) = self.peers.get(w).and_then(|p| p.upgrade()) {
            tokio::spawn(async move {
                let _ = tx.send(cmd).await;
            });
        }
    }

    fn publish_busy(&self, permille: u64, counters: &SfuCounters) {
        use std::sync::atomic::Ordering::Relaxed;
        self.busy[self.index].store(permille, Relaxed);
        let busiest = self.busy.iter().map(|w| w.load(Relaxed)).max().unwrap_or(0);
        counters.busy_permille.store(busiest, Relaxed);
    }

    /// The command, if it is this worker's to run; else it goes on to the room's worker.
    fn own(&self, cmd: Command) -> Option<Command> {
        if self.peers.len() == 1 {
            return Some(cmd);
        }
        let owner = cmd.room().and_then(|key| self.placement.claim(key, self.index));
        let Some(owner) = owner else { return Some(cmd) };
        self.send_to(owner, cmd);
        None
    }
}

/// Adds a packet to the batch of its pipe.
fn gather_piped(piped: &mut Vec<(u64, Vec<crate::sfu::PipedPacket>)>, pipe: u64, packet: crate::sfu::PipedPacket) {
    match piped.iter_mut().find(|(p, _)| *p == pipe) {
        Some((_, batch)) => batch.push(packet),
        None => piped.push((pipe, vec![packet])),
    }
}

/// Hands each pipe's batch to the worker at its other end: one command per pipe. A satellite
/// that far behind loses the batch (its viewers ask for a keyframe) rather than holding up this
/// worker.
fn send_piped(piped: &mut Vec<(u64, Vec<crate::sfu::PipedPacket>)>, worker: &WorkerPlace, sfu: &Sfu) {
    for (pipe, packets) in piped.drain(..) {
        let n = packets.len() as u64;
        let sent = worker.peers.get(crate::sfu::worker_of_id(pipe)).and_then(|p| p.upgrade()).is_some_and(|tx| tx.try_send(Command::PipePackets { pipe, packets }).is_ok());
        if !sent {
            sfu.counters.packets_dropped.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

pub(super) async fn run(
    port: UdpPort,
    mut tcp_events: Option<mpsc::Receiver<TcpEvent>>,
    mut commands: mpsc::Receiver<Command>,
    mut sfu: Sfu,
    room_events: mpsc::UnboundedSender<RoomEvent>,
    worker: WorkerPlace,
) {
    let command_tx = worker.peers[worker.index].clone();
    let mut next_release = Instant::now() + RELEASE_EVERY;
    let UdpPort { mut ingress, mut egress, candidates } = port;
    let mut buf = vec![0u8; 2048];
    let mut taps: std::collections::HashMap<u64, mpsc::Sender<TapPacket>> = std::collections::HashMap::new();
    let mut publisher_watches: std::collections::HashMap<u64, watch::Sender<Vec<PublisherInfo>>> = std::collections::HashMap::new();
    // Internal publishers whose owner wants to hear that a newer one replaced them.
    let mut replaced_watchers: std::collections::HashMap<u64, oneshot::Sender<PublisherEnd>> = std::collections::HashMap::new();
    // Internal publishers that make keyframes on request, and where to tell them.
    let mut keyframe_owners: std::collections::HashMap<u64, std::sync::mpsc::Sender<Option<crate::sfu::Rid>>> = std::collections::HashMap::new();
    let mut first_media: std::collections::HashMap<u64, mpsc::UnboundedSender<FirstMedia>> = std::collections::HashMap::new();
    // Room-signaling sessions, and where to hand what the SFU has for them.
    let mut member_inboxes: std::collections::HashMap<u64, mpsc::UnboundedSender<crate::sfu::MemberMessage>> = std::collections::HashMap::new();
    // ICE-TCP connections by the client's address.
    let mut tcp_writers: std::collections::HashMap<SocketAddr, mpsc::Sender<Vec<u8>>> = std::collections::HashMap::new();
    // Packets for each pipe out of this worker, gathered over one wake-up.
    let mut piped: Vec<(u64, Vec<crate::sfu::PipedPacket>)> = Vec::new();
    // How much of each second the task spends working rather than waiting: the saturation
    // that `tessera_worker_busy_ratio` and `/healthz` report.
    let mut busy = std::time::Duration::ZERO;
    let mut window = Instant::now();
    loop {
        let deadline = sfu.next_timeout();
        // Each branch gives the moment it woke.
        let woke = tokio::select! {
            cmd = commands.recv() => {
                let woke = Instant::now();
                let Some(cmd) = cmd else { break };
                let now = Instant::now();
                match worker.own(cmd) {
                    None => {}
                    Some(cmd) => match cmd {
                    #[cfg(test)]
                    Command::Panic => panic!("a defect in the media worker (test)"),
                    Command::AddSession { spec, offer, reply } => {
                        let _ = reply.send(sfu.add_session(spec, &offer, now));
                    }
                    Command::RemoveSession { sid, reply } => {
                        let _ = reply.send(sfu.remove_session(&sid, now));
                    }
                    Command::HasSession { sid, reply } => {
                        let _ = reply.send(sfu.has_session(&sid));
                    }
                    Command::SessionInfo { sid, reply } => {
                        let _ = reply.send(sfu.session_info(&sid));
                    }
                    Command::IceRestart { sid, ufrag, pwd, reply } => {
                        let _ = reply.send(sfu.ice_restart(&sid, &ufrag, &pwd, now));
                    }
                    Command::ViewerSessions { key, user, reply } => {
                        let _ = reply.send(sfu.viewer_sessions(&key, &user));
                    }
                    Command::RoomExists { key, reply } => {
                        let _ = reply.send(sfu.room_exists(&key));
                    }
                    Command::IsPublished { key, user, stream, reply } => {
                        let _ = reply.send(sfu.is_published(&key, &user, stream));
                    }
                    Command::Stats { reply } => {
                        let _ = reply.send(sfu.stats());
                    }
                    Command::AddIngest { spec, replaced, keyframes, reply } => {
                        let (id, old) = sfu.add_internal_publisher(spec, now);
                        if let Some(tx) = old.and_then(|old| replaced_watchers.remove(&old)) {
                            let _ = tx.send(PublisherEnd::Replaced);
                        }
                        if let Some(tx) = replaced {
                            replaced_watchers.insert(id, tx);
                        }
                        if let Some(tx) = keyframes {
                            keyframe_owners.insert(id, tx);
                        }
                        let _ = reply.send(id);
                    }
                    Command::Push { id, packets } => {
                        for p in packets {
                            sfu.push_packet(id, p, now);
                        }
                        sfu.flush(now);
                    }
                    Command::RemoveIngest { id } => {
                        replaced_watchers.remove(&id);
                        sfu.remove_internal_publisher(id, now);
                        keyframe_owners.remove(&id);
                    }
                    Command::AddTap { key, kind, owner, reply } => {
                        let id = sfu.add_tap(key, kind, &owner, now);
                        let (tx, rx) = mpsc::channel(TAP_QUEUE);
                        taps.insert(id, tx);
                        let _ = reply.send((id, rx));
                    }
                    Command::RemoveTap { id } => {
                        sfu.remove_tap(id);
                        taps.remove(&id);
                    }
                    Command::WatchPublishers { key, reply } => {
                        let id = sfu.watch_publishers(key);
                        let (tx, list) = watch::channel(Vec::new());
                        publisher_watches.insert(id, tx);
                        let _ = reply.send(PublisherWatch { id, list, commands: command_tx.clone() });
                    }
                    Command::Rooms { app, reply } => {
                        let _ = reply.send(sfu.rooms(&app));
                    }
                    Command::RoomUsers { key, reply } => {
                        let _ = reply.send(sfu.room_users(&key));
                    }
                    Command::Kick { key, user, reply } => {
                        let _ = reply.send(sfu.kick(&key, &user, now));
                    }
                    Command::Dismiss { key, reply } => {
                        let _ = reply.send(sfu.dismiss(&key, now));
                    }
                    Command::JoinSignaling { key, user, join, ended, inbox, reply } => {
                        let id = sfu.join_signaling(&key, &user, &join, now);
                        replaced_watchers.insert(id, ended);
                        member_inboxes.insert(id, inbox);
                        let _ = reply.send(id);
                    }
                    Command::AddSpeedTest { spec, offer, server_ip, reply } => {
                        let _ = reply.send(sfu.add_speed_test(spec, &offer, server_ip, now));
                    }
                    Command::Custom { key, from, cmd_id, payload, to, reply } => {
                        let _ = reply.send(sfu.send_custom(&key, &from, crate::sfu::OutgoingCustom { cmd_id, payload: &payload, to: to.as_deref(), kind: crate::sfu::ChannelKind::Reliable }, now));
                        sfu.flush(now);
                    }
                    Command::LeaveSignaling { id, reason } => {
                        replaced_watchers.remove(&id);
                        member_inboxes.remove(&id);
                        sfu.leave_signaling(id, reason, now);
                    }
                    Command::UnwatchPublishers { id } => {
                        sfu.unwatch_publishers(id);
                        publisher_watches.remove(&id);
                    }
                    Command::RoomsWithAnchors { reply } => {
                        let _ = reply.send(sfu.rooms_with_anchors());
                    }
                    Command::RequestKeyframe { key, user, stream } => {
                        sfu.request_keyframe_of(&key, &user, stream, now);
                        sfu.flush(now);
                    }
                    Command::AddSubscriber { spec, first_media: tx, reply } => {
                        // Listeners of ended connections go when the next one comes.
                        first_media.retain(|_, tx| !tx.is_closed());
                        let added = sfu.add_subscriber(spec, now);
                        if let Ok(id) = added {
                            first_media.insert(id, tx);
                        }
                        let _ = reply.send(added);
                    }
                    Command::Subscribe { sid, req, reply } => {
                        let _ = reply.send(sfu.subscribe(&sid, req, now));
                    }
                    Command::Unsubscribe { sid, source, reply } => {
                        let _ = reply.send(sfu.unsubscribe(&sid, source, now));
                    }
                    Command::SubscriberAnswer { sid, sdp, reply } => {
                        let _ = reply.send(sfu.subscriber_answer(&sid, &sdp, now));
                    }
                    Command::PendingOffer { sid, reply } => {
                        let _ = reply.send(sfu.pending_offer(&sid));
                    }
                    Command::UserTracks { key, user, reply } => {
                        let _ = reply.send(sfu.user_tracks(&key, &user));
                    }
                    Command::Mute { key, user, track, muted, reply } => {
                        let _ = reply.send(sfu.mute(&key, &user, track, muted));
                    }
                    Command::SwitchRole { key, user, role, reply } => {
                        let _ = reply.send(sfu.switch_role(&key, &user, role, now));
                    }
                    Command::AddSpreadViewer { spec, offer, reply } => {
                        let _ = reply.send(sfu.add_spread_viewer(spec, &offer, now));
                    }
                    Command::OpenPipe { key, source, pipe } => {
                        sfu.open_pipe(&key, source, pipe, now);
                        sfu.flush(now);
                    }
                    Command::ClosePipe { key, pipe } => sfu.close_pipe(&key, pipe),
                    Command::SetTapSizes { key, tap, sizes } => {
                        sfu.set_tap_sizes(tap, &key, sizes, now);
                        sfu.flush(now);
                    }
                    Command::PipeKeyframe { key, source, rid } => {
                        sfu.request_layer_keyframe(&key, &source, rid, now);
                        sfu.flush(now);
                    }
                    Command::PipePackets { pipe, packets } => {
                        for p in packets {
                            sfu.push_piped(pipe, p, now);
                        }
                        sfu.flush(now);
                    }
                    Command::SatelliteUsers { key, reply } => {
                        let _ = reply.send(if sfu.is_satellite(&key) { sfu.room_users(&key) } else { None });
                    }
                    Command::SatelliteKick { key, user, reply } => {
                        let _ = reply.send(sfu.is_satellite(&key) && sfu.kick(&key, &user, now));
                    }
                    Command::SatelliteDismiss { key, reply } => {
                        let _ = reply.send(sfu.dismiss_satellite(&key, now));
                    }
                    },
                }
                woke
            }
            Some(received) = ingress.next(&mut buf) => {
                let woke = Instant::now();
                let now = woke;
                match received {
                    Received::One(Ok((n, source))) => {
                        sfu.handle_datagram(now, source, destination_for(&candidates, source), &buf[..n]);
                        // Drain what else is queued without going back through the scheduler.
                        if let Ingress::Socket(socket) = &ingress {
                            for _ in 0..RECV_BATCH {
                                match socket.try_recv_from(&mut buf) {
                                    Ok((n, source)) => sfu.handle_datagram(now, source, destination_for(&candidates, source), &buf[..n]),
                                    Err(_) => break,
                                }
                            }
                        }
                    }
                    Received::One(Err(_)) => {}
                    Received::Batch(batch) => {
                        for (source, data) in batch.iter() {
                            sfu.handle_datagram(now, source, destination_for(&candidates, source), data);
                        }
                        if let Ingress::Dispatched(inbox) = &ingress {
                            inbox.give_back(batch);
                        }
                    }
                }
                sfu.flush(now);
                woke
            }
            Some(event) = next_tcp(&mut tcp_events) => {
                let woke = Instant::now();
                match event {
                    TcpEvent::Opened { remote, writer } => {
                        tcp_writers.insert(remote, writer);
                    }
                    TcpEvent::Frame { remote, local, data } => {
                        let now = Instant::now();
                        sfu.handle_tcp_frame(now, remote, local, &data);
                        sfu.flush(now);
                    }
                    TcpEvent::Closed { remote } => {
                        tcp_writers.remove(&remote);
                    }
                }
                woke
            },
            _ = tokio::time::sleep_until(deadline.into()) => Instant::now(),
        };
        // Packets for other workers' viewers go before this worker builds its own viewers'
        // datagrams, so those workers fan out at the same time, not after this one's turn.
        sfu.take_piped(|pipe, packet| gather_piped(&mut piped, pipe, packet));
        send_piped(&mut piped, &worker, &sfu);
        // Due timeouts run now, not after the next timer tick (tokio's timer has 1 ms
        // granularity): str0m asks for one right after media is written (its pacer releases the
        // queued packets at the next timeout).
        for _ in 0..4 {
            let now = Instant::now();
            if sfu.next_timeout() > now {
                break;
            }
            // In parts: each part's datagrams go to the egress thread before the next part is
            // built, so the kernel sends to the first viewers while the SFU builds for the last.
            while sfu.handle_timeout_some(now, TIMEOUT_PART) {
                sfu.take_udp_transmits(|t| egress.push(t.contents.into(), t.destination));
                egress.flush().await;
            }
        }
        while let Some(output) = sfu.poll_output() {
            match output {
                SfuOutput::Transmit(t) if t.proto == Protocol::Tcp => {
                    if let (Some(w), Some(framed)) = (tcp_writers.get(&t.destination), crate::ice_tcp::frame(&t.contents)) {
                        let _ = w.try_send(framed);
                    }
                }
                SfuOutput::Transmit(t) => egress.push(t.contents.into(), t.destination),
                // A full queue means the task is behind: the packet is dropped (it will ask for a
                // keyframe) rather than the media task waiting on it.
                SfuOutput::Tap(tap, packet) => {
                    if let Some(tx) = taps.get(&tap) {
                        let _ = tx.try_send(packet);
                    }
                }
                SfuOutput::Publishers(id, list) => {
                    if publisher_watches.get(&id).is_some_and(|tx| tx.send(list).is_err()) {
                        // The watch was dropped.
                        publisher_watches.remove(&id);
                        sfu.unwatch_publishers(id);
                    }
                }
                SfuOutput::PublisherEnded(id, end) => {
                    if let Some(tx) = replaced_watchers.remove(&id) {
                        let _ = tx.send(end);
                    }
                    keyframe_owners.remove(&id);
                }
                SfuOutput::Room(event) => {
                    let _ = room_events.send(event);
                }
                SfuOutput::FirstMedia { session, user, stream, video } => {
                    if first_media.get(&session).is_some_and(|tx| tx.send((user, stream, video)).is_err()) {
                        first_media.remove(&session);
                    }
                }
                SfuOutput::ToMember(id, msg) => {
                    if member_inboxes.get(&id).is_some_and(|tx| tx.send(msg).is_err()) {
                        member_inboxes.remove(&id);
                    }
                }
                SfuOutput::KeyframeWanted(id, rid) => {
                    if let Some(tx) = keyframe_owners.get(&id) {
                        let _ = tx.send(rid);
                    }
                }
                SfuOutput::Piped(pipe, packet) => gather_piped(&mut piped, pipe, packet),
                SfuOutput::PipeWanted { pipe, room, source } => worker.to_room_worker(Command::OpenPipe { key: room, source, pipe }),
                SfuOutput::PipeClosed { pipe, room } => worker.to_room_worker(Command::ClosePipe { key: room, pipe }),
                SfuOutput::PipeKeyframeWanted { room, source, rid } => worker.to_room_worker(Command::PipeKeyframe { key: room, source, rid }),
            }
        }
        send_piped(&mut piped, &worker, &sfu);
        egress.flush().await;
        let done = Instant::now();
        if done >= next_release {
            next_release = done + RELEASE_EVERY;
            worker.placement.release_unheld(worker.index, |key| sfu.holds_room(key));
        }
        busy += done - woke;
        let span = done - window;
        if span >= std::time::Duration::from_secs(1) {
            let permille = (busy.as_secs_f64() / span.as_secs_f64() * 1000.0).round().min(1000.0) as u64;
            sfu.set_busy_permille(permille, done);
            worker.publish_busy(permille, &sfu.counters);
            busy = std::time::Duration::ZERO;
            window = done;
        }
    }
}
