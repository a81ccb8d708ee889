//! The relay machine under injected time: retry schedule, 60 s give-up, 5 s reports, stops.

use super::*;

fn ms(t0: Instant, ms: u64) -> Instant {
    t0 + Duration::from_millis(ms)
}

fn drain(m: &mut RelayMachine) -> Vec<RelayOutput> {
    std::iter::from_fn(|| m.poll_output()).collect()
}

fn statuses(out: &[RelayOutput]) -> Vec<u8> {
    out.iter().filter_map(|o| if let RelayOutput::UrlStatus { status, .. } = o { Some(status.code()) } else { None }).collect()
}

const URL: &str = "rtmp://cdn.example/live/key";

/// Runs the machine until `until`, failing every attempt that `fail` says fails; returns
/// every output with its time.
fn run(m: &mut RelayMachine, t0: Instant, until_ms: u64, mut on_connect: impl FnMut(&str, u64) -> Option<AttemptEnd>) -> Vec<(u64, RelayOutput)> {
    let mut log = Vec::new();
    let mut now = t0;
    loop {
        while let Some(o) = m.poll_output() {
            let at = now.duration_since(t0).as_millis() as u64;
            if let RelayOutput::Connect { url } = &o {
                if let Some(end) = on_connect(url, at) {
                    log.push((at, o.clone()));
                    m.url_ended(url, end, now);
                    continue;
                }
            }
            log.push((at, o));
        }
        let Some(next) = m.poll_timeout() else { break };
        if next > ms(t0, until_ms) {
            break;
        }
        now = next.max(now);
        m.handle_timeout(now);
    }
    log
}

#[test]
fn retries_at_0_1_2_4_then_every_8_seconds_for_60() {
    let t = Instant::now();
    let mut r = UrlRetry::new(t);
    let offsets: Vec<u64> = std::iter::from_fn(|| r.next_attempt()).map(|at| (at - t).as_secs()).collect();
    assert_eq!(offsets, vec![0, 1, 2, 4, 12, 20, 28, 36, 44, 52]);
    assert!(!r.given_up(t + Duration::from_secs(59)) && r.given_up(t + Duration::from_secs(60)));
}

#[test]
fn a_url_that_never_connects_gives_up_after_60_s_reporting_every_5_s() {
    let t0 = Instant::now();
    let mut m = RelayMachine::new(&[URL.into()], Duration::from_secs(600), t0, 1_000_000);
    assert_eq!(m.state(), RelayState::Waiting);
    assert!(drain(&mut m).is_empty(), "nothing happens before the source publishes");
    m.source_present(true, t0);
    let log = run(&mut m, t0, 120_000, |_, _| Some(AttemptEnd::Failed { code: 1, msg: "cannot connect to cdn.example:1935".into(), was_running: false }));
    let attempts: Vec<u64> = log.iter().filter(|(_, o)| matches!(o, RelayOutput::Connect { .. })).map(|(t, _)| *t).collect();
    assert_eq!(attempts, vec![0, 1_000, 2_000, 4_000, 12_000, 20_000, 28_000, 36_000, 44_000, 52_000]);
    let reports: Vec<(u64, u8)> = log.iter().filter_map(|(t, o)| if let RelayOutput::UrlStatus { status, .. } = o { Some((*t, status.code())) } else { None }).collect();
    let mut expected = vec![(0, 1)];
    expected.extend((1..=10).map(|i| (i * 5_000, 1)).take_while(|(t, _)| *t <= 52_000));
    expected.extend([(52_000, 4), (52_000, 0)]);
    assert_eq!(reports, expected, "1 on entry and every 5 s, then 4 → 0 when the last attempt fails");
    let u = &m.urls()[0];
    assert_eq!((u.status, u.error_code), (UrlStatus::Idle, 1));
    assert_eq!(u.history.iter().map(|h| (h.0.code(), h.1 - 1_000_000)).collect::<Vec<_>>(), vec![(0, 0), (1, 0), (4, 52_000), (0, 52_000)]);
    assert_eq!(m.state(), RelayState::Active, "a failed URL does not stop the relay");
}

