//! Hostile and replaced RTMP publishers.

use super::*;

/// Defects 1 and 2: a `connect` nesting objects 5,000 deep aborted the process (stack
/// overflow); a command of two values panicked. Now each connection is dropped and the server
/// goes on serving.
#[test]
fn hostile_rtmp_messages_close_the_connection_not_the_server() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new("hostile-rtmp");
    let mut server = Server::start(dir.path(), &[]);
    let port = rtmp_port(&server);
    let mut deep = amf0_string("connect");
    deep.extend_from_slice(&[0x00, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0]);
    for _ in 0..5000 {
        deep.extend_from_slice(&[0x03, 0, 1, b'a']);
    }
    deep.push(0x05);
    for _ in 0..5000 {
        deep.extend_from_slice(&[0, 0, 0x09]);
    }
    let mut two_values = amf0_string("connect");
    two_values.extend_from_slice(&[0x00, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0]);
    let mut metadata_only_name = amf0_string("@setDataFrame");
    metadata_only_name.truncate(metadata_only_name.len());
    for (what, message) in [
        ("5,000-deep connect", chunks(20, 0, &deep)),
        ("two-value command", chunks(20, 0, &two_values)),
        ("16 MiB message header", vec![0x03, 0, 0, 0, 0xff, 0xff, 0xff, 9, 1, 0, 0, 0]),
    ] {
        let mut s = rtmp_handshake(port);
        s.write_all(&message).unwrap();
        assert!(closed_by_server(&mut s), "{what}: the server closes the connection");
        std::thread::sleep(Duration::from_millis(200));
        assert!(server.alive(), "{what}: the server process is still running");
        assert_eq!(get(&server.url("/healthz"), None).status, 200, "{what}: and still answers");
    }
}

/// Defect 12: a second RTMP publish of the same user and stream takes over, and the first
/// connection is closed (its ffmpeg ends long before its 60 s of input would).
#[test]
fn a_replaced_rtmp_publisher_is_disconnected() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new("replaced-rtmp");
    let server = Server::start(dir.path(), &[]);
    let port = rtmp_port(&server);
    let token = token(dir.path(), "r1", "alice");
    let url = format!("rtmp://127.0.0.1:{port}/push/r1/alice?token={token}");
    let mut first = push(&url, 60);
    std::thread::sleep(Duration::from_secs(4));
    assert!(first.try_wait().unwrap().is_none(), "the first publish is running");
    let mut second = push(&url, 60);
    let started = Instant::now();
    let status = loop {
        if let Some(s) = first.try_wait().unwrap() {
            break s;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "the replaced publisher was not disconnected within 20 s");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!status.success() || started.elapsed() < Duration::from_secs(20));
    assert!(second.try_wait().unwrap().is_none(), "the newer publish goes on");
    let logs = server.logs().join("\n");
    assert!(logs.contains("replaced by a newer one"), "{logs}");
    let _ = second.kill();
    let _ = second.wait();
}

/// PRODUCT.md §3.4: an RTMP session is lost after 30 s without data, and only then: a
/// connection that sends a byte every 3 s (a handshake trickling in) stays open past it.
#[test]
fn an_rtmp_connection_silent_for_30_s_is_closed_and_one_that_sends_is_not() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new("idle-rtmp");
    let mut server = Server::start(dir.path(), &[]);
    let port = rtmp_port(&server);
    let mut silent = rtmp_handshake(port);
    let silent_since = Instant::now();
    silent.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let mut talking = TcpStream::connect(("127.0.0.1", port)).unwrap();
    talking.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    // Open while a read finds data or times out; closed at the end of the stream or a reset.
    let open = |s: &mut TcpStream| match s.read(&mut [0u8; 64]) {
        Ok(n) => n > 0,
        Err(e) => matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
    };
    let mut silent_closed = None;
    let mut next_byte = Instant::now();
    while silent_since.elapsed() < Duration::from_secs(40) {
        if Instant::now() >= next_byte {
            talking.write_all(&[3]).unwrap();
            next_byte += Duration::from_secs(3);
        }
        if silent_closed.is_none() && !open(&mut silent) {
            silent_closed = Some(silent_since.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let closed = silent_closed.expect("the silent connection was not closed within 40 s");
    assert!(closed >= Duration::from_secs(29) && closed <= Duration::from_secs(33), "closed after {closed:?}, not ~30 s");
    assert!(open(&mut talking), "the connection that sends was closed");
    assert!(server.alive());
}
