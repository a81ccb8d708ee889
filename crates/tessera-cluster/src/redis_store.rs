//! The Redis side of the cluster: the keys every node reads and writes. A thin driver: one
//! auto-reconnecting connection, each call one command or one script (the compare-and-sets run
//! in Redis, so two nodes placing the same room agree on one owner).
//!
//! Keys, under the configured prefix `p`:
//! - `p:node:<id>` — the node's [`NodeRecord`] (JSON), rewritten by every heartbeat with a TTL:
//!   a node that stops heartbeating disappears when it expires.
//! - `p:room:<app>/<room>` — the id of the node the room lives on.
//! - `p:task:<app>/<task id>` — the node a relay, recording, ingest or mix job runs on;
//!   `p:taskfile:<task id>` its record as last saved, `p:tasks-of:<node>` the ids a node runs:
//!   when a node dies, another claims its tasks (compare-and-set on `p:task:…`) and resumes them.
//! - `p:clock:<app>/<room>` — the room's last webhook `EventMsTs`: the room's next node (after a
//!   failure) stamps after it, so a receiver's order by `EventMsTs` holds across nodes.
//! - `p:outbox:<node>` — the node's undelivered webhook events (a hash: event id → the event as
//!   its outbox file holds it), kept 2 minutes after its last change (events are dropped after
//!   60 s anyway): when a node dies, the first node to take the hash delivers them, and notes
//!   their ids in `p:outbox-taken:<node>` (2 minutes), so the node, restarted, does not.
//! - `p:secret` — the secret nodes authenticate relay requests between them with.
//! - `p:drain:<id>` — set when an operator drains the node; the node reads it with its heartbeat.
//! - `p:apps`, `p:apps:version`, `p:apps:writer` — the app store (apps, secrets, API keys) every
//!   node serves, its version (incremented by every write) and the node that wrote it.

use crate::node::{NodeId, NodeRecord};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("a node record in redis is not valid JSON: {0}")]
    Record(#[from] serde_json::Error),
}

/// Sets `KEYS[1]` to `ARGV[2]` if it holds `ARGV[1]` ('' for absent); returns what it then holds.
const CLAIM: &str = r"
local cur = redis.call('GET', KEYS[1])
if (cur == false and ARGV[1] == '') or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2])
  return ARGV[2]
end
return cur";

/// Deletes `KEYS[1]` if it holds `ARGV[1]`.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0";

/// Raises `KEYS[1]` to `ARGV[1]` (a number) if it is lower or absent; kept a day.
const RAISE: &str = r"
local cur = tonumber(redis.call('GET', KEYS[1]) or '-1')
if tonumber(ARGV[1]) > cur then redis.call('SET', KEYS[1], ARGV[1], 'EX', 86400) end
return 0";

/// A task's record saved by node `ARGV[1]`: written (`ARGV[2]` to `KEYS[2]`, the task's node
/// `KEYS[1]`, id `ARGV[3]` in the node's set `KEYS[3]`, kept `ARGV[4]` s) only if the task is
/// new or that node's; returns 1 if written.
const PUT_TASK_FILE: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur ~= false and cur ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[4])
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[4])
redis.call('SADD', KEYS[3], ARGV[3])
return 1";

/// Returns the values of hash `KEYS[1]` and deletes it (one taker only), noting its keys in set
/// `KEYS[2]` for `ARGV[1]` ms.
const TAKE_HASH: &str = r"
local k = redis.call('HKEYS', KEYS[1])
local v = redis.call('HVALS', KEYS[1])
redis.call('DEL', KEYS[1])
for _, id in ipairs(k) do redis.call('SADD', KEYS[2], id) end
if #k > 0 then redis.call('PEXPIRE', KEYS[2], ARGV[1]) end
return v";

/// How long a node's outbox copy outlives its last change.
const OUTBOX_TTL_MS: u64 = 120_000;

/// Writes the app store, bumps its version and names the writer; returns the new version.
const PUT_APPS: &str = r"
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[3], ARGV[2])
return redis.call('INCR', KEYS[2])";

#[derive(Clone)]
pub struct ClusterStore {
    con: ConnectionManager,
    prefix: String,
}

/// Redis calls give up after this long (a heartbeat must not hang on a dead server).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

