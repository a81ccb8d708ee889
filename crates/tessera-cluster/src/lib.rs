//! Cluster mode (`[cluster] redis_url`): nodes share a room directory and their load through
//! Redis, as LiveKit's nodes do; a room lives on one node, and every node routes requests for it
//! there.
//!
//! - [`node`]: what a node publishes of itself (its URL and load) and the pure placement choice
//!   (the least-loaded node that takes rooms).
//! - [`directory`]: the pure routing decision for a request about a room, given the room's
//!   recorded owner and the live nodes.
//! - [`redis_store`]: the thin driver — the Redis keys, the heartbeat's write, the compare-and-set
//!   of a room's owner, the shared app store.
//!
//! Nothing here holds a socket but `redis_store`; the server crate runs its heartbeat and uses
//! the decisions at its entry points.

pub mod directory;
pub mod node;
pub mod redis_store;

pub use directory::{decide, Decision, RoomIntent};
pub use node::{place, Membership, NodeId, NodeLoad, NodeRecord, NodeState};
pub use redis_store::{ClusterError, ClusterStore};
