//! `/v1/cluster/nodes`: the live nodes of the cluster (state, load, rooms), and draining one.
//! Without `[cluster]` both answer 404 `cluster_disabled`.

use super::AppState;
use crate::error::{ApiError, ApiResult, ErrorBody};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

fn cluster(state: &AppState) -> ApiResult<&std::sync::Arc<crate::cluster::Cluster>> {
    state.cluster.get().ok_or_else(|| ApiError::not_found("cluster_disabled", "this server is a single node (no [cluster] in its config)"))
}

fn unavailable(e: tessera_cluster::ClusterError) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "cluster_unavailable", format!("the cluster directory (Redis) did not answer: {e}"))
}

#[utoipa::path(get, operation_id = "cluster.nodes", path = "/v1/cluster/nodes", tag = "cluster",
    responses((status = 200, description = "`{node, items: [{id, url, rtmp, state, load: {cpu_cores, cores, busy_ratio, rooms, publishers, viewers, participants, send_bps}, max_viewers, version, started_ms, heartbeat_ms}]}`: every live node, `node` the one answering", body = Value), (status = "4XX", description = "Refused: the JSON error", body = ErrorBody), (status = "5XX", description = "Redis unreachable", body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn nodes(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let cluster = cluster(&state)?;
    let nodes = cluster.nodes().await.map_err(unavailable)?;
    Ok(Json(json!({"node": cluster.me, "items": nodes})))
}

#[utoipa::path(post, operation_id = "cluster.drain", path = "/v1/cluster/nodes/{id}/drain", tag = "cluster", params(("id" = String, Path, description = "node id")),
    responses((status = 202, description = "The node takes no new rooms from its next heartbeat; its rooms stay until they end", body = Value), (status = "4XX", description = "Refused: the JSON error (404 node_not_found)", body = ErrorBody), (status = "5XX", description = "Redis unreachable", body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn drain(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<(StatusCode, Json<Value>)> {
    let cluster = cluster(&state)?;
    let nodes = cluster.nodes().await.map_err(unavailable)?;
    let node = nodes.iter().find(|n| n.id.0 == id).ok_or_else(|| ApiError::not_found("node_not_found", format!("no live node '{id}'")))?;
    cluster.drain(&node.id).await.map_err(unavailable)?;
    Ok((StatusCode::ACCEPTED, Json(json!({"id": node.id, "state": "draining"}))))
}
