//! Where a request about a room is served: the pure decision, given the room's owner as the
//! directory records it and the live nodes. The driver carries it out (a claim is a
//! compare-and-set in Redis, after which the request is decided again with the owner it set).

use crate::node::{Membership, NodeId, NodeRecord};

/// What the request does to the room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomIntent {
    /// It may create the room (a publish, a join): an unowned room is placed.
    Create,
    /// It needs the room to exist (a play, an API call): an unowned room is answered here.
    Use,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Serve it on this node.
    Local,
    /// The room lives on another live node: redirect or forward there.
    Remote(NodeRecord),
    /// Nobody live owns the room: record `node` as its owner if the owner is still `expected`
    /// (none, or the dead node), then decide again with whatever owner the directory then has.
    Claim { expected: Option<NodeId>, node: NodeId },
}

/// `me` is always live to itself (its own record may not have been read back yet).
pub fn decide(me: &NodeId, owner: Option<&NodeId>, live: &Membership, intent: RoomIntent) -> Decision {
    match owner {
        Some(o) if o == me => return Decision::Local,
        Some(o) => {
            if let Some(node) = live.get(o) {
                return Decision::Remote(node.clone());
            }
        }
        None => {}
    }
    if intent == RoomIntent::Use {
        return Decision::Local;
    }
    // No live node takes rooms (all draining or full, or the directory unread): this node
    // serves it rather than nobody.
    let node = live.place().map(|n| n.id.clone()).unwrap_or_else(|| me.clone());
    Decision::Claim { expected: owner.cloned(), node }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::{record, NodeLoad, NodeState};

    fn id(s: &str) -> NodeId {
        NodeId(s.into())
    }

    fn live() -> Membership {
        let busy = NodeLoad { cpu_cores: 1.5, cores: 2, ..NodeLoad::default() };
        Membership::new([record("a", busy.clone()), record("b", NodeLoad::default()), record("c", busy)])
    }

    #[test]
    fn an_owned_room_is_served_by_its_owner() {
        assert_eq!(decide(&id("a"), Some(&id("a")), &live(), RoomIntent::Create), Decision::Local);
        match decide(&id("a"), Some(&id("c")), &live(), RoomIntent::Use) {
            Decision::Remote(n) => assert_eq!(n.id, id("c")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_draining_owner_keeps_its_rooms() {
        let mut m = live();
        let mut c = m.get(&id("c")).cloned().unwrap();
        c.state = NodeState::Draining;
        m.replace(m.nodes().filter(|&n| n.id != id("c")).cloned().chain([c]).collect::<Vec<_>>());
        assert!(matches!(decide(&id("a"), Some(&id("c")), &m, RoomIntent::Create), Decision::Remote(n) if n.id == id("c")));
    }

    #[test]
    fn an_unowned_room_is_placed_on_the_least_loaded_node_when_created() {
        assert_eq!(decide(&id("a"), None, &live(), RoomIntent::Create), Decision::Claim { expected: None, node: id("b") });
        assert_eq!(decide(&id("a"), None, &live(), RoomIntent::Use), Decision::Local);
    }

    #[test]
    fn a_dead_owners_room_is_placed_again_in_its_place() {
        assert_eq!(decide(&id("a"), Some(&id("gone")), &live(), RoomIntent::Create), Decision::Claim { expected: Some(id("gone")), node: id("b") });
        assert_eq!(decide(&id("a"), Some(&id("gone")), &live(), RoomIntent::Use), Decision::Local);
    }

    #[test]
    fn with_no_node_read_this_node_takes_the_room() {
        assert_eq!(decide(&id("a"), None, &Membership::default(), RoomIntent::Create), Decision::Claim { expected: None, node: id("a") });
    }
}