impl ClusterStore {
    /// Connects (failing if Redis does not answer); the connection reconnects by itself later.
    pub async fn connect(url: &str, prefix: &str) -> Result<ClusterStore, ClusterError> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new().set_connection_timeout(Some(RESPONSE_TIMEOUT)).set_response_timeout(Some(RESPONSE_TIMEOUT)).set_number_of_retries(2);
        let con = ConnectionManager::new_with_config(client, config).await?;
        Ok(ClusterStore { con, prefix: prefix.to_owned() })
    }

    fn node_key(&self, id: &NodeId) -> String {
        format!("{}:node:{}", self.prefix, id.0)
    }

    fn room_key(&self, app: &str, room: &str) -> String {
        format!("{}:room:{app}/{room}", self.prefix)
    }

    fn drain_key(&self, id: &NodeId) -> String {
        format!("{}:drain:{}", self.prefix, id.0)
    }

    /// The heartbeat: this node's record, live for `ttl`.
    pub async fn heartbeat(&self, record: &NodeRecord, ttl: Duration) -> Result<(), ClusterError> {
        let json = serde_json::to_string(record)?;
        redis::cmd("SET").arg(self.node_key(&record.id)).arg(json).arg("PX").arg(ttl.as_millis() as u64).query_async::<()>(&mut self.con.clone()).await?;
        Ok(())
    }

    /// Removes this node's record at once (a clean shutdown).
    pub async fn leave(&self, id: &NodeId) -> Result<(), ClusterError> {
        redis::cmd("DEL").arg(self.node_key(id)).query_async::<()>(&mut self.con.clone()).await?;
        Ok(())
    }

    /// Every live node. A record that does not parse (another version's) is skipped and logged.
    pub async fn nodes(&self) -> Result<Vec<NodeRecord>, ClusterError> {
        let mut con = self.con.clone();
        let pattern = format!("{}:node:*", self.prefix);
        let mut keys: Vec<String> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(200).query_async(&mut con).await?;
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let values: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query_async(&mut con).await?;
        let mut nodes = Vec::new();
        for (key, value) in keys.iter().zip(values) {
            // Expired between SCAN and MGET.
            let Some(json) = value else { continue };
            match serde_json::from_str::<NodeRecord>(&json) {
                Ok(n) => nodes.push(n),
                Err(e) => tracing::warn!(%key, "skipping a node record that does not parse: {e}"),
            }
        }
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(nodes)
    }

    /// The node a room lives on, if it was placed.
    pub async fn room_owner(&self, app: &str, room: &str) -> Result<Option<NodeId>, ClusterError> {
        let owner: Option<String> = redis::cmd("GET").arg(self.room_key(app, room)).query_async(&mut self.con.clone()).await?;
        Ok(owner.map(NodeId))
    }

    /// Records `node` as the room's owner if the owner is still `expected`; returns the owner
    /// the room then has (another node's claim may have come first).
    pub async fn claim_room(&self, app: &str, room: &str, expected: Option<&NodeId>, node: &NodeId) -> Result<NodeId, ClusterError> {
        let owner: String =
            redis::Script::new(CLAIM).key(self.room_key(app, room)).arg(expected.map(|n| n.0.as_str()).unwrap_or("")).arg(&node.0).invoke_async(&mut self.con.clone()).await?;
        Ok(NodeId(owner))
    }

    /// Forgets the room's placement if `node` still owns it (the room ended there).
    pub async fn release_room(&self, app: &str, room: &str, node: &NodeId) -> Result<(), ClusterError> {
        redis::Script::new(RELEASE).key(self.room_key(app, room)).arg(&node.0).invoke_async::<i64>(&mut self.con.clone()).await?;
        Ok(())
    }

    fn task_key(&self, app: &str, id: &str) -> String {
        format!("{}:task:{app}/{id}", self.prefix)
    }

    /// Records the node a task runs on (kept 30 days: a finished task stays queryable there).
    pub async fn set_task_node(&self, app: &str, id: &str, node: &NodeId) -> Result<(), ClusterError> {
        redis::cmd("SET").arg(self.task_key(app, id)).arg(&node.0).arg("EX").arg(30 * 86_400).query_async::<()>(&mut self.con.clone()).await?;
        Ok(())
    }

    /// Shares a task's record (its task file) as the node running it saved it. A node whose
    /// task another node took over (it was seen gone while it still saved, as in a stop) is
    /// not the task's any more: its save is ignored (`false`).
    pub async fn put_task_file(&self, node: &NodeId, app: &str, id: &str, bytes: &[u8]) -> Result<bool, ClusterError> {
        let p = &self.prefix;
        let stored: i64 = redis::Script::new(PUT_TASK_FILE)
            .key(self.task_key(app, id))
            .key(format!("{p}:taskfile:{id}"))
            .key(format!("{p}:tasks-of:{}", node.0))
            .arg(&node.0)
            .arg(bytes)
            .arg(id)
            .arg(30 * 86_400)
            .invoke_async(&mut self.con.clone())
            .await?;
        Ok(stored == 1)
    }

    /// The tasks a node ran (their ids).
    pub async fn tasks_of(&self, node: &NodeId) -> Result<Vec<String>, ClusterError> {
        let ids: Vec<String> = redis::cmd("SMEMBERS").arg(format!("{}:tasks-of:{}", self.prefix, node.0)).query_async(&mut self.con.clone()).await?;
        Ok(ids)
    }

    pub async fn task_file(&self, id: &str) -> Result<Option<Vec<u8>>, ClusterError> {
        let bytes: Option<Vec<u8>> = redis::cmd("GET").arg(format!("{}:taskfile:{id}", self.prefix)).query_async(&mut self.con.clone()).await?;
        Ok(bytes)
    }

    /// Records `node` as the task's node if it is still `expected`'s; returns its node then.
    pub async fn claim_task(&self, app: &str, id: &str, expected: &NodeId, node: &NodeId) -> Result<NodeId, ClusterError> {
        let owner: String = redis::Script::new(CLAIM).key(self.task_key(app, id)).arg(&expected.0).arg(&node.0).invoke_async(&mut self.con.clone()).await?;
        Ok(NodeId(owner))
    }

    /// Moves a task from one node's set to another's (after a takeover).
    pub async fn move_task(&self, from: &NodeId, to: &NodeId, id: &str) -> Result<(), ClusterError> {
        let p = &self.prefix;
        redis::cmd("SMOVE").arg(format!("{p}:tasks-of:{}", from.0)).arg(format!("{p}:tasks-of:{}", to.0)).arg(id).query_async::<i64>(&mut self.con.clone()).await?;
        Ok(())
    }

    pub async fn task_node(&self, app: &str, id: &str) -> Result<Option<NodeId>, ClusterError> {
        let node: Option<String> = redis::cmd("GET").arg(self.task_key(app, id)).query_async(&mut self.con.clone()).await?;
        Ok(node.map(NodeId))
    }

    /// The cluster's shared secret (nodes authenticate relay requests with it): made by the
    /// first node to ask (`candidate`), read by the others.
    pub async fn secret(&self, candidate: &str) -> Result<String, ClusterError> {
        let key = format!("{}:secret", self.prefix);
        let mut con = self.con.clone();
        redis::cmd("SET").arg(&key).arg(candidate).arg("NX").query_async::<Option<String>>(&mut con).await?;
        let secret: String = redis::cmd("GET").arg(&key).query_async(&mut con).await?;
        Ok(secret)
    }

    fn outbox_key(&self, node: &NodeId) -> String {
        format!("{}:outbox:{}", self.prefix, node.0)
    }

    /// Keeps a copy of an event waiting in `node`'s webhook outbox.
    pub async fn outbox_put(&self, node: &NodeId, id: &str, bytes: &[u8]) -> Result<(), ClusterError> {
        let key = self.outbox_key(node);
        redis::pipe().cmd("HSET").arg(&key).arg(id).arg(bytes).ignore().cmd("PEXPIRE").arg(&key).arg(OUTBOX_TTL_MS).ignore().query_async::<()>(&mut self.con.clone()).await?;
        Ok(())
    }

    /// The event left `node`'s outbox (delivered or dropped).
    pub async fn outbox_done(&self, node: &NodeId, id: &str) -> Result<(), ClusterError> {
        redis::cmd("HDEL").arg(self.outbox_key(node)).arg(id).query_async::<i64>(&mut self.con.clone()).await?;
        Ok(())
    }

    /// Takes what a dead node's outbox still held (the first caller gets it all, later ones
    /// nothing); the ids taken are noted for the node, should it come back (`outbox_taken`).
    pub async fn take_outbox(&self, node: &NodeId) -> Result<Vec<Vec<u8>>, ClusterError> {
        let v: Vec<Vec<u8>> =
            redis::Script::new(TAKE_HASH).key(self.outbox_key(node)).key(self.outbox_taken_key(node)).arg(OUTBOX_TTL_MS).invoke_async(&mut self.con.clone()).await?;
        Ok(v)
    }

    fn outbox_taken_key(&self, node: &NodeId) -> String {
        format!("{}:outbox-taken:{}", self.prefix, node.0)
    }

    /// The ids of this node's events another node took over while it was gone (read once).
    pub async fn outbox_taken(&self, node: &NodeId) -> Result<Vec<String>, ClusterError> {
        let key = self.outbox_taken_key(node);
        let (ids, _): (Vec<String>, i64) = redis::pipe().cmd("SMEMBERS").arg(&key).cmd("DEL").arg(&key).query_async(&mut self.con.clone()).await?;
        Ok(ids)
    }

    fn clock_key(&self, app: &str, room: &str) -> String {
        format!("{}:clock:{app}/{room}", self.prefix)
    }

    /// The last webhook `EventMsTs` any node gave the room.
    pub async fn room_clock(&self, app: &str, room: &str) -> Result<Option<i64>, ClusterError> {
        let v: Option<i64> = redis::cmd("GET").arg(self.clock_key(app, room)).query_async(&mut self.con.clone()).await?;
        Ok(v)
    }

    pub async fn raise_room_clock(&self, app: &str, room: &str, ms: i64) -> Result<(), ClusterError> {
        redis::Script::new(RAISE).key(self.clock_key(app, room)).arg(ms).invoke_async::<i64>(&mut self.con.clone()).await?;
        Ok(())
    }

    pub async fn set_draining(&self, id: &NodeId) -> Result<(), ClusterError> {
        redis::cmd("SET").arg(self.drain_key(id)).arg("1").query_async::<()>(&mut self.con.clone()).await?;
        Ok(())
    }

    pub async fn is_draining(&self, id: &NodeId) -> Result<bool, ClusterError> {
        let v: Option<String> = redis::cmd("GET").arg(self.drain_key(id)).query_async(&mut self.con.clone()).await?;
        Ok(v.is_some())
    }

    /// Clears a drain mark (a node started again under the same id takes rooms).
    pub async fn clear_draining(&self, id: &NodeId) -> Result<(), ClusterError> {
        redis::cmd("DEL").arg(self.drain_key(id)).query_async::<()>(&mut self.con.clone()).await?;
        Ok(())
    }

    /// The shared app store's version (0: never written).
    pub async fn apps_version(&self) -> Result<u64, ClusterError> {
        let v: Option<u64> = redis::cmd("GET").arg(format!("{}:apps:version", self.prefix)).query_async(&mut self.con.clone()).await?;
        Ok(v.unwrap_or(0))
    }

    /// The shared app store: its bytes, version and writer.
    pub async fn apps(&self) -> Result<Option<(Vec<u8>, u64, NodeId)>, ClusterError> {
        let p = &self.prefix;
        let (bytes, version, writer): (Option<Vec<u8>>, Option<u64>, Option<String>) =
            redis::pipe().get(format!("{p}:apps")).get(format!("{p}:apps:version")).get(format!("{p}:apps:writer")).query_async(&mut self.con.clone()).await?;
        Ok(bytes.map(|b| (b, version.unwrap_or(0), NodeId(writer.unwrap_or_default()))))
    }

    /// Writes the app store; returns its new version.
    pub async fn put_apps(&self, bytes: &[u8], writer: &NodeId) -> Result<u64, ClusterError> {
        let p = &self.prefix;
        let version: u64 = redis::Script::new(PUT_APPS)
            .key(format!("{p}:apps"))
            .key(format!("{p}:apps:version"))
            .key(format!("{p}:apps:writer"))
            .arg(bytes)
            .arg(&writer.0)
            .invoke_async(&mut self.con.clone())
            .await?;
        Ok(version)
    }
}
