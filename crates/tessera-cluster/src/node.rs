//! A node's record in the cluster and the choice of a node for a new room.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A node's name in the cluster: from the config, or the host name and HTTP port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub String);

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether a node takes new rooms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    Active,
    /// Being drained: keeps the rooms it has, gets no new ones.
    Draining,
}

/// What a node reports of its load with each heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeLoad {
    /// CPU the process used over the last heartbeat interval, in cores.
    pub cpu_cores: f64,
    /// CPU cores the process may run on.
    pub cores: u32,
    /// The busiest media worker's share of the last second spent working (0–1).
    pub busy_ratio: f64,
    pub rooms: u32,
    pub publishers: u32,
    pub viewers: u32,
    pub participants: u32,
    /// Media sent, bits per second over the last interval.
    pub send_bps: u64,
}

impl NodeLoad {
    /// The share of the node in use (0–1 and above when overloaded): the larger of its CPU use
    /// and its busiest media worker.
    pub fn utilisation(&self) -> f64 {
        let cpu = if self.cores == 0 { 0.0 } else { self.cpu_cores / self.cores as f64 };
        cpu.max(self.busy_ratio)
    }
}

/// A node as the cluster knows it: written by the node with every heartbeat, under a TTL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: NodeId,
    /// The base URL clients reach this node's HTTP API, WHIP and WHEP at (redirects point here).
    pub url: String,
    /// Its RTMP address, `host:port`.
    pub rtmp: String,
    pub state: NodeState,
    pub load: NodeLoad,
    /// The most viewers it takes (`cluster.max_viewers_per_node`; 0: no limit).
    pub max_viewers: u32,
    pub version: String,
    pub started_ms: i64,
    pub heartbeat_ms: i64,
}

impl NodeRecord {
    /// Takes new rooms: active and not full of viewers.
    pub fn accepts_rooms(&self) -> bool {
        self.state == NodeState::Active && !self.full()
    }

    /// At its viewer limit.
    pub fn full(&self) -> bool {
        self.max_viewers > 0 && self.load.viewers >= self.max_viewers
    }
}

/// The live nodes as last read from the directory, with the rooms this node placed since (so
/// rooms created in a burst between two reads spread instead of piling on one node).
#[derive(Debug, Clone, Default)]
pub struct Membership {
    nodes: BTreeMap<NodeId, NodeRecord>,
    placed_since_read: BTreeMap<NodeId, u32>,
    /// Viewers this node sent to each node since the read (their records lag by a heartbeat).
    viewers_sent: BTreeMap<NodeId, u32>,
    /// This node's own viewers, counted now (its record lags too).
    live: Option<(NodeId, u32)>,
}

impl Membership {
    pub fn new(nodes: impl IntoIterator<Item = NodeRecord>) -> Membership {
        Membership { nodes: nodes.into_iter().map(|n| (n.id.clone(), n)).collect(), ..Membership::default() }
    }

    /// A fresh read of the directory replaces the view.
    pub fn replace(&mut self, nodes: impl IntoIterator<Item = NodeRecord>) {
        *self = Membership::new(nodes);
    }

    /// This node's viewers as counted now.
    pub fn set_live_viewers(&mut self, me: &NodeId, viewers: u32) {
        self.live = Some((me.clone(), viewers));
    }

    /// Counts a viewer sent to `id` until the next read.
    pub fn note_viewer(&mut self, id: &NodeId) {
        *self.viewers_sent.entry(id.clone()).or_default() += 1;
    }

    /// A node's viewers: counted now for this node, else its record's plus those sent since.
    pub fn viewers(&self, n: &NodeRecord) -> u32 {
        match &self.live {
            Some((me, v)) if *me == n.id => *v,
            _ => n.load.viewers + self.viewers_sent.get(&n.id).copied().unwrap_or(0),
        }
    }

    /// At its viewer limit, counting what its record does not show yet.
    pub fn is_full(&self, n: &NodeRecord) -> bool {
        n.max_viewers > 0 && self.viewers(n) >= n.max_viewers
    }

    /// Where a viewer of `owner`'s room goes when `owner` is full: the active node other than
    /// `owner` that is not full, least used (5 % steps), then with the fewest viewers.
    pub fn edge_for(&self, owner: &NodeId) -> Option<&NodeRecord> {
        self.nodes.values().filter(|n| n.id != *owner && n.state == NodeState::Active && !self.is_full(n)).min_by_key(|n| {
            let step = (n.load.utilisation() * 20.0).floor().clamp(0.0, 1000.0) as u32;
            (step, self.viewers(n), n.id.clone())
        })
    }

    pub fn get(&self, id: &NodeId) -> Option<&NodeRecord> {
        self.nodes.get(id)
    }

