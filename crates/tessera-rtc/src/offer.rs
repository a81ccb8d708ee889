//! A first, tolerant read of an SDP offer, before str0m negotiates it: which media sections it
//! has, which codecs each offers, and simulcast rids. It gives the spec's errors
//! (`sdp_invalid`, `no_common_codec`) with messages a user can act on, and tells the HTTP layer
//! which media privileges the offer needs. It accepts what OBS sends: upper-case `OPUS`, no
//! `rtcp-fb`, session-level ICE attributes, `a=group:LS`.

use tessera_media::Codec;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SectionKind {
    Audio,
    Video,
    Application,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferSection {
    pub kind: SectionKind,
    pub mid: Option<String>,
    /// Supported codecs offered, in the offer's order (H.264 only with packetization-mode=1).
    pub codecs: Vec<Codec>,
    /// Every encoding name offered, for error messages.
    pub offered: Vec<String>,
    pub rids: Vec<String>,
    /// Port 0: the offerer already rejected this section.
    pub rejected: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OfferSummary {
    pub sections: Vec<OfferSection>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OfferError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NoCommonCodec(String),
}

impl OfferError {
    pub fn code(&self) -> &'static str {
        match self {
            OfferError::Invalid(_) => "sdp_invalid",
            OfferError::NoCommonCodec(_) => "no_common_codec",
        }
    }
}

fn invalid(m: impl Into<String>) -> OfferError {
    OfferError::Invalid(m.into())
}

impl OfferSummary {
    pub fn parse(sdp: &str) -> Result<OfferSummary, OfferError> {
        let mut lines = sdp.lines().map(|l| l.trim_end_matches('\r')).filter(|l| !l.is_empty());
        if lines.next() != Some("v=0") {
            return Err(invalid("the SDP must start with v=0"));
        }
        let mut sections: Vec<OfferSection> = Vec::new();
        // Per section: payload type → (encoding name, fmtp).
        let mut rtpmaps: Vec<(u32, String)> = Vec::new();
        let mut fmtps: Vec<(u32, String)> = Vec::new();
        let close = |section: Option<&mut OfferSection>, rtpmaps: &mut Vec<(u32, String)>, fmtps: &mut Vec<(u32, String)>| {
            if let Some(s) = section {
                for (pt, name) in rtpmaps.iter() {
                    s.offered.push(name.clone());
                    let Some(codec) = Codec::from_sdp_name(name) else { continue };
                    if codec == Codec::H264 {
                        let fmtp = fmtps.iter().find(|(p, _)| p == pt).map(|(_, f)| f.as_str()).unwrap_or("");
                        if !fmtp.replace(' ', "").split(';').any(|kv| kv == "packetization-mode=1") {
                            continue;
                        }
                    }
                    if !s.codecs.contains(&codec) {
                        s.codecs.push(codec);
                    }
                }
            }
            rtpmaps.clear();
            fmtps.clear();
        };
        for line in lines {
            let Some((key, value)) = line.split_once('=') else {
                return Err(invalid(format!("'{}' is not an SDP line", truncate(line))));
            };
            if key.len() != 1 {
                return Err(invalid(format!("'{}' is not an SDP line", truncate(line))));
            }
            match key {
                "m" => {
                    close(sections.last_mut(), &mut rtpmaps, &mut fmtps);
                    let mut parts = value.split_whitespace();
                    let media = parts.next().unwrap_or("");
                    let port = parts.next().ok_or_else(|| invalid("an m= line has no port"))?;
                    let port: u32 = port.split('/').next().unwrap_or("").parse().map_err(|_| invalid("an m= line has a bad port"))?;
                    let kind = match media {
                        "audio" => SectionKind::Audio,
                        "video" => SectionKind::Video,
                        "application" => SectionKind::Application,
                        _ => SectionKind::Other,
                    };
                    sections.push(OfferSection { kind, mid: None, codecs: Vec::new(), offered: Vec::new(), rids: Vec::new(), rejected: port == 0 });
                }
                "a" => {
                    let Some(section) = sections.last_mut() else { continue };
                    if let Some(mid) = value.strip_prefix("mid:") {
                        section.mid = Some(mid.trim().to_owned());
                    } else if let Some(rest) = value.strip_prefix("rtpmap:") {
                        let mut it = rest.split_whitespace();
                        let pt = it.next().and_then(|p| p.parse::<u32>().ok()).ok_or_else(|| invalid("an rtpmap has a bad payload type"))?;
                        let name = it.next().and_then(|enc| enc.split('/').next()).ok_or_else(|| invalid("an rtpmap has no encoding"))?;
                        rtpmaps.push((pt, name.to_owned()));
                    } else if let Some(rest) = value.strip_prefix("fmtp:") {
                        if let Some((pt, params)) = rest.split_once(' ') {
                            if let Ok(pt) = pt.parse::<u32>() {
                                fmtps.push((pt, params.trim().to_owned()));
                            }
                        }
                    } else if let Some(rest) = value.strip_prefix("rid:") {
                        let mut it = rest.split_whitespace();
                        if let (Some(id), Some("send")) = (it.next(), it.next()) {
                            section.rids.push(id.to_owned());
                        }
                    }
                }
                _ => {}
            }
        }
        close(sections.last_mut(), &mut rtpmaps, &mut fmtps);
        if sections.is_empty() {
            return Err(invalid("the SDP has no media section"));
        }
        Ok(OfferSummary { sections })
    }

    pub fn media(&self) -> impl Iterator<Item = &OfferSection> {
        self.sections.iter().filter(|s| matches!(s.kind, SectionKind::Audio | SectionKind::Video) && !s.rejected)
    }

    /// Whether the offer has a section of `kind` that is not rejected (media or data channels).
    pub fn has(&self, kind: SectionKind) -> bool {
        self.sections.iter().any(|s| s.kind == kind && !s.rejected)
    }

    /// The checks of a WHIP offer: at most one audio and one video section, each with a codec
    /// Tessera carries.
    pub fn check_publish(&self) -> Result<(), OfferError> {
        for kind in [SectionKind::Audio, SectionKind::Video] {
            if self.media().filter(|s| s.kind == kind).count() > 1 {
                return Err(invalid(format!("a WHIP offer has at most one {} section", kind_name(kind))));
            }
        }
        if self.media().next().is_none() {
            return Err(invalid("the offer has no audio or video section"));
        }
        for s in self.media() {
            if s.codecs.is_empty() {
                return Err(no_codec(s));
            }
        }
        Ok(())
    }

    /// The checks of a WHEP offer: at least one section with a codec Tessera carries.
    pub fn check_play(&self) -> Result<(), OfferError> {
        let mut media = self.media().peekable();
        let Some(first) = media.peek().copied() else {
            return Err(invalid("the offer has no audio or video section"));
        };
        if self.media().all(|s| s.codecs.is_empty()) {
            return Err(no_codec(first));
        }
        Ok(())
    }
}

fn kind_name(kind: SectionKind) -> &'static str {
    match kind {
        SectionKind::Audio => "audio",
        SectionKind::Video => "video",
        SectionKind::Application => "application",
        SectionKind::Other => "other",
    }
}

