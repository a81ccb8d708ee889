//! Outbound connections made for a user (relay URLs, ingest URLs, mix-job images) go only to
//! addresses the [`OutboundPolicy`] permits (issue 10, defect 19). Every resolved address is
//! checked, and relays connect to the checked address itself, so a name cannot resolve to a
//! metadata service between check and use. A refused address, a refused connection and a
//! connection timeout all read the same ("cannot connect to host:port"), so an API key holder
//! cannot map internal ports by the error text; a name that does not resolve says so.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;
pub use tessera_model::outbound::OutboundPolicy;

static POLICY: OnceLock<OutboundPolicy> = OnceLock::new();

/// Sets the process's policy (once, at start; later calls are ignored).
pub fn install(policy: OutboundPolicy) {
    let _ = POLICY.set(policy);
}

pub fn policy() -> &'static OutboundPolicy {
    POLICY.get_or_init(OutboundPolicy::default)
}

/// Why an outbound connection was not made. `Unreachable` is deliberately one case for a
/// refused address, a refused connection and a timeout.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutboundError {
    #[error("cannot resolve host '{host}': {reason}")]
    Unresolved { host: String, reason: String },
    #[error("cannot connect to {host}:{port}")]
    Unreachable { host: String, port: u16 },
}

fn unreachable(host: &str, port: u16) -> OutboundError {
    OutboundError::Unreachable { host: host.to_owned(), port }
}

/// The host and port of `scheme://[user@]host[:port]/...` (default ports by scheme).
pub fn host_port(url: &str) -> Option<(String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let default = match scheme.to_ascii_lowercase().as_str() {
        "http" => 80,
        "https" => 443,
        "rtmp" => 1935,
        "rtmps" => 443,
        _ => return None,
    };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']')?;
        (h.to_string(), after.strip_prefix(':').map(|p| p.parse().ok()).unwrap_or(Some(default))?)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().ok()?),
            None => (authority.to_string(), default),
        }
    };
    (!host.is_empty()).then_some((host, port))
}

/// The permitted addresses of `host:port`, or the uniform error.
fn permitted(host: &str, port: u16, resolved: std::io::Result<Vec<SocketAddr>>) -> Result<Vec<SocketAddr>, OutboundError> {
    let all = resolved.map_err(|e| OutboundError::Unresolved { host: host.to_owned(), reason: e.to_string() })?;
    let ok: Vec<SocketAddr> = all.into_iter().filter(|a| policy().permits(a.ip())).collect();
    if ok.is_empty() {
        tracing::info!(%host, port, "outbound connection refused by the [security] outbound policy");
        return Err(unreachable(host, port));
    }
    Ok(ok)
}

/// Checks a URL before a library (FFmpeg) opens it: blocking DNS, then the policy.
pub fn check_url_blocking(url: &str) -> Result<(), OutboundError> {
    use std::net::ToSocketAddrs;
    let Some((host, port)) = host_port(url) else { return Ok(()) }; // data: URLs, no network
    permitted(&host, port, (host.as_str(), port).to_socket_addrs().map(Iterator::collect)).map(drop)
}

/// TCP to `host:port` through the policy, trying each permitted address within `timeout`.
pub async fn connect(host: &str, port: u16, timeout: Duration) -> Result<tokio::net::TcpStream, OutboundError> {
    let resolved =
        tokio::time::timeout(timeout, tokio::net::lookup_host((host, port))).await.map_err(|_| OutboundError::Unresolved { host: host.to_owned(), reason: "timed out".into() })?;
    let addrs = permitted(host, port, resolved.map(Iterator::collect))?;
    let deadline = tokio::time::Instant::now() + timeout;
    for addr in addrs {
        if let Ok(Ok(tcp)) = tokio::time::timeout_at(deadline, tokio::net::TcpStream::connect(addr)).await {
            return Ok(tcp);
        }
    }
    Err(unreachable(host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_host_and_port() {
        assert_eq!(host_port("rtmp://cdn.x/live/k"), Some(("cdn.x".into(), 1935)));
        assert_eq!(host_port("https://u:p@h.x:8443/a.m3u8?x=1"), Some(("h.x".into(), 8443)));
        assert_eq!(host_port("http://[fd00:ec2::254]/latest"), Some(("fd00:ec2::254".into(), 80)));
        assert_eq!(host_port("http://169.254.169.254/latest/meta-data"), Some(("169.254.169.254".into(), 80)));
        assert_eq!(host_port("data:image/png;base64,AAAA"), None);
    }

    #[test]
    fn metadata_addresses_are_refused_with_the_same_text_as_a_closed_port() {
        let e = check_url_blocking("http://169.254.169.254/latest/meta-data/").unwrap_err().to_string();
        assert_eq!(e, "cannot connect to 169.254.169.254:80");
        let e = check_url_blocking("http://[fd00:ec2::254]/").unwrap_err().to_string();
        assert_eq!(e, "cannot connect to fd00:ec2::254:80");
        assert!(check_url_blocking("rtmp://127.0.0.1:1/a/b").is_ok());
    }

    #[tokio::test]
    async fn refused_and_closed_read_alike() {
        let closed = connect("127.0.0.1", 1, Duration::from_secs(2)).await.unwrap_err();
        let refused = connect("169.254.169.254", 1, Duration::from_secs(2)).await.unwrap_err();
        assert_eq!(closed.to_string().replace("127.0.0.1", "X"), refused.to_string().replace("169.254.169.254", "X"));
    }
}