    pub fn nodes(&self) -> impl Iterator<Item = &NodeRecord> {
        self.nodes.values()
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Counts a room placed on `id` until the next read.
    pub fn note_placed(&mut self, id: &NodeId) {
        *self.placed_since_read.entry(id.clone()).or_default() += 1;
    }

    /// The node a new room goes to (see [`place`]).
    pub fn place(&self) -> Option<&NodeRecord> {
        place(self.nodes.values(), |id| self.placed_since_read.get(id).copied().unwrap_or(0))
    }
}

/// The least-loaded node that takes rooms: lowest utilisation (in steps of 5 %, so noise does not
/// decide), then fewest rooms (counting `pending` placements not yet in its record), then fewest
/// participants, then name (the same choice on every node given the same records).
pub fn place<'a>(nodes: impl IntoIterator<Item = &'a NodeRecord>, pending: impl Fn(&NodeId) -> u32) -> Option<&'a NodeRecord> {
    nodes.into_iter().filter(|n| n.accepts_rooms()).min_by_key(|n| {
        let step = (n.load.utilisation() * 20.0).floor().clamp(0.0, 1000.0) as u32;
        (step, n.load.rooms + pending(&n.id), n.load.participants, n.id.clone())
    })
}

#[cfg(test)]
pub(crate) fn record(id: &str, load: NodeLoad) -> NodeRecord {
    NodeRecord {
        id: NodeId(id.into()),
        url: format!("http://{id}:8080"),
        rtmp: format!("{id}:1935"),
        state: NodeState::Active,
        load,
        max_viewers: 0,
        version: "test".into(),
        started_ms: 0,
        heartbeat_ms: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(cpu: f64, rooms: u32) -> NodeLoad {
        NodeLoad { cpu_cores: cpu, cores: 2, rooms, ..NodeLoad::default() }
    }

    #[test]
    fn a_new_room_goes_to_the_least_used_node() {
        let nodes = [record("a", load(1.2, 1)), record("b", load(0.2, 5)), record("c", load(0.8, 0))];
        assert_eq!(place(&nodes, |_| 0).map(|n| n.id.0.as_str()), Some("b"));
    }

    #[test]
    fn equal_use_goes_by_rooms_then_name_and_counts_placements_not_yet_read() {
        let nodes = [record("a", load(0.01, 2)), record("b", load(0.02, 1)), record("c", load(0.0, 1))];
        let mut m = Membership::new(nodes);
        assert_eq!(m.place().map(|n| n.id.0.clone()), Some("b".into()), "b and c have one room each: the name decides");
        m.note_placed(&NodeId("b".into()));
        assert_eq!(m.place().map(|n| n.id.0.clone()), Some("c".into()));
        m.note_placed(&NodeId("c".into()));
        m.note_placed(&NodeId("c".into()));
        assert_eq!(m.place().map(|n| n.id.0.clone()), Some("a".into()), "a 2, b 2, c 3: a by name");
    }

    #[test]
    fn draining_and_full_nodes_get_no_rooms() {
        let mut a = record("a", load(0.0, 0));
        a.state = NodeState::Draining;
        let mut b = record("b", NodeLoad { viewers: 10, ..load(0.0, 0) });
        b.max_viewers = 10;
        let c = record("c", load(1.9, 9));
        assert_eq!(place([&a, &b, &c], |_| 0).map(|n| n.id.0.as_str()), Some("c"));
        assert!(place([&a, &b], |_| 0).is_none());
    }

    #[test]
    fn viewers_spread_over_edges_by_their_count_now_not_their_last_record() {
        let mut nodes: Vec<NodeRecord> = ["a", "b", "c"].iter().map(|id| record(id, NodeLoad::default())).collect();
        for n in &mut nodes {
            n.max_viewers = 2;
        }
        let mut m = Membership::new(nodes);
        let (a, b, c) = (NodeId("a".into()), NodeId("b".into()), NodeId("c".into()));
        // a holds the room; its live count says it is full before its record does.
        m.set_live_viewers(&a, 2);
        assert!(m.is_full(m.get(&a).unwrap()));
        let mut sent = Vec::new();
        for _ in 0..4 {
            let edge = m.edge_for(&a).map(|n| n.id.clone());
            if let Some(e) = &edge {
                m.note_viewer(e);
            }
            sent.push(edge);
        }
        assert_eq!(sent, vec![Some(b.clone()), Some(c.clone()), Some(b), Some(c)], "alternating, then both full");
        assert!(m.edge_for(&a).is_none());
    }

    #[test]
    fn utilisation_is_the_larger_of_cpu_and_the_busiest_worker() {
        assert_eq!(NodeLoad { cpu_cores: 0.5, cores: 2, busy_ratio: 0.7, ..NodeLoad::default() }.utilisation(), 0.7);
        assert_eq!(NodeLoad { cpu_cores: 1.8, cores: 2, busy_ratio: 0.1, ..NodeLoad::default() }.utilisation(), 0.9);
    }
}