fn no_codec(s: &OfferSection) -> OfferError {
    let expected = if s.kind == SectionKind::Audio { "Opus" } else { "H264 (packetization-mode=1) or VP8" };
    OfferError::NoCommonCodec(format!("the {} section offers [{}]; Tessera needs {expected}", kind_name(s.kind), s.offered.join(", ")))
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const OBS: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\na=group:LS 0 1\r\na=ice-ufrag:abcd\r\na=ice-pwd:0123456789012345678901\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendonly\r\na=rtpmap:111 OPUS/48000/2\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\na=sendonly\r\na=rtpmap:96 H264/90000\r\na=fmtp:96 profile-level-id=64001f;packetization-mode=1;level-asymmetry-allowed=1\r\n";

    #[test]
    fn obs_offer_is_understood() {
        let s = OfferSummary::parse(OBS).unwrap();
        assert_eq!(s.sections.len(), 2);
        assert_eq!(s.sections[0].codecs, vec![Codec::Opus]);
        assert_eq!(s.sections[1].codecs, vec![Codec::H264]);
        assert_eq!(s.sections[1].mid.as_deref(), Some("1"));
        s.check_publish().unwrap();
    }

    #[test]
    fn simulcast_rids() {
        let sdp = "v=0\nm=video 9 UDP/TLS/RTP/SAVPF 96\na=mid:v\na=rtpmap:96 VP8/90000\na=rid:h send\na=rid:m send\na=rid:l send\na=simulcast:send h;m;l\n";
        let s = OfferSummary::parse(sdp).unwrap();
        assert_eq!(s.sections[0].rids, vec!["h", "m", "l"]);
    }

    #[test]
    fn refusals() {
        assert_eq!(OfferSummary::parse("v=0").unwrap_err().code(), "sdp_invalid");
        assert_eq!(OfferSummary::parse("").unwrap_err().code(), "sdp_invalid");
        assert_eq!(OfferSummary::parse("hello").unwrap_err().code(), "sdp_invalid");
        assert_eq!(OfferSummary::parse("v=0\nm=audio\n").unwrap_err().code(), "sdp_invalid");
        assert_eq!(OfferSummary::parse("v=0\nm=audio x RTP 1\n").unwrap_err().code(), "sdp_invalid");
        let two_video = "v=0\nm=video 9 RTP 96\na=rtpmap:96 VP8/90000\nm=video 9 RTP 96\na=rtpmap:96 VP8/90000\n";
        assert_eq!(OfferSummary::parse(two_video).unwrap().check_publish().unwrap_err().code(), "sdp_invalid");
        let vp9 = "v=0\nm=video 9 RTP 98\na=rtpmap:98 VP9/90000\n";
        let e = OfferSummary::parse(vp9).unwrap().check_publish().unwrap_err();
        assert_eq!(e.code(), "no_common_codec");
        assert!(e.to_string().contains("VP9"), "{e}");
        // H.264 in packetization mode 0 only is not carried.
        let pm0 = "v=0\nm=video 9 RTP 97\na=rtpmap:97 H264/90000\na=fmtp:97 packetization-mode=0\n";
        assert_eq!(OfferSummary::parse(pm0).unwrap().check_play().unwrap_err().code(), "no_common_codec");
        // A play offer with one usable section is fine.
        let mixed = "v=0\nm=audio 9 RTP 0\na=rtpmap:0 PCMU/8000\nm=video 9 RTP 96\na=rtpmap:96 VP8/90000\n";
        OfferSummary::parse(mixed).unwrap().check_play().unwrap();
        assert_eq!(OfferSummary::parse(mixed).unwrap().check_publish().unwrap_err().code(), "no_common_codec");
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 0x2545F4914F6CDD1Du64;
        for len in 0..400 {
            let mut bytes = b"v=0\n".to_vec();
            for _ in 0..len {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                bytes.push(b"m=audio 9 rtpmap:fmtp:rid:mid send0 \n/;="[(seed % 36) as usize]);
            }
            let _ = OfferSummary::parse(&String::from_utf8_lossy(&bytes)).map(|s| (s.check_play(), s.check_publish()));
        }
    }
}
