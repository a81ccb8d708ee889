//! Recordings: single and mixed, pause, crash and restart, auto recording, a relative data dir.

use super::*;

#[test]
fn single_and_mixed_recordings_with_a_pause_probe_and_match_the_naming() {
    let dir = TempDir::new("rec");
    let data = dir.path().join("data");
    let server = Server::start(&data, &[]);
    let key = std::fs::read_to_string(data.join("admin.key")).unwrap().trim().to_owned();
    let port = rtmp_port(&server);
    let cam = token(&data, "rec", "cam");
    let mut source = publisher(&format!("rtmp://127.0.0.1:{port}/push/rec/cam?token={cam}"), 90);
    let hooks = WebhookReceiver::start(dir.path(), "k3yA", &[]);
    hooks.subscribe(&server, &key, "k3yA");
    std::thread::sleep(Duration::from_secs(2));
    let recs = server.url("/v1/recordings");
    post_json(&recs, Some(&key), &json!({"room": "rec", "format": "avi"})).expect_error(400, "invalid_parameter");
    post_json(&recs, Some(&key), &json!({"room": "rec", "prefix": "../x"})).expect_error(400, "invalid_parameter");
    post_json(&recs, Some(&key), &json!({"room": "rec", "mode": "mixed"})).expect_error(400, "invalid_parameter");

    let job = post_json(&server.url("/v1/mix-jobs"), Some(&key), &json!({"room": "rec", "encode": {"template": "360p"}})).json();
    let job_id = job["id"].as_str().unwrap().to_owned();
    let single = post_json(&recs, Some(&key), &json!({"room": "rec", "format": "hls+mp4", "hls": {"segment_s": 2}}));
    assert_eq!(single.status, 201, "{}", single.body);
    let single_id = single.json()["id"].as_str().unwrap().to_owned();
    let mixed = post_json(&recs, Some(&key), &json!({"room": "rec", "mode": "mixed", "mix_job_id": job_id, "format": "hls+mp4", "hls": {"segment_s": 2}}));
    assert_eq!(mixed.status, 201, "{}", mixed.body);
    let mixed_id = mixed.json()["id"].as_str().unwrap().to_owned();
    get(&server.url(&format!("/v1/recordings/{single_id}/result")), Some(&key)).expect_error(409, "invalid_state");
    post_json(&recs, Some(&key), &json!({"room": "rec", "format": "aac"})).expect_error(400, "invalid_parameter");
    let audio = post_json(&recs, Some(&key), &json!({"room": "rec", "content": "audio", "format": "aac", "hls": {"segment_s": 2}}));
    assert_eq!(audio.status, 201, "{}", audio.body);
    let audio_id = audio.json()["id"].as_str().unwrap().to_owned();
    // A mixed recording that owns its mix job.
    let owned =
        post_json(&recs, Some(&key), &json!({"room": "rec", "mode": "mixed", "mix": {"encode": {"template": "360p"}, "layout": {"template": "float"}}, "hls": {"segment_s": 2}}));
    assert_eq!(owned.status, 201, "{}", owned.body);
    let owned_id = owned.json()["id"].as_str().unwrap().to_owned();
    let owned_job = owned.json()["mix_job_id"].as_str().expect("the recording owns a mix job").to_owned();
    assert_eq!(get(&server.url(&format!("/v1/mix-jobs/{owned_job}")), Some(&key)).json()["layout"]["template"], "float");
    // The recording's PATCH changes its own job's layout; another recording has none to change.
    let patch = br#"{"mix":{"layout":{"template":"nine_grid"}}}"#;
    let r = request("PATCH", &server.url(&format!("/v1/recordings/{owned_id}")), Some(&key), Some(("application/json", patch)), &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(get(&server.url(&format!("/v1/mix-jobs/{owned_job}")), Some(&key)).json()["layout"]["template"], "nine_grid");
    request("PATCH", &server.url(&format!("/v1/recordings/{single_id}")), Some(&key), Some(("application/json", patch)), &[]).expect_error(400, "invalid_parameter");
    request("POST", &server.url(&format!("/v1/recordings/{single_id}/resume")), Some(&key), None, &[]).expect_error(409, "invalid_state");

    std::thread::sleep(Duration::from_secs(8));
    for id in [&single_id, &mixed_id] {
        let r = request("POST", &server.url(&format!("/v1/recordings/{id}/pause")), Some(&key), None, &[]);
        assert_eq!(r.json()["state"], "PAUSED", "{}", r.body);
    }
    std::thread::sleep(Duration::from_secs(5));
    for id in [&single_id, &mixed_id] {
        let r = request("POST", &server.url(&format!("/v1/recordings/{id}/resume")), Some(&key), None, &[]);
        assert_eq!(r.json()["state"], "RECORDING", "{}", r.body);
    }
    std::thread::sleep(Duration::from_secs(7));
    for id in [&single_id, &mixed_id, &audio_id, &owned_id] {
        let r = request("DELETE", &server.url(&format!("/v1/recordings/{id}")), Some(&key), None, &[]);
        assert_eq!(r.status, 200, "{}", r.body);
    }
    // The owned job stopped with its recording, which has the mix's playlist.
    poll(&server, &key, &format!("/v1/mix-jobs/{owned_job}"), Duration::from_secs(10), |v| v["state"] == "STOPPED");
    let owned_result = poll(&server, &key, &format!("/v1/recordings/{owned_id}"), Duration::from_secs(30), |v| v["state"] == "FINISHED");
    assert!(owned_result["files"].as_array().unwrap().iter().any(|f| f["file_name"] == "default_cmVj.m3u8"), "{owned_result}");
    // Audio only as ADTS: one .aac with the MP4 name, nothing else kept.
    poll(&server, &key, &format!("/v1/recordings/{audio_id}"), Duration::from_secs(30), |v| v["state"] == "FINISHED");
    let result = get(&server.url(&format!("/v1/recordings/{audio_id}/result")), Some(&key)).json();
    let files: Vec<&str> = result["Files"].as_array().unwrap().iter().map(|f| f["FileName"].as_str().unwrap()).collect();
    assert_eq!(files, vec!["default_cmVj__UserId_s_Y2Ft__UserId_e_main.aac"], "{result}");
    assert_eq!(result["VideoInfos"][0]["VideoFormat"], "aac");
    let url = format!("{}?token={}", server.url(result["VideoInfos"][0]["VideoUrl"].as_str().unwrap()), token(&data, "rec", "viewer"));
    let (codecs, duration) = probe_url(&url);
    assert_eq!(codecs, vec!["aac".to_string()]);
    // The task clock runs from the first sample: 20 s minus the pause, minus start-up.
    assert!(duration > 10.0, "{duration}");
    let viewer = token(&data, "rec", "viewer");
    for (id, mixed) in [(&single_id, false), (&mixed_id, true)] {
        let path = format!("/v1/recordings/{id}");
        poll(&server, &key, &path, Duration::from_secs(30), |v| v["state"] == "FINISHED");
        let result = get(&server.url(&format!("{path}/result")), Some(&key)).json();
        assert_eq!(result["Status"], "ok", "{result}");
        assert_eq!(result["RecordUserId"], format!("rec_{id}"));
        // 8 s + 7 s recorded; the 5 s pause is not in the total.
        let total = result["TotalTime"].as_i64().unwrap();
        assert!((13_500..=17_000).contains(&total), "TotalTime {total} ms: {result}");
        let files = result["Files"].as_array().unwrap();
        let names: Vec<&str> = files.iter().map(|f| f["FileName"].as_str().unwrap()).collect();
        let stem = if mixed { "default_cmVj".to_string() } else { "default_cmVj__UserId_s_Y2Ft__UserId_e_main".to_string() };
        for n in &names {
            assert!(n.starts_with(&stem), "{n}");
            let rest = &n[stem.len()..];
            let ok = if mixed {
                rest == ".m3u8" || rest == ".mp4" || rest.strip_prefix('_').and_then(|r| r.strip_suffix(".ts")).is_some_and(is_stamp)
            } else {
                ["_video.m3u8", "_audio.m3u8", ".mp4"].contains(&rest)
                    || ["_video_", "_audio_"].iter().any(|t| rest.strip_prefix(t).and_then(|r| r.strip_suffix(".ts")).is_some_and(is_stamp))
            };
            assert!(ok, "file name {n} does not follow RECORDING.md §4");
        }
        let playlists: Vec<&&str> = names.iter().filter(|n| n.ends_with(".m3u8")).collect();
        assert_eq!(playlists.len(), if mixed { 1 } else { 2 }, "{names:?}");
        for p in &playlists {
            let url = files.iter().find(|f| f["FileName"] == ***p).unwrap()["Url"].as_str().unwrap().to_owned();
            let text = get(&server.url(&url), Some(&key)).body;
            for tag in [
                "#EXTM3U",
                "#EXT-X-VERSION:3",
                "#EXT-X-ALLOW-CACHE:NO",
                "#EXT-X-MEDIA-SEQUENCE:0",
                // ceil(1.5 × segment_s) (RECORDING.md §4.1).
                "#EXT-X-TARGETDURATION:3",
                "#EXT-X-TRTC-START-REC-TIME:",
                "#EXT-X-DISCONTINUITY",
                "#EXT-X-ENDLIST",
            ] {
                assert!(text.contains(tag), "{p} lacks {tag}:\n{text}");
            }
            assert_eq!(text.contains("#EXT-X-TRTC-VIDEO-METADATA:WIDTH:"), !p.contains("_audio"), "{text}");
            assert!(text.lines().filter(|l| l.starts_with("#EXTINF:")).all(|l| l.ends_with(',') && l.split(':').nth(1).unwrap().split('.').nth(1).unwrap().len() == 4), "{text}");
        }
        // Every file probes over HTTP (a user token of the room; playlists get their segment
        // URIs rewritten with it); the MP4 is H.264 + AAC as long as the task clock.
        for f in files {
            let url = format!("{}?token={viewer}", server.url(f["Url"].as_str().unwrap()));
            let (codecs, duration) = probe_url(&url);
            assert!(!codecs.is_empty(), "{} does not probe", f["FileName"]);
            if f["FileName"].as_str().unwrap().ends_with(".mp4") {
                assert_eq!(codecs, vec!["aac".to_string(), "h264".to_string()], "{}", f["FileName"]);
                let expected = total as f64 / 1000.0;
                assert!((duration - expected).abs() <= expected * 0.05 + 0.3, "MP4 {duration:.2} s, task clock {expected:.2} s");
            }
        }
        assert_eq!(result["VideoInfos"].as_array().unwrap().len(), 1, "{result}");
        assert_eq!(result["VideoInfos"][0]["VideoFormat"], "mp4");
        assert_eq!(result["VideoInfos"][0]["VideoType"], if mixed { 2 } else { 0 });

        // The task's events (group 3) in EventMsTs order: started, storage ready, each
        // playlist's first segment (307 + 304), stopped, stored, the MP4, its commit, finished.
        let playlist_count = playlists.len();
        let events = hooks.wait_for(Duration::from_secs(10), "the recording's events", |e| codes_of(e, id).last() == Some(&312));
        let mut expected = vec![301, 303];
        for _ in 0..playlist_count {
            expected.extend([307, 304]);
        }
        expected.extend([302, 305, 310, 311, 312]);
        assert_eq!(codes_of(&events, id), expected);
        let mine: Vec<&Value> = events.iter().filter(|e| e["EventInfo"]["TaskId"] == id.as_str()).collect();
        assert!(mine.iter().all(|e| e["EventGroupId"] == 3 && e["EventInfo"]["UserId"] == format!("rec_{id}") && e["EventInfo"]["RoomId"] == "rec"));
        let payload = |code: u64| mine.iter().find(|e| e["EventType"] == code).unwrap()["EventInfo"]["Payload"].clone();
        let slice = payload(307);
        let first_ts = slice["FileName"].as_str().unwrap();
        assert!(first_ts.ends_with(".ts") && names.contains(&first_ts), "{slice}");
        let begin = files.iter().find(|f| f["FileName"].as_str().unwrap().ends_with(".m3u8") && f["MediaId"] == slice["MediaId"] && f["TrackType"] == slice["TrackType"]).unwrap()
            ["BeginTimeStamp"]
            .clone();
        assert_eq!(slice["BeginTimeStamp"], begin, "307's BeginTimeStamp is the playlist's start");
        assert_eq!(slice["MediaId"], if mixed { "mix" } else { "main" });
        assert!(payload(304)["FileList"][0].as_str().unwrap().ends_with(".m3u8"));
        assert_eq!(payload(302)["LeaveCode"], 0);
        assert_eq!(payload(305)["Status"], 0);
        let mp4 = result["VideoInfos"][0]["VideoUrl"].as_str().unwrap().rsplit('/').next().unwrap().to_owned();
        assert_eq!(payload(310)["Status"], 0);
        assert_eq!(payload(310)["FileList"], json!([mp4]));
        assert_eq!(payload(311)["FileInfo"]["FileName"], mp4.as_str());
        assert_eq!(payload(312)["Status"], 0);
        assert_eq!(payload(312)["Result"]["TotalTime"], result["TotalTime"]);
    }
    // The owned mix job ended because its recording did (LeaveCode 105).
    let events = hooks.wait_for(Duration::from_secs(10), "the owned job's 802", |e| codes_of(e, &owned_job).contains(&802));
    let stop = events.iter().find(|e| e["EventType"] == 802 && e["EventInfo"]["TaskId"] == owned_job.as_str()).unwrap();
    assert_eq!(stop["EventInfo"]["Payload"]["LeaveCode"], 105);
    assert!(hooks.requests().iter().all(|r| r["sign_ok"] == true));
    // `tessera merge` turns the single-stream recording into one A/V MP4 for cam: the 5 s pause
    // is under the 15 s segment gap, so it is one segment, its hole filled.
    let task_dir = data.join("recordings").join("default").join(&single_id);
    let merged = dir.path().join("merged");
    let (status, out, err) = run_cli(&["merge", "-f", task_dir.to_str().unwrap(), "-o", merged.to_str().unwrap()]);
    assert!(status.success(), "{err}");
    assert!(err.contains("100%"), "progress on stderr: {err}");
    let outputs: Vec<&str> = out.lines().collect();
    assert_eq!(outputs.len(), 1, "{out}");
    let name = Path::new(outputs[0]).file_name().unwrap().to_str().unwrap().to_owned();
    assert!(name.starts_with("cam_") && name.ends_with("_av.mp4"), "{name}");
    let (codecs, duration) = probe(&PathBuf::from(outputs[0]));
    assert_eq!(codecs, vec!["aac".to_string(), "h264".to_string()], "{name}");
    assert!((17.0..=23.5).contains(&duration), "8 s + 5 s pause + 7 s: {duration:.1} s");
    let (status, _, err) = run_cli(&["merge", "-f", dir.path().to_str().unwrap(), "-o", merged.to_str().unwrap()]);
    assert!(!status.success() && err.contains("no single-stream recording"), "{err}");
    // Range requests.
    let result = get(&server.url(&format!("/v1/recordings/{single_id}/result")), Some(&key)).json();
    let mp4 = result["VideoInfos"][0]["VideoUrl"].as_str().unwrap().to_owned();
    let r = request("GET", &server.url(&mp4), Some(&key), None, &[("Range", "bytes=0-99")]);
    assert_eq!((r.status, r.header("content-length")), (206, Some("100")), "{:?}", r.headers);
    assert!(r.header("content-range").is_some_and(|c| c.starts_with("bytes 0-99/")));
    get(&server.url(&mp4), None).expect_error(401, "api_key_missing");
    let _ = source.kill();
    let _ = source.wait();
}

#[test]
fn a_recording_survives_kill_9_with_ha1_files_and_loses_nothing() {
    let dir = TempDir::new("rec-crash");
    let data = dir.path().join("data");
    let server = Server::start(&data, &[]);
    let key = std::fs::read_to_string(data.join("admin.key")).unwrap().trim().to_owned();
    let cam = token(&data, "crash", "cam");
    let port = rtmp_port(&server);
    let mut source = publisher(&format!("rtmp://127.0.0.1:{port}/push/crash/cam?token={cam}"), 60);
    let hooks = WebhookReceiver::start(dir.path(), "k3yA", &[]);
    hooks.subscribe(&server, &key, "k3yA");
    std::thread::sleep(Duration::from_secs(2));
    let r = post_json(&server.url("/v1/recordings"), Some(&key), &json!({"room": "crash", "format": "hls+mp4", "hls": {"segment_s": 2}, "max_idle_time": 60}));
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    // A mix job and a relay are live too: both come back with their ids.
    let job_id = post_json(&server.url("/v1/mix-jobs"), Some(&key), &json!({"room": "crash", "encode": {"template": "360p"}})).json()["id"].as_str().unwrap().to_owned();
    let cdn_port = free_port();
    let cdn_url = format!("rtmp://127.0.0.1:{cdn_port}/live/key");
    let r = post_json(&server.url("/v1/relays"), Some(&key), &json!({"room": "crash", "source": {"user": "cam"}, "urls": [&cdn_url]}));
    assert_eq!(r.status, 201, "{}", r.body);
    let relay_id = r.json()["id"].as_str().unwrap().to_owned();
    std::thread::sleep(Duration::from_secs(7));
    let before = get(&server.url(&format!("/v1/recordings/{id}")), Some(&key)).json();
    let written_before: Vec<String> = before["files"].as_array().unwrap().iter().map(|f| f["file_name"].as_str().unwrap().to_owned()).collect();
    assert!(written_before.len() >= 4, "{before}");
    server.crash();
    let _ = source.kill();
    let _ = source.wait();

    let server = Server::start(&data, &[]);
    let port = rtmp_port(&server);
    let path = format!("/v1/recordings/{id}");
    // Issue 10, defect 14: what the first run wrote is listed from the moment the task
    // resumes (it listed nothing until the task finished), before any new media arrives.
    let resumed = poll(&server, &key, &path, Duration::from_secs(10), |v| v["files"].as_array().is_some_and(|f| !f.is_empty()));
    let listed: Vec<&str> = resumed["files"].as_array().unwrap().iter().map(|f| f["file_name"].as_str().unwrap()).collect();
    for name in written_before.iter().filter(|n| n.ends_with(".m3u8")) {
        assert!(listed.contains(&name.as_str()), "{name} is not listed after the restart: {listed:?}");
    }
    let mut source = publisher(&format!("rtmp://127.0.0.1:{port}/push/crash/cam?token={cam}"), 60);
    poll(&server, &key, &path, Duration::from_secs(20), |v| {
        v["state"] == "RECORDING" && v["files"].as_array().is_some_and(|f| f.iter().any(|x| x["file_name"].as_str().unwrap().starts_with("ha1_")))
    });
    let job = poll(&server, &key, &format!("/v1/mix-jobs/{job_id}"), Duration::from_secs(20), |v| v["state"] == "RUNNING");
    assert_eq!(job["user"], format!("mix_{job_id}"));
    let received = dir.path().join("after-crash.flv");
    let receiver = cdn(cdn_port, &received);
    poll(&server, &key, &format!("/v1/relays/{relay_id}"), Duration::from_secs(30), |v| v["state"] == "ACTIVE" && v["urls"][0]["status"] == 2);
    std::thread::sleep(Duration::from_secs(5));
    let r = request("DELETE", &server.url(&path), Some(&key), None, &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    poll(&server, &key, &path, Duration::from_secs(30), |v| v["state"] == "FINISHED");
    // Events: the first run's start, the restart as 306 (no second 301), then the end.
    let events = hooks.wait_for(Duration::from_secs(10), "the recording's 312", |e| codes_of(e, &id).contains(&312));
    let codes = codes_of(&events, &id);
    assert_eq!(codes.iter().filter(|c| **c == 301).count(), 1, "{codes:?}");
    let failover = events.iter().find(|e| e["EventType"] == 306 && e["EventInfo"]["TaskId"] == id.as_str()).expect("event 306");
    assert_eq!(failover["EventInfo"]["Payload"]["Status"], 0);
    let at = |c: u64| codes.iter().position(|x| *x == c).unwrap();
    assert!(at(301) < at(306) && at(306) < at(302) && at(302) < at(312), "{codes:?}");
    let result = get(&server.url(&format!("{path}/result")), Some(&key)).json();
    assert_eq!(result["Status"], "ok", "{result}");
    let names: Vec<String> = result["Files"].as_array().unwrap().iter().map(|f| f["FileName"].as_str().unwrap().to_owned()).collect();
    // Nothing written before the crash is lost; the continuation is in ha1_ files.
    for n in &written_before {
        assert!(names.contains(n), "{n} was lost: {names:?}");
    }
    assert!(names.iter().any(|n| n.starts_with("ha1_") && n.ends_with("_video.m3u8")), "{names:?}");
    assert!(names.iter().any(|n| n.starts_with("ha1_") && n.ends_with(".ts")), "{names:?}");
    let old_playlist = names.iter().find(|n| n.ends_with("_video.m3u8") && !n.starts_with("ha")).unwrap();
    let text = get(&server.url(&format!("/files/default/{id}/{old_playlist}")), Some(&key)).body;
    assert!(text.contains("#EXT-X-ENDLIST"), "the interrupted playlist is closed:\n{text}");
    // The MP4 joins both parts: longer than either.
    let mp4 = result["VideoInfos"][0]["VideoUrl"].as_str().unwrap().to_owned();
    let (codecs, duration) = probe_url(&format!("{}?token={cam}", server.url(&mp4)));
    assert_eq!(codecs, vec!["aac".to_string(), "h264".to_string()]);
    assert!(duration >= 9.0, "MP4 of both parts: {duration:.1} s");
    for n in names.iter().filter(|n| n.ends_with(".ts")) {
        let (codecs, _) = probe_url(&format!("{}?token={cam}", server.url(&format!("/files/default/{id}/{n}"))));
        assert!(!codecs.is_empty(), "{n} does not probe");
    }
    let r = request("DELETE", &server.url(&format!("/v1/relays/{relay_id}")), Some(&key), None, &[]);
    assert_eq!(r.json()["state"], "STOPPED", "{}", r.body);
    interrupt(receiver);
    let (codecs, _) = probe(&received);
    assert_eq!(codecs, vec!["aac".to_string(), "h264".to_string()], "the resumed relay delivers");
    let _ = source.kill();
    let _ = source.wait();
}

#[test]
fn auto_recording_starts_with_the_first_publication_and_ends_after_resume_wait() {
    let dir = TempDir::new("auto-rec");
    let data = dir.path().join("data");
    let server = Server::start(&data, &[]);
    let key = std::fs::read_to_string(data.join("admin.key")).unwrap().trim().to_owned();
    let body = br#"{"auto_recording":{"enabled":true,"format":"hls","resume_wait_s":2}}"#;
    let r = request("PATCH", &server.url("/v1/app"), Some(&key), Some(("application/merge-patch+json", body)), &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    std::thread::sleep(Duration::from_millis(1500));
    let cam = token(&data, "auto", "cam");
    let mut source = publisher(&format!("rtmp://127.0.0.1:{}/push/auto/cam?token={cam}", rtmp_port(&server)), 6);
    let list = poll(&server, &key, "/v1/recordings", Duration::from_secs(10), |v| {
        v["items"].as_array().is_some_and(|a| a.iter().any(|r| r["room"] == "auto" && r["state"] == "RECORDING"))
    });
    let id = list["items"].as_array().unwrap().iter().find(|r| r["room"] == "auto").unwrap()["id"].as_str().unwrap().to_owned();
    let _ = source.wait();
    // The publisher is gone for longer than resume_wait_s: the task ends on its own.
    let done = poll(&server, &key, &format!("/v1/recordings/{id}"), Duration::from_secs(20), |v| v["state"] == "FINISHED");
    assert_eq!(done["leave_code"], 99, "{done}");
    let names: Vec<&str> = done["files"].as_array().unwrap().iter().map(|f| f["file_name"].as_str().unwrap()).collect();
    assert!(names.iter().any(|n| n.ends_with("__UserId_s_Y2Ft__UserId_e_main_video.m3u8")), "{names:?}");
    assert_eq!(get(&server.url("/v1/recordings"), Some(&key)).json()["items"].as_array().unwrap().len(), 1, "one task for one publication");
}

#[test]
fn a_graceful_restart_continues_a_recording() {
    let dir = TempDir::new("rec-restart");
    let data = dir.path().join("data");
    let server = Server::start(&data, &[]);
    let key = std::fs::read_to_string(data.join("admin.key")).unwrap().trim().to_owned();
    let hooks = WebhookReceiver::start(dir.path(), "k3yA", &[]);
    hooks.subscribe(&server, &key, "k3yA");
    let cam = token(&data, "upgrade", "cam");
    let mut source = publisher(&format!("rtmp://127.0.0.1:{}/push/upgrade/cam?token={cam}", rtmp_port(&server)), 60);
    std::thread::sleep(Duration::from_secs(2));
    let r = post_json(&server.url("/v1/recordings"), Some(&key), &json!({"room": "upgrade", "format": "hls+mp4", "hls": {"segment_s": 2}, "max_idle_time": 60}));
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/recordings/{id}");
    poll(&server, &key, &path, Duration::from_secs(15), |v| v["files"].as_array().is_some_and(|f| f.len() >= 4));
    // SIGTERM (an upgrade): the server exits cleanly and the task stays live.
    assert!(server.stop().success());
    let _ = source.kill();
    let _ = source.wait();
    let saved: Value = serde_json::from_slice(&std::fs::read(data.join("tasks").join(format!("{id}.json"))).unwrap()).unwrap();
    assert_eq!(saved["state"], "RECORDING", "{saved}");

    let server = Server::start(&data, &[]);
    let mut source = publisher(&format!("rtmp://127.0.0.1:{}/push/upgrade/cam?token={cam}", rtmp_port(&server)), 60);
    poll(&server, &key, &path, Duration::from_secs(20), |v| {
        v["state"] == "RECORDING" && v["files"].as_array().is_some_and(|f| f.iter().any(|x| x["file_name"].as_str().unwrap().starts_with("ha1_")))
    });
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(request("DELETE", &server.url(&path), Some(&key), None, &[]).status, 200);
    poll(&server, &key, &path, Duration::from_secs(30), |v| v["state"] == "FINISHED");
    let result = get(&server.url(&format!("{path}/result")), Some(&key)).json();
    assert_eq!(result["Status"], "ok", "{result}");
    let names: Vec<&str> = result["Files"].as_array().unwrap().iter().map(|f| f["FileName"].as_str().unwrap()).collect();
    for playlist in ["default_dXBncmFkZQ..__UserId_s_Y2Ft__UserId_e_main_video.m3u8", "ha1_default_dXBncmFkZQ..__UserId_s_Y2Ft__UserId_e_main_video.m3u8"] {
        assert!(names.contains(&playlist), "{playlist} missing: {names:?}");
    }
    // The MP4 joins both runs.
    let mp4 = result["VideoInfos"][0]["VideoUrl"].as_str().unwrap().to_owned();
    let (codecs, duration) = probe_url(&format!("{}?token={}", server.url(&mp4), token(&data, "upgrade", "viewer")));
    assert_eq!(codecs, vec!["aac".to_string(), "h264".to_string()]);
    let total = result["TotalTime"].as_f64().unwrap() / 1000.0;
    assert!(total > 6.0 && (duration - total).abs() <= total * 0.05 + 0.3, "MP4 {duration:.2} s, task clock {total:.2} s");
    // One start, one failover, one stop.
    let events = hooks.wait_for(Duration::from_secs(10), "312", |e| codes_of(e, &id).contains(&312));
    let codes = codes_of(&events, &id);
    for (code, n) in [(301, 1), (306, 1), (302, 1), (312, 1)] {
        assert_eq!(codes.iter().filter(|c| **c == code).count(), n, "{code} in {codes:?}");
    }
    let _ = source.kill();
    let _ = source.wait();
}

/// Issue 10, defect 6: with the default relative data dir (`./tessera-data`, what `make run`
/// uses), `hls+mp4` recordings made no MP4 (the remux input path was doubled) and still ended
/// `FINISHED` with `Status: ok`.
#[test]
fn a_relative_data_dir_still_gives_mp4s() {
    let dir = TempDir::new("rel-data");
    let server = Server::start_in(Some(dir.path()), Path::new("./tessera-data"), &[]);
    let data = dir.path().join("tessera-data");
    let key = std::fs::read_to_string(data.join("admin.key")).unwrap().trim().to_owned();
    let cam = token(&data, "rel", "cam");
    let mut source = publisher(&format!("rtmp://127.0.0.1:{}/push/rel/cam?token={cam}", rtmp_port(&server)), 60);
    std::thread::sleep(Duration::from_secs(2));
    let r = post_json(&server.url("/v1/recordings"), Some(&key), &json!({"room": "rel", "format": "hls+mp4", "hls": {"segment_s": 2}, "max_idle_time": 60}));
    assert_eq!(r.status, 201, "{}", r.body);
    let path = format!("/v1/recordings/{}", r.json()["id"].as_str().unwrap());
    poll(&server, &key, &path, Duration::from_secs(15), |v| v["files"].as_array().is_some_and(|f| f.len() >= 4));
    assert_eq!(request("DELETE", &server.url(&path), Some(&key), None, &[]).status, 200);
    poll(&server, &key, &path, Duration::from_secs(30), |v| v["state"] == "FINISHED");
    let result = get(&server.url(&format!("{path}/result")), Some(&key)).json();
    assert_eq!(result["Status"], "ok", "{result}");
    let mp4 = result["VideoInfos"].as_array().unwrap().iter().find(|v| v["VideoFormat"] == "mp4").unwrap_or_else(|| panic!("no MP4 in {result}"));
    let (codecs, duration) = probe_url(&format!("{}?token={}", server.url(mp4["VideoUrl"].as_str().unwrap()), token(&data, "rel", "viewer")));
    assert!(codecs.contains(&"h264".to_string()) && duration > 3.0, "{codecs:?} {duration:.2} s");
    let _ = source.kill();
    let _ = source.wait();
}

/// A single-stream recording as people play it (issue 15): its master playlist ties the audio
/// and video playlists together and is listed by `GET /v1/recordings/{id}` while it records;
/// hls.js in Chromium (`player.html`) plays it live — picked by recording id with the API key —
/// within 3 segment lengths of the newest segment, then, finished, through the master with a
/// user token, picture and sound both.
#[test]
fn hls_js_plays_a_recording_live_and_finished_through_its_master_playlist() {
    let dir = TempDir::new("rec-hlsjs");
    let data = dir.path().join("data");
    let net = TestNet::new();
    let http = format!("{}:0", net.host_ip);
    let server = Server::start(&data, &["--http-addr", &http, "--rtmp-addr", &http]);
    let key = std::fs::read_to_string(data.join("admin.key")).unwrap().trim().to_owned();
    let cam = token(&data, "hlsjs", "cam");
    let mut source = publisher(&format!("rtmp://{}:{}/push/hlsjs/cam?token={cam}", net.host_ip, rtmp_port(&server)), 60);
    std::thread::sleep(Duration::from_secs(2));
    let r = post_json(&server.url("/v1/recordings"), Some(&key), &json!({"room": "hlsjs", "format": "hls", "hls": {"segment_s": 2}}));
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/recordings/{id}");
    // The master and both playlists it names, each listed once it exists (the audio and video
    // playlists get their first segments moments apart).
    let rec = poll(&server, &key, &path, Duration::from_secs(20), |v| v["playlists"].as_array().is_some_and(|p| p.len() >= 3));
    let playlists = rec["playlists"].as_array().unwrap();
    let master = playlists.iter().find(|p| p["kind"] == "master").unwrap();
    assert_eq!(master["file_name"], "default_aGxzanM.__UserId_s_Y2Ft__UserId_e_main.m3u8", "named after RECORDING.md §4 without the type: {rec}");
    assert_eq!((master["user_id"].as_str(), master["media_id"].as_str()), (Some("cam"), Some("main")));
    for track in ["audio", "video"] {
        assert!(playlists.iter().any(|p| p["kind"] == "media" && p["track_type"] == track), "{track} playlist listed while recording: {rec}");
    }
    let video_playlist = std::fs::read_to_string(data.join(format!("recordings/default/{id}/default_aGxzanM.__UserId_s_Y2Ft__UserId_e_main_video.m3u8"))).unwrap();
    assert!(video_playlist.contains("#EXT-X-TARGETDURATION:3\n"), "ceil(1.5 × 2 s): {video_playlist}");
    std::thread::sleep(Duration::from_secs(4));

    // Live, picked by recording id with the API key (player.html prefers the master).
    let live = Client::start(&net, "browser.py", &["hls", "--base", &server.base, "--recording", &id, "--api-key", &key, "--seconds", "16"]).finish(Duration::from_secs(90));
    assert!(live["src"].as_str().unwrap().ends_with("_e_main.m3u8"), "{live}");
    let samples = live["samples"].as_array().unwrap();
    let playing: Vec<&Value> = samples.iter().filter(|s| s["framesDecoded"].as_u64().unwrap_or(0) > 0).collect();
    assert!(playing.len() >= 6, "hls.js played the live recording: {live}");
    let last = playing.last().unwrap();
    assert_eq!(last["live"], true, "{last}");
    assert!(last["framesDecoded"].as_u64().unwrap() >= 100 && last["width"] == 640, "{last}");
    assert!(last["audioTracks"].as_u64().unwrap() >= 1 && last["audioPeak"].as_f64().unwrap() > 0.01, "sound through the audio rendition: {last}");
    // Where it settles (a loaded machine may start it late; hls.js then catches up).
    for s in &playing[playing.len() - 3..] {
        let behind = s["edgeDistanceS"].as_f64().unwrap_or(f64::MAX);
        assert!(behind <= 6.0, "within 3 segment lengths of the newest segment: {s}\n{live}");
    }
    eprintln!("live: {} s behind the newest segment, {} s behind real time", last["edgeDistanceS"], last["liveLatencyS"]);

    // Finished: the master with a user token (its URIs carry the token too).
    let r = request("DELETE", &server.url(&path), Some(&key), None, &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    poll(&server, &key, &path, Duration::from_secs(30), |v| v["state"] == "FINISHED");
    let _ = source.kill();
    let _ = source.wait();
    let master_text = std::fs::read_to_string(data.join(format!("recordings/default/{id}/default_aGxzanM.__UserId_s_Y2Ft__UserId_e_main.m3u8"))).unwrap();
    assert!(master_text.contains("CODECS=\"avc1.") && master_text.contains("RESOLUTION=640x360"), "{master_text}");
    let viewer = token(&data, "hlsjs", "viewer");
    let url = format!("/files/default/{id}/default_aGxzanM.__UserId_s_Y2Ft__UserId_e_main.m3u8");
    let done = Client::start(&net, "browser.py", &["hls", "--base", &server.base, "--src", &url, "--token", &viewer, "--seconds", "8"]).finish(Duration::from_secs(90));
    let last = done["samples"].as_array().unwrap().last().cloned().unwrap();
    assert_eq!(last["live"], false, "{done}");
    assert!(last["framesDecoded"].as_u64().unwrap() >= 100, "{done}");
    assert!(last["audioPeak"].as_f64().unwrap() > 0.01, "{done}");
}

/// A recording into an S3-compatible bucket (moto's server, reached through a link the test can
/// cut), set as the app's default storage over `PATCH /v1/app` (its secret sealed, never shown
/// or kept in the clear): segments land under the spec's keys as they are cut; while the
/// bucket is unreachable they wait in the spool (308 for each failed attempt, `stored: false`),
/// the stop reports 305 Status 1 and finishes, and when the bucket returns everything goes up
/// (305 Status 2) and plays from `/files`, from the bucket.
#[test]
fn a_recording_goes_to_an_s3_bucket_and_spools_while_it_is_unreachable() {
    let dir = TempDir::new("s3-rec");
    let s3 = S3Server::start();
    s3.create_bucket("recordings");
    let link = TcpLink::to(s3.port);
    let data = dir.path().join("data");
    let server = Server::start(&data, &[]);
    let key = std::fs::read_to_string(data.join("admin.key")).unwrap().trim().to_owned();
    let hooks = WebhookReceiver::start(dir.path(), "k3yA", &[]);
    hooks.subscribe(&server, &key, "k3yA");
    let storage = json!({"s3": {"bucket": "recordings", "region": "us-east-1", "endpoint": format!("http://127.0.0.1:{}", link.port),
        "access_key_id": "AKIDTESSERA", "secret_access_key": "s3cr3t-never-shown", "path_style": true, "key_prefix": "tessera/"}});
    let r = request("PATCH", &server.url("/v1/app"), Some(&key), Some(("application/merge-patch+json", json!({"default_storage": storage}).to_string().as_bytes())), &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["default_storage"]["s3"]["secret_access_key_set"], true, "{}", r.body);
    assert!(!r.body.contains("s3cr3t"), "the secret is never shown: {}", r.body);
    let apps = std::fs::read_to_string(data.join("apps.json")).unwrap();
    assert!(!apps.contains("s3cr3t") && apps.contains("secret_access_key_sealed"), "the secret is kept sealed");
    // A bad inline bucket is refused with the field named.
    let bad = post_json(
        &server.url("/v1/recordings"),
        Some(&key),
        &json!({"room": "s3r", "storage": {"s3": {"bucket": "NO", "endpoint": "http://x", "access_key_id": "a", "secret_access_key": "b"}}}),
    );
    assert_eq!((bad.status, bad.json()["details"]["field"].as_str()), (400, Some("storage.s3.bucket")), "{}", bad.body);

    let data = data.as_path();
    let cam = token(data, "s3r", "cam");
    let mut source = publisher(&format!("rtmp://127.0.0.1:{}/push/s3r/cam?token={cam}", rtmp_port(&server)), 120);
    std::thread::sleep(Duration::from_secs(2));
    let r = post_json(&server.url("/v1/recordings"), Some(&key), &json!({"room": "s3r", "format": "hls+mp4", "hls": {"segment_s": 2}, "prefix": "class/a", "max_idle_time": 60}));
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/recordings/{id}");
    let prefix = format!("tessera/class/a/{id}/");
    // Segments and playlists land in the bucket as they are cut, and are listed as stored.
    let v = poll(&server, &key, &path, Duration::from_secs(20), |v| v["files"].as_array().is_some_and(|f| f.iter().filter(|f| f["stored"] == true).count() >= 4));
    let first = v["files"].as_array().unwrap().iter().find(|f| f["stored"] == true && f["file_name"].as_str().unwrap().ends_with(".ts")).unwrap().clone();
    let seg = first["file_name"].as_str().unwrap();
    assert!(seg.starts_with("default_czNy__UserId_s_Y2Ft__UserId_e_main_") && is_stamp(&seg[seg.len() - 20..seg.len() - 3]), "{seg}");
    assert_eq!(first["url"], format!("s3://recordings/{prefix}{seg}"));
    let keys = s3.list("recordings", &prefix);
    assert!(keys.iter().any(|(k, n)| k == &format!("{prefix}{seg}") && *n == first["size"].as_u64().unwrap()), "{seg} not in {keys:?}");
    assert!(keys.iter().any(|(k, _)| k.ends_with("_video.m3u8")), "{keys:?}");

    // The bucket goes away: files wait in the spool, each failed attempt is a 308.
    link.set_down(true);
    let cut_at = Instant::now();
    hooks.wait_for(Duration::from_secs(20), "308 while the bucket is away", |e| codes_of(e, &id).contains(&308));
    let v = poll(&server, &key, &path, Duration::from_secs(20), |v| {
        v["files"].as_array().is_some_and(|f| f.iter().filter(|f| f["stored"] == false && f["file_name"].as_str().unwrap().ends_with(".ts")).count() >= 4)
    });
    let spooled: Vec<String> = v["files"].as_array().unwrap().iter().filter(|f| f["stored"] == false).map(|f| f["file_name"].as_str().unwrap().to_owned()).collect();
    for name in &spooled {
        assert!(data.join("spool").join(&id).join("files").join(name).is_file(), "{name} is kept in the spool");
    }
    let e308 = hooks.events().into_iter().find(|e| e["EventType"] == 308 && e["EventInfo"]["TaskId"] == id.as_str()).unwrap();
    assert_eq!(e308["EventInfo"]["Payload"]["Code"], "RequestFailed", "{e308}");
    // While it is away, a spooled file still plays from /files (the spool's copy).
    let viewer = token(data, "s3r", "viewer");
    let r = get(&format!("{}?token={viewer}", server.url(&format!("/files/default/class/a/{id}/{}", spooled[0]))), None);
    assert_eq!(r.status, 200, "{}", r.body);

    // Stopped while it is away: 305 Status 1, the task finishes with the files in the spool.
    assert_eq!(request("DELETE", &server.url(&path), Some(&key), None, &[]).status, 200);
    poll(&server, &key, &path, Duration::from_secs(60), |v| v["state"] == "FINISHED");
    let events = hooks.wait_for(Duration::from_secs(20), "312", |e| codes_of(e, &id).contains(&312));
    let e305: Vec<i64> =
        events.iter().filter(|e| e["EventType"] == 305 && e["EventInfo"]["TaskId"] == id.as_str()).map(|e| e["EventInfo"]["Payload"]["Status"].as_i64().unwrap()).collect();
    assert_eq!(e305, vec![1], "{events:?}");
    assert!(events.iter().any(|e| e["EventType"] == 311 && e["EventInfo"]["Payload"]["Status"] == 1), "the MP4 waits in the spool: 311 Status 1");
    let result = get(&server.url(&format!("{path}/result")), Some(&key)).json();
    assert_eq!(result["Status"], "ok", "{result}");
    let mp4 = result["VideoInfos"].as_array().unwrap().iter().find(|v| v["VideoFormat"] == "mp4").unwrap_or_else(|| panic!("no MP4 in {result}")).clone();
    let mp4_name = mp4["VideoUrl"].as_str().unwrap().rsplit('/').next().unwrap().to_owned();
    assert_eq!(mp4["VideoUrl"], format!("s3://recordings/{prefix}{mp4_name}"));

    // The server is restarted meanwhile; the bucket returns: everything goes up (from the next
    // run, which finds the spool), 305 Status 2, the spool is emptied.
    let status = server.stop();
    assert!(status.success(), "{status:?}");
    link.set_down(false);
    let server = Server::start(data, &[]);
    eprintln!("bucket away for {:.1} s", cut_at.elapsed().as_secs_f64());
    hooks.wait_for(Duration::from_secs(60), "305 Status 2", |e| e.iter().any(|e| e["EventType"] == 305 && e["EventInfo"]["Payload"]["Status"] == 2));
    assert!(!data.join("spool").join(&id).exists(), "the spool is emptied once all is stored");
    let keys = s3.list("recordings", &prefix);
    for name in spooled.iter().chain([&mp4_name]) {
        assert!(keys.iter().any(|(k, _)| k == &format!("{prefix}{name}")), "{name} not in {keys:?}");
    }
    // Every segment the stored playlists name is in the bucket.
    for (k, _) in keys.iter().filter(|(k, _)| k.ends_with("_video.m3u8") || k.ends_with("_audio.m3u8")) {
        let text = String::from_utf8(s3.object("recordings", k)).unwrap();
        assert!(text.contains("#EXT-X-ENDLIST"), "{k}: {text}");
        for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
            assert!(keys.iter().any(|(key, _)| key == &format!("{prefix}{line}")), "{line} of {k} is not in the bucket");
        }
    }
    // Played from /files, from the bucket now: the MP4 (with a Range) and the HLS.
    let (codecs, duration) = probe_url(&format!("{}?token={viewer}", server.url(&format!("/files/default/class/a/{id}/{mp4_name}"))));
    assert!(codecs.contains(&"h264".to_string()) && codecs.contains(&"aac".to_string()) && duration > 5.0, "{codecs:?} {duration:.2} s");
    let r = request("GET", &server.url(&format!("/files/default/class/a/{id}/{mp4_name}")), Some(&key), None, &[("Range", "bytes=4-11")]);
    assert_eq!((r.status, r.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("content-range")).map(|(_, v)| v.starts_with("bytes 4-11/"))), (206, Some(true)));
    assert!(r.body.starts_with("ftyp"), "{:?}", r.body);
    let playlist = keys.iter().find(|(k, _)| k.ends_with("_video.m3u8")).unwrap().0.rsplit('/').next().unwrap().to_owned();
    let (codecs, duration) = probe_url(&format!("{}?token={viewer}", server.url(&format!("/files/default/class/a/{id}/{playlist}"))));
    assert!(codecs.contains(&"h264".to_string()) && duration > 5.0, "{codecs:?} {duration:.2} s");
    let missing = get(&server.url(&format!("/files/default/class/a/{id}/nope.ts")), Some(&key));
    assert_eq!((missing.status, missing.json()["code"].as_str()), (404, Some("file_not_found")));
    let _ = source.kill();
    let _ = source.wait();
}
