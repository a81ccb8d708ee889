//! Which room, user, stream and credential an RTMP publish names (PRODUCT.md §6.3).
//!
//! Encoders split the same URL differently: OBS sends app `push/{room}` and stream key
//! `{user}?token=…`; ffmpeg may send app `push` and stream `{room}/{user}?token=…`. So the path
//! is rebuilt as app + `/` + stream name (query removed) and must then read `push/{room}/{user}`,
//! or `push/{room}` with `userid` in the query. The query may come on the stream name or on the
//! `connect` tcUrl; the stream name's wins.

use tessera_media::StreamKind;
use tessera_model::{IdError, RoomId, UserId};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishTarget {
    pub room: RoomId,
    pub user: UserId,
    pub stream: StreamKind,
    /// `token=` or `usersig=`.
    pub token: Option<String>,
    /// `sdkappid=`, which must match the token's app when given.
    pub app: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("the publish path must be push/{{room}}/{{user}} or push/{{room}} with userid=, got '{0}'")]
    BadPath(String),
    #[error("{0}")]
    BadId(#[from] IdError),
    #[error("stream must be main or aux, got '{0}'")]
    BadStream(String),
}

impl TargetError {
    pub fn code(&self) -> &'static str {
        "invalid_parameter"
    }
}

fn query_of(s: &str) -> (&str, Option<&str>) {
    match s.split_once('?') {
        Some((path, q)) => (path, Some(q)),
        None => (s, None),
    }
}

fn param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').filter_map(|kv| kv.split_once('=')).find(|(k, _)| *k == name).map(|(_, v)| v)
}

impl PublishTarget {
    /// From the `connect` app and tcUrl and the `publish` stream name.
    pub fn parse(app: &str, stream_name: &str, tc_url: Option<&str>) -> Result<PublishTarget, TargetError> {
        let (app_path, app_query) = query_of(app);
        let (stream_path, stream_query) = query_of(stream_name);
        let tc_query = tc_url.and_then(|u| query_of(u).1);
        let get = |name: &str| param(stream_query, name).or_else(|| param(app_query, name)).or_else(|| param(tc_query, name)).filter(|v| !v.is_empty());
        let full = format!("{app_path}/{stream_path}");
        let segments: Vec<&str> = full.split('/').filter(|s| !s.is_empty()).collect();
        let (room, user) = match segments.as_slice() {
            ["push", room, user] => (*room, *user),
            ["push", room] => (*room, get("userid").ok_or_else(|| TargetError::BadPath(full.clone()))?),
            _ => return Err(TargetError::BadPath(full)),
        };
        let stream = match get("stream") {
            None => StreamKind::Main,
            Some(s) => StreamKind::parse(s).ok_or_else(|| TargetError::BadStream(s.to_owned()))?,
        };
        Ok(PublishTarget {
            room: RoomId::parse(room)?,
            user: UserId::parse(user)?,
            stream,
            token: get("token").or_else(|| get("usersig")).map(str::to_owned),
            app: get("sdkappid").map(str::to_owned),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn obs_form() {
        let t = PublishTarget::parse("push/demo", "obs?token=abc", Some("rtmp://h:1935/push/demo")).unwrap();
        assert_eq!((t.room.as_str(), t.user.as_str(), t.stream), ("demo", "obs", StreamKind::Main));
        assert_eq!(t.token.as_deref(), Some("abc"));
        assert_eq!(t.app, None);
    }

    #[test]
    fn ffmpeg_forms() {
        for (app, stream) in [("push", "demo/cam?token=t&stream=aux"), ("push/demo", "cam?token=t&stream=aux")] {
            let t = PublishTarget::parse(app, stream, None).unwrap();
            assert_eq!((t.room.as_str(), t.user.as_str(), t.stream), ("demo", "cam", StreamKind::Aux));
            assert_eq!(t.token.as_deref(), Some("t"));
        }
    }

    #[test]
    fn compatibility_form() {
        let t = PublishTarget::parse("push/", "class-1?sdkappid=default&userid=u1&usersig=sig", None).unwrap();
        assert_eq!((t.room.as_str(), t.user.as_str()), ("class-1", "u1"));
        assert_eq!(t.token.as_deref(), Some("sig"));
        assert_eq!(t.app.as_deref(), Some("default"));
    }

    #[test]
    fn query_on_tc_url() {
        let t = PublishTarget::parse("push/r?token=fromapp", "u", Some("rtmp://h/push/r?token=fromapp")).unwrap();
        assert_eq!(t.token.as_deref(), Some("fromapp"));
        let t = PublishTarget::parse("push/r", "u", Some("rtmp://h/push/r?token=tc")).unwrap();
        assert_eq!(t.token.as_deref(), Some("tc"));
        let t = PublishTarget::parse("push/r", "u?token=key", Some("rtmp://h/push/r?token=tc")).unwrap();
        assert_eq!(t.token.as_deref(), Some("key"));
    }

    #[test]
    fn refusals() {
        assert!(matches!(PublishTarget::parse("live", "stream", None), Err(TargetError::BadPath(_))));
        assert!(matches!(PublishTarget::parse("push", "r", None), Err(TargetError::BadPath(_))));
        assert!(matches!(PublishTarget::parse("push/r/u", "x", None), Err(TargetError::BadPath(_))));
        assert!(matches!(PublishTarget::parse("push/r", "u?stream=screen", None), Err(TargetError::BadStream(_))));
        assert!(matches!(PublishTarget::parse("push/r", "bad user", None), Err(TargetError::BadId(_))));
        let no_token = PublishTarget::parse("push/r", "u", None).unwrap();
        assert_eq!(no_token.token, None);
    }
}