#[test]
fn a_break_while_running_recovers_in_a_new_series_and_stop_goes_5_then_0() {
    let t0 = Instant::now();
    let mut m = RelayMachine::new(&[URL.into()], Duration::from_secs(30), t0, 0);
    m.source_present(true, t0);
    assert_eq!(
        drain(&mut m),
        vec![
            RelayOutput::Save,
            RelayOutput::UrlStatus { url: URL.into(), status: UrlStatus::Connecting, code: 0, msg: String::new() },
            RelayOutput::Connect { url: URL.into() },
            RelayOutput::MediaStart
        ]
    );
    m.url_running(URL, ms(t0, 300));
    // 100 s later the CDN drops the connection: 3 with its error, reconnect at once.
    m.url_ended(URL, AttemptEnd::Failed { code: 4, msg: "the server closed the connection".into(), was_running: true }, ms(t0, 100_000));
    m.handle_timeout(ms(t0, 100_000));
    let out = drain(&mut m);
    assert_eq!(statuses(&out), vec![2, 3]);
    assert!(out.contains(&RelayOutput::Connect { url: URL.into() }));
    assert_eq!(m.urls()[0].error_code, 4);
    // The new attempt succeeds: 2 again, the error cleared.
    m.url_running(URL, ms(t0, 100_500));
    assert_eq!((m.urls()[0].status, m.urls()[0].error_code), (UrlStatus::Running, 0));
    m.stop(StopCause::Request, ms(t0, 200_000));
    let out = drain(&mut m);
    assert_eq!(statuses(&out), vec![2, 5]);
    assert!(out.contains(&RelayOutput::Disconnect { url: URL.into() }) && out.contains(&RelayOutput::MediaStop));
    assert_eq!(m.state(), RelayState::Active, "STOPPED only once the URL is 0");
    m.url_ended(URL, AttemptEnd::Closed, ms(t0, 200_040));
    assert_eq!(
        drain(&mut m),
        vec![RelayOutput::UrlStatus { url: URL.into(), status: UrlStatus::Idle, code: 6, msg: "stopped by request".into() }, RelayOutput::Stopped { leave_code: 0 }]
    );
    let history: Vec<u8> = m.urls()[0].history.iter().map(|h| h.0.code()).collect();
    assert_eq!(history, vec![0, 1, 2, 3, 2, 5, 0]);
}

#[test]
fn an_absent_source_stops_the_relay_after_max_idle_with_99() {
    let t0 = Instant::now();
    let mut m = RelayMachine::new(&[URL.into()], Duration::from_secs(30), t0, 0);
    m.source_present(true, ms(t0, 1_000));
    m.url_running(URL, ms(t0, 1_200));
    m.source_present(false, ms(t0, 10_000));
    assert!(drain(&mut m).contains(&RelayOutput::MediaStop));
    m.source_present(false, ms(t0, 10_300));
    assert_eq!(m.poll_timeout(), Some(ms(t0, 40_000)), "absent since 10 s, idle limit 30 s");
    m.handle_timeout(ms(t0, 39_999));
    assert!(drain(&mut m).is_empty(), "the connection stays open while the source is away");
    m.handle_timeout(ms(t0, 40_000));
    assert_eq!(statuses(&drain(&mut m)), vec![5]);
    assert_eq!(m.urls()[0].error_msg, "stopped: the source sent no media for max_idle_time");
    // The connection never answers the close: STOPPED after the grace period anyway.
    m.handle_timeout(ms(t0, 40_000) + CLOSE_GRACE);
    assert_eq!(drain(&mut m).last(), Some(&RelayOutput::Stopped { leave_code: 99 }));
    assert_eq!(m.poll_timeout(), None);
}

#[test]
fn a_relay_whose_source_never_comes_stops_after_max_idle() {
    let t0 = Instant::now();
    let mut m = RelayMachine::new(&[URL.into()], Duration::from_secs(5), t0, 0);
    m.handle_timeout(ms(t0, 5_000));
    assert_eq!(drain(&mut m), vec![RelayOutput::Stopped { leave_code: 99 }], "URLs in 0 stay silent");
    assert_eq!(m.urls()[0].history.len(), 1);
}

#[test]
fn patching_urls_adds_removes_and_restarts() {
    let t0 = Instant::now();
    let (a, b, c) = ("rtmp://a.example/live/1".to_string(), "rtmp://b.example/live/2".to_string(), "rtmp://c.example/live/3".to_string());
    let mut m = RelayMachine::new(&[a.clone(), b.clone()], Duration::from_secs(30), t0, 0);
    m.source_present(true, t0);
    drain(&mut m);
    m.url_running(&a, ms(t0, 100));
    // b fails for 60 s: 4 → 0.
    let rejected = || AttemptEnd::Failed { code: 2, msg: "rejected".into(), was_running: false };
    m.url_ended(&b, rejected(), ms(t0, 100));
    let _ = run(&mut m, t0, 70_000, |url, _| (url == b).then(rejected));
    assert_eq!(m.urls()[1].status, UrlStatus::Idle);
    drain(&mut m);
    // PATCH [b, c]: a goes 5 → 0 (outside the record), b restarts, c starts.
    m.set_urls(&[b.clone(), c.clone()], ms(t0, 80_000));
    let out = drain(&mut m);
    let events: Vec<(String, u8)> = out.iter().filter_map(|o| if let RelayOutput::UrlStatus { url, status, .. } = o { Some((url.clone(), status.code())) } else { None }).collect();
    assert_eq!(events, vec![(a.clone(), 5), (b.clone(), 1), (c.clone(), 1)]);
    assert!(out.contains(&RelayOutput::Disconnect { url: a.clone() }));
    assert_eq!(m.urls().iter().map(|u| u.url.clone()).collect::<Vec<_>>(), vec![b.clone(), c.clone()]);
    m.url_ended(&a, AttemptEnd::Closed, ms(t0, 80_010));
    assert_eq!(statuses(&drain(&mut m)), vec![0]);
}

#[test]
fn a_bad_url_fails_at_once() {
    let t0 = Instant::now();
    let mut m = RelayMachine::new(&["http://x/y".into()], Duration::from_secs(30), t0, 0);
    m.source_present(true, t0);
    assert_eq!(statuses(&drain(&mut m)), vec![4, 0]);
    assert_eq!(m.urls()[0].error_code, 1);
}
