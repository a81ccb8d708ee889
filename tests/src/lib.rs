//! Harness for the end-to-end tests: starts the real `tessera` binary on free loopback ports
//! with a temporary data dir, and gives a small HTTP client for the API.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The `tessera` binary built next to this test binary (`target/<profile>/tessera`), or
/// `$TESSERA_BIN`.
pub fn tessera_bin() -> PathBuf {
    if let Ok(p) = std::env::var("TESSERA_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>");
    let bin = profile_dir.join("tessera");
    assert!(bin.exists(), "{} is missing: run `cargo build --bin tessera` before the tests (make test does)", bin.display());
    bin
}

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("tessera-{tag}-{}", tessera_model::random::task_id()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `tessera <args>` to completion and returns (status, stdout, stderr).
pub fn run_cli(args: &[&str]) -> (ExitStatus, String, String) {
    let out = Command::new(tessera_bin()).args(args).output().expect("run tessera");
    (out.status, String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A running `tessera serve`.
pub struct Server {
    child: Child,
    pub base: String,
    /// Everything the server printed on stdout (the banner).
    pub banner: String,
    stderr: mpsc::Receiver<String>,
}

impl Server {
    /// Starts `tessera serve` with the data dir and any extra args, on free loopback ports, and
    /// waits for the banner.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Server {
        Server::start_in(None, data_dir, extra)
    }

    /// `start` with the server's working directory set (a relative `data_dir` is then taken as
    /// a user would type it).
    pub fn start_in(cwd: Option<&Path>, data_dir: &Path, extra: &[&str]) -> Server {
        Server::start_binary(&tessera_bin(), cwd, data_dir, extra)
    }

    /// `start` inside a network namespace (`ip netns exec`, which execs: the child is tessera).
    pub fn start_in_netns(ns: &str, data_dir: &Path, extra: &[&str]) -> Server {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", ns]).arg(tessera_bin());
        Server::spawn(command, data_dir, extra)
    }

    /// `start_in` with another build of the binary (e.g. the one a package installs).
    pub fn start_binary(binary: &Path, cwd: Option<&Path>, data_dir: &Path, extra: &[&str]) -> Server {
        let mut command = Command::new(binary);
        if let Some(cwd) = cwd {
            command.current_dir(cwd);
        }
        Server::spawn(command, data_dir, extra)
    }

    fn spawn(mut command: Command, data_dir: &Path, extra: &[&str]) -> Server {
        let mut args: Vec<String> = vec!["serve".into(), "--data-dir".into(), data_dir.display().to_string()];
        // Free ports unless the caller chose addresses.
        for (flag, default) in [("--http-addr", "127.0.0.1:0"), ("--rtc-udp-addr", "127.0.0.1:0"), ("--rtmp-addr", "127.0.0.1:0")] {
            if !extra.contains(&flag) {
                args.extend([flag.to_string(), default.to_string()]);
            }
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut child = command
            .args(&args)
            .env("RUST_LOG", std::env::var("TESSERA_TEST_LOG").unwrap_or_else(|_| "info".into()))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tessera serve");
        let (err_tx, err_rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[tessera] {line}");
                let _ = err_tx.send(line);
            }
        });
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut banner = String::new();
        let mut base = None;
        while Instant::now() < deadline {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => {
                    banner.push_str(&line);
                    banner.push('\n');
                    if let Some(url) = line.trim().strip_prefix("HTTP API") {
                        base = Some(url.trim().to_owned());
                    }
                    // The token line ends the banner.
                    if base.is_some() && line.starts_with("    eyJ") {
                        break;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        panic!("tessera exited early with {status}");
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => panic!("tessera closed stdout before printing its banner"),
            }
        }
        let base = base.expect("the banner names the HTTP API URL within 30 s");
        Server { child, base, banner, stderr: err_rx }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// The server's process id (to read its RSS, fds and threads from /proc).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// `kill -9`: no shutdown at all (crash-recovery tests).
    pub fn crash(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits (at most 10 s) for the exit status.
    pub fn stop(mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "tessera did not stop within 10 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Log lines printed so far.
    pub fn logs(&self) -> Vec<String> {
        self.stderr.try_iter().collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A response reduced to what tests look at.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Asserts an error of the spec's shape with this status and code; returns the body.
    #[track_caller]
    pub fn expect_error(&self, status: u16, code: &str) -> Value {
        assert_eq!(self.status, status, "body: {}", self.body);
        let v = self.json();
        assert_eq!(v["code"], code, "body: {}", self.body);
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "no message: {}", self.body);
        assert!(v["request_id"].as_str().is_some_and(|m| !m.is_empty()), "no request_id: {}", self.body);
        v
    }
}

/// Sends a request. `auth` is a bearer credential; `body` is (content type, bytes).
pub fn request(method: &str, url: &str, auth: Option<&str>, body: Option<(&str, &[u8])>, headers: &[(&str, &str)]) -> Reply {
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(10)).build();
    let mut req = agent.request(method, url);
    if let Some(a) = auth {
        req = req.set("Authorization", &format!("Bearer {a}"));
    }
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let result = match body {
        Some((ct, bytes)) => req.set("Content-Type", ct).send_bytes(bytes),
        None => req.call(),
    };
    let resp = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {url}: {e}"),
    };
    let status = resp.status();
    let headers = resp.headers_names().iter().map(|n| (n.clone(), resp.header(n).unwrap_or("").to_owned())).collect();
    let body = resp.into_string().unwrap_or_default();
    Reply { status, headers, body }
}

pub fn get(url: &str, auth: Option<&str>) -> Reply {
    request("GET", url, auth, None, &[])
}

pub fn post_json(url: &str, auth: Option<&str>, body: &Value) -> Reply {
    request("POST", url, auth, Some(("application/json", body.to_string().as_bytes())), &[])
}

/// The repository root (the parent of `tests/`).
/// A turn for a test that runs real media clients: the tests of one binary run in parallel,
/// and two cores do not carry several browsers, encoders or mixes at once in time (each starves
/// the others' media). Tests that take a turn run one at a time within their binary.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_owned()
}

/// The Python of the test-client venv (`scripts/setup.sh --test` makes it), or `$TESSERA_PYTHON`.
pub fn python() -> PathBuf {
    if let Ok(p) = std::env::var("TESSERA_PYTHON") {
        return PathBuf::from(p);
    }
    let p = repo_root().join("target/test-venv/bin/python");
    assert!(p.exists(), "{} is missing: run scripts/setup.sh --test (make test does)", p.display());
    p
}

/// A test host: a network namespace joined to this one by a veth pair, so WebRTC clients get a
/// real, non-loopback address and `tc` can shape their link. Removed on drop.
pub struct TestNet {
    pub ns: String,
    host_if: String,
    client_if: String,
    /// This side's address (the server listens here).
    pub host_ip: String,
    /// The namespace's address.
    pub client_ip: String,
    /// An emulated link (`TestNet::emulated`).
    emulator: Option<Emulator>,
    /// A view of another owner's host (`BridgeNet::client_host`): dropping it removes nothing.
    view: bool,
}

/// An emulated link's middle namespace and its `linkem` (stdin for commands, stdout for answers).
struct Emulator {
    ns: String,
    linkem: std::sync::Mutex<(Child, BufReader<std::process::ChildStdout>)>,
}

fn sh(args: &[&str]) -> std::process::Output {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{args:?}: {e}"));
    out
}

fn must(args: &[&str]) {
    let out = sh(args);
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

impl Default for TestNet {
    fn default() -> Self {
        TestNet::new()
    }
}

impl TestNet {
    /// Each call gets its own /24 in 10.199.0.0/16, named after this process and a counter, so
    /// parallel test binaries do not collide.
    pub fn new() -> TestNet {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = (std::process::id() * 7 + NEXT.fetch_add(1, Ordering::SeqCst)) % 250 + 1;
        let ns = format!("tessera-t{n}");
        let host_if = format!("tsh{n}");
        let client_if = format!("tsc{n}");
        // Leftovers of a crashed run with the same number.
        let _ = sh(&["ip", "netns", "del", &ns]);
        let _ = sh(&["ip", "link", "del", &host_if]);
        let host_ip = format!("10.199.{n}.1");
        let client_ip = format!("10.199.{n}.2");
        must(&["ip", "netns", "add", &ns]);
        must(&["ip", "link", "add", &host_if, "type", "veth", "peer", "name", &client_if]);
        must(&["ip", "link", "set", &client_if, "netns", &ns]);
        must(&["ip", "addr", "add", &format!("{host_ip}/24"), "dev", &host_if]);
        must(&["ip", "link", "set", &host_if, "up"]);
        must(&["ip", "netns", "exec", &ns, "ip", "addr", "add", &format!("{client_ip}/24"), "dev", &client_if]);
        must(&["ip", "netns", "exec", &ns, "ip", "link", "set", &client_if, "up"]);
        must(&["ip", "netns", "exec", &ns, "ip", "link", "set", "lo", "up"]);
        // Other test hosts' server addresses are this machine's: reach them through it.
        must(&["ip", "netns", "exec", &ns, "ip", "route", "add", "default", "via", &host_ip]);
        TestNet { ns, host_if, client_if, host_ip, client_ip, emulator: None, view: false }
    }

    /// A test host behind an emulated link: `host_if` and the client's interface are each
    /// joined by veth to a middle namespace where `linkem` bridges them, delaying, dropping and
    /// rate-limiting frames as `link` says (netem in user space: this kernel has none). `linkem`
    /// (tests/linkem) is built next to `tessera`, or `$LINKEM_BIN`.
    pub fn emulated() -> TestNet {
        let mut net = TestNet::new();
        let n = net.ns.trim_start_matches("tessera-t").to_string();
        let mid = format!("tessera-m{n}");
        let _ = sh(&["ip", "netns", "del", &mid]);
        must(&["ip", "netns", "add", &mid]);
        // Re-plumb: host_if <-> ms (mid), mc (mid) <-> client_if (client ns).
        must(&["ip", "link", "del", &net.host_if]);
        let (ms, mc) = (format!("tms{n}"), format!("tmc{n}"));
        // The server's UDP GSO messages (a frame to one viewer) are cut into datagrams before
        // linkem reads them, as a NIC cuts them before the wire: loss and queueing per datagram.
        // (Set at creation: kernels before 5.19 cannot change it afterwards.)
        must(&["ip", "link", "add", &net.host_if, "gso_max_segs", "1", "type", "veth", "peer", "name", &ms]);
        must(&["ip", "link", "set", &ms, "netns", &mid]);
        must(&["ip", "addr", "add", &format!("{}/24", net.host_ip), "dev", &net.host_if]);
        must(&["ip", "link", "set", &net.host_if, "up"]);
        must(&["ip", "netns", "exec", &net.ns, "ip", "link", "add", &net.client_if, "type", "veth", "peer", "name", &mc]);
        must(&["ip", "netns", "exec", &net.ns, "ip", "link", "set", &mc, "netns", &mid]);
        must(&["ip", "netns", "exec", &net.ns, "ip", "addr", "add", &format!("{}/24", net.client_ip), "dev", &net.client_if]);
        must(&["ip", "netns", "exec", &net.ns, "ip", "link", "set", &net.client_if, "up"]);
        must(&["ip", "netns", "exec", &net.ns, "ip", "route", "replace", "default", "via", &net.host_ip]);
        for i in [&ms, &mc] {
            must(&["ip", "netns", "exec", &mid, "sysctl", "-qw", &format!("net.ipv6.conf.{i}.disable_ipv6=1")]);
            must(&["ip", "netns", "exec", &mid, "ip", "link", "set", i, "up"]);
        }
        let mut child = Command::new("ip")
            .args(["netns", "exec", &mid])
            .arg(std::env::var_os("LINKEM_BIN").map(PathBuf::from).unwrap_or_else(|| tessera_bin().with_file_name("linkem")))
            .args(["--server-if", &ms, "--client-if", &mc])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start linkem");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        out.read_line(&mut line).expect("linkem ready");
        assert!(line.contains("ready"), "linkem: {line}");
        net.emulator = Some(Emulator { ns: mid, linkem: std::sync::Mutex::new((child, out)) });
        net
    }

    /// Changes the emulated link (`linkem`'s stdin language): `"down rate=600 queue=200"`,
    /// `"both delay=25 jitter=5"`, `"down burst=10:5"`; returns its answer (`stats` gives its
    /// counters as JSON).
    pub fn link(&self, command: &str) -> Value {
        use std::io::Write;
        let mut em = self.emulator.as_ref().expect("an emulated TestNet").linkem.lock().unwrap();
        let stdin = em.0.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{command}").expect("write to linkem");
        stdin.flush().expect("flush");
        let mut line = String::new();
        em.1.read_line(&mut line).expect("linkem answers");
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("linkem said {line:?}: {e}"));
        assert!(v.get("error").is_none(), "linkem refused {command:?}: {v}");
        v
    }

    /// Shapes what the server sends to this host (egress of the host-side veth), e.g.
    /// `["netem", "loss", "10%"]` or `["tbf", "rate", "300kbit", "burst", "16kb", "latency", "50ms"]`.
    pub fn shape_downlink(&self, qdisc: &[&str]) {
        let mut args = vec!["tc", "qdisc", "replace", "dev", &self.host_if, "root"];
        args.extend_from_slice(qdisc);
        must(&args);
    }

    /// Drops `percent` % of the UDP datagrams this host receives from `server_port`, at random
    /// (nftables in the namespace; the kernel here has no netem).
    pub fn drop_incoming_udp(&self, server_port: u16, percent: u32) {
        let nft = |rule: &str| must(&["ip", "netns", "exec", &self.ns, "nft", rule]);
        nft("add table inet tessera_test");
        nft("add chain inet tessera_test input { type filter hook input priority 0; }");
        if percent >= 100 {
            nft(&format!("add rule inet tessera_test input udp sport {server_port} drop"));
        } else {
            nft(&format!("add rule inet tessera_test input udp sport {server_port} numgen random mod 100 < {percent} drop"));
        }
    }

    /// Gives this side a second address, `10.199.n.<last>` (a relay listens there).
    pub fn add_host_address(&self, last: u8) -> String {
        let ip = format!("{}.{last}", self.host_ip.rsplit_once('.').expect("IPv4").0);
        must(&["ip", "addr", "add", &format!("{ip}/24"), "dev", &self.host_if]);
        ip
    }

    /// Removes what `shape_downlink` and `drop_incoming_udp` set up: the link is clean again.
    pub fn clear_impairments(&self) {
        let _ = sh(&["tc", "qdisc", "del", "dev", &self.host_if, "root"]);
        let _ = sh(&["ip", "netns", "exec", &self.ns, "nft", "delete table inet tessera_test"]);
    }

    /// Shapes what this host sends to the server.
    pub fn shape_uplink(&self, qdisc: &[&str]) {
        let mut args = vec!["ip", "netns", "exec", &self.ns, "tc", "qdisc", "replace", "dev", &self.client_if, "root"];
        args.extend_from_slice(qdisc);
        must(&args);
    }

    /// A command that runs inside the namespace.
    pub fn command(&self, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns]).arg(program);
        c
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        if self.view {
            return;
        }
        if let Some(em) = self.emulator.take() {
            let mut linkem = em.linkem.into_inner().unwrap_or_else(|e| e.into_inner());
            let _ = linkem.0.kill();
            let _ = linkem.0.wait();
            let _ = sh(&["ip", "netns", "del", &em.ns]);
        }
        let _ = sh(&["ip", "netns", "del", &self.ns]);
        let _ = sh(&["ip", "link", "del", &self.host_if]);
    }
}

/// Hosts on one Ethernet segment: a bridge in this namespace (`gateway`, which also reaches
/// them) and a network namespace per host joined to it by veth, at `10.198.<n>.<10+i>`. The
/// cluster tests' nodes and clients. Removed on drop.
pub struct BridgeNet {
    bridge: String,
    pub gateway: String,
    /// (namespace, address) of each host.
    pub hosts: Vec<(String, String)>,
}

impl BridgeNet {
    pub fn new(hosts: usize) -> BridgeNet {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = (std::process::id() * 11 + NEXT.fetch_add(1, Ordering::SeqCst)) % 250 + 1;
        let bridge = format!("tcb{n}");
        let _ = sh(&["ip", "link", "del", &bridge]);
        must(&["ip", "link", "add", &bridge, "type", "bridge"]);
        let gateway = format!("10.198.{n}.1");
        must(&["ip", "addr", "add", &format!("{gateway}/24"), "dev", &bridge]);
        must(&["ip", "link", "set", &bridge, "up"]);
        let mut net = BridgeNet { bridge, gateway: gateway.clone(), hosts: Vec::new() };
        for i in 0..hosts {
            let ns = format!("tessera-c{n}-{i}");
            let (outer, inner) = (format!("tcv{n}o{i}"), format!("tcv{n}i{i}"));
            let ip = format!("10.198.{n}.{}", 10 + i);
            let _ = sh(&["ip", "netns", "del", &ns]);
            let _ = sh(&["ip", "link", "del", &outer]);
            must(&["ip", "netns", "add", &ns]);
            must(&["ip", "link", "add", &outer, "type", "veth", "peer", "name", &inner]);
            must(&["ip", "link", "set", &inner, "netns", &ns]);
            must(&["ip", "link", "set", &outer, "master", &net.bridge]);
            must(&["ip", "link", "set", &outer, "up"]);
            must(&["ip", "netns", "exec", &ns, "ip", "addr", "add", &format!("{ip}/24"), "dev", &inner]);
            must(&["ip", "netns", "exec", &ns, "ip", "link", "set", &inner, "up"]);
            must(&["ip", "netns", "exec", &ns, "ip", "link", "set", "lo", "up"]);
            must(&["ip", "netns", "exec", &ns, "ip", "route", "add", "default", "via", &gateway]);
            net.hosts.push((ns, ip));
        }
        net
    }

    /// A test-client host view of host `i` (for `Client::start`).
    pub fn client_host(&self, i: usize) -> TestNet {
        let (ns, ip) = self.hosts[i].clone();
        TestNet { ns, host_if: String::new(), client_if: String::new(), host_ip: self.gateway.clone(), client_ip: ip, emulator: None, view: true }
    }
}

impl Drop for BridgeNet {
    fn drop(&mut self) {
        for (ns, _) in &self.hosts {
            let _ = sh(&["ip", "netns", "del", ns]);
        }
        let _ = sh(&["ip", "link", "del", &self.bridge]);
    }
}

/// A test client script (`tests/clients/<script>`) running inside `net`, started in the
/// background; `finish` waits for its one JSON line.
pub struct Client {
    child: Option<Child>,
    what: String,
}

impl Client {
    pub fn start(net: &TestNet, script: &str, args: &[&str]) -> Client {
        let path = repo_root().join("tests/clients").join(script);
        let child = net.command(&python()).arg(&path).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap_or_else(|e| panic!("{script}: {e}"));
        Client { child: Some(child), what: format!("{script} {}", args.first().unwrap_or(&"")) }
    }

    /// A client script run in this process's namespace (it may start programs elsewhere, as
    /// netbed.py starts its viewer's Chromium in a test host).
    pub fn start_here(script: &str, args: &[&str]) -> Client {
        let path = repo_root().join("tests/clients").join(script);
        let child = Command::new(python()).arg(&path).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap_or_else(|e| panic!("{script}: {e}"));
        Client { child: Some(child), what: format!("{script} {}", args.first().unwrap_or(&"")) }
    }

    /// A Node.js test client (`tests/clients/<script>`, its modules from `npm ci` there).
    pub fn start_node(net: &TestNet, script: &str, args: &[&str]) -> Client {
        let path = repo_root().join("tests/clients").join(script);
        let child = net.command(Path::new("node")).arg(&path).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap_or_else(|e| panic!("{script}: {e}"));
        Client { child: Some(child), what: format!("{script} {}", args.first().unwrap_or(&"")) }
    }

    /// Waits (at most `limit`) and returns the client's last JSON line; panics on an error line.
    pub fn finish(mut self, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        let mut child = self.child.take().expect("finished once");
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("{} did not finish within {limit:?}", self.what);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stdout.lines().rev().find(|l| l.starts_with('{')).unwrap_or_else(|| panic!("{} printed no JSON.\nstdout: {stdout}\nstderr: {stderr}", self.what));
        let v: Value = serde_json::from_str(last).unwrap();
        assert!(v.get("error").is_none(), "{} failed: {v}\nstderr: {stderr}", self.what);
        v
    }
}

impl Client {
    /// SIGKILL: the client vanishes without a word, as a closed tab or a machine switched off.
    pub fn vanish(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A token from `tessera token` for (room, user) with the data dir's app secret.
pub fn token(data: &Path, room: &str, user: &str) -> String {
    let (status, out, err) = run_cli(&["token", "--data-dir", data.to_str().unwrap(), "--room", room, "--user", user]);
    assert!(status.success(), "{err}");
    out.trim().to_owned()
}

/// Stops ffmpeg so it finishes its file (SIGINT), then waits.
pub fn interrupt(mut child: Child) {
    let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
    let deadline = Instant::now() + Duration::from_secs(5);
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The app's secrets, as the data dir stores them.
pub fn secrets(data: &Path) -> Vec<tessera_model::app::AppSecret> {
    let file: Value = serde_json::from_slice(&std::fs::read(data.join("apps.json")).unwrap()).unwrap();
    serde_json::from_value(file["apps"][0]["secrets"].clone()).unwrap()
}

/// A token with claims `tessera token` would not make (expired, not yet valid, another secret):
/// room `r1`, user `mallory`, anchor with every privilege and 10 minutes left, changed by `f`.
pub fn forged(data: &Path, f: impl FnOnce(&mut tessera_model::token::TokenClaims), secret: Option<&str>) -> String {
    let s = &secrets(data)[0];
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let mut c = tessera_model::token::TokenClaims {
        app: "default".into(),
        room: "r1".into(),
        user: "mallory".into(),
        role: Some(20),
        privileges: Some(255),
        nbf: None,
        exp: now + 600,
        info: None,
    };
    f(&mut c);
    tessera_model::token::mint(&c, &tessera_model::Kid::parse("k1").unwrap(), secret.unwrap_or(&s.secret))
}

/// A token from `tessera token` with extra flags (`--role audience`, `--privileges 171`, ...).
pub fn token_with(data: &Path, room: &str, user: &str, extra: &[&str]) -> String {
    let mut args = vec!["token", "--data-dir", data.to_str().unwrap(), "--room", room, "--user", user];
    args.extend_from_slice(extra);
    let (status, out, err) = run_cli(&args);
    assert!(status.success(), "{err}");
    out.trim().to_owned()
}

/// The WebRTC UDP port the server printed in its banner.
pub fn rtc_udp_port(server: &Server) -> u16 {
    server
        .banner
        .lines()
        .find_map(|l| l.trim().strip_prefix("WebRTC UDP"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .expect("UDP port in the banner")
}

/// The RTMP port the server printed in its banner.
pub fn rtmp_port(server: &Server) -> u16 {
    server
        .banner
        .lines()
        .find_map(|l| l.trim().strip_prefix("RTMP (OBS)"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|u| u.strip_prefix("rtmp://"))
        .and_then(|u| u.split('/').next())
        .and_then(|hp| hp.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no RTMP line in the banner:\n{}", server.banner))
}

/// An app backend's webhook endpoint: `tests/clients/webhook_receiver.py`, which checks every
/// `Sign` with Python's own HMAC and logs each request. Killed on drop.
pub struct WebhookReceiver {
    child: Child,
    pub port: u16,
    log: PathBuf,
    host: String,
}

impl WebhookReceiver {
    /// Listens on a free loopback port; `extra` are the script's options (`--fail-first 401`).
    pub fn start(dir: &Path, key: &str, extra: &[&str]) -> WebhookReceiver {
        WebhookReceiver::start_on("127.0.0.1", dir, key, extra)
    }

    /// `start` on another address of this host.
    pub fn start_on(host: &str, dir: &Path, key: &str, extra: &[&str]) -> WebhookReceiver {
        let port = std::net::TcpListener::bind((host, 0)).unwrap().local_addr().unwrap().port();
        let log = dir.join(format!("webhooks-{port}.jsonl"));
        let child = Command::new("python3")
            .arg(repo_root().join("tests/clients/webhook_receiver.py"))
            .args([&port.to_string(), key, log.to_str().unwrap()])
            .args(extra)
            .args(["--bind", host])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3");
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect((host, port)).is_err() {
            assert!(Instant::now() < deadline, "the webhook receiver did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        WebhookReceiver { child, port, log, host: host.to_owned() }
    }

    pub fn url(&self) -> String {
        format!("http://{}:{}/hook", self.host, self.port)
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log).unwrap_or_default().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// The events answered with 2xx, once each, sorted by `EventMsTs` as a receiver would.
    pub fn events(&self) -> Vec<Value> {
        let mut seen = std::collections::HashSet::new();
        let mut out: Vec<Value> = self
            .requests()
            .into_iter()
            .filter(|r| r["status"].as_u64().is_some_and(|s| (200..300).contains(&s)))
            .filter(|r| seen.insert(r["event_id"].as_str().unwrap_or("").to_owned()))
            .map(|r| r["body"].clone())
            .collect();
        out.sort_by_key(|e| e["EventInfo"]["EventMsTs"].as_i64().unwrap_or(0));
        out
    }

    /// Waits until `done` holds for the delivered events, and returns them.
    pub fn wait_for(&self, limit: Duration, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + limit;
        loop {
            let events = self.events();
            if done(&events) {
                return events;
            }
            let codes: Vec<u64> = events.iter().filter_map(|e| e["EventType"].as_u64()).collect();
            assert!(Instant::now() < deadline, "webhooks: {what} never arrived; got {codes:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Points the app's webhook at this receiver (PATCH /v1/app).
    pub fn subscribe(&self, server: &Server, api_key: &str, key: &str) {
        let body = serde_json::json!({"webhook": {"url": self.url(), "key": key}}).to_string();
        let r = request("PATCH", &server.url("/v1/app"), Some(api_key), Some(("application/merge-patch+json", body.as_bytes())), &[]);
        assert_eq!(r.status, 200, "{}", r.body);
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The event codes among `events` whose `EventInfo.TaskId` is `task`, in order.
pub fn codes_of(events: &[Value], task: &str) -> Vec<u64> {
    events.iter().filter(|e| e["EventInfo"]["TaskId"] == task).filter_map(|e| e["EventType"].as_u64()).collect()
}

/// A CDN's RTMP ingest: `ffmpeg -listen 1` on `ip:port` (app `live`, key `key`), copying what it
/// gets into `out` (FLV). One connection: it exits when the publisher goes.
pub fn rtmp_listener(ip: &str, port: u16, out: &Path) -> Child {
    Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y", "-listen", "1", "-i", &format!("rtmp://{ip}:{port}/live/key"), "-c", "copy", "-f", "flv"])
        .arg(out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ffmpeg")
}

/// A TCP path to a server that the test can cut and restore (a storage "going away"): while
/// down, connections are refused at once and open ones are closed.
pub struct TcpLink {
    pub port: u16,
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl TcpLink {
    pub fn to(target: u16) -> TcpLink {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let down = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = down.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if flag.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(upstream) = std::net::TcpStream::connect(("127.0.0.1", target)) else { continue };
                for (mut from, mut to) in [(client.try_clone().unwrap(), upstream.try_clone().unwrap()), (upstream, client)] {
                    let flag = flag.clone();
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16 * 1024];
                        loop {
                            use std::io::{Read, Write};
                            let n = match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            if flag.load(Ordering::SeqCst) || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                        let _ = from.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        TcpLink { port, down }
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, std::sync::atomic::Ordering::SeqCst);
    }
}

/// An S3-compatible server: moto's server mode from the test venv, on a free loopback port.
pub struct S3Server {
    child: Child,
    pub port: u16,
}

impl S3Server {
    pub fn start() -> S3Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let bin = python().parent().unwrap().join("moto_server");
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        S3Server { child, port }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Makes a bucket (moto does not check signatures).
    pub fn create_bucket(&self, name: &str) {
        self.boto3(&format!("s3.create_bucket(Bucket='{name}')\n"));
    }

    /// boto3 (an independent S3 client) against the server: `script` gets `s3` and prints.
    fn boto3(&self, script: &str) -> String {
        let prelude =
            format!("import boto3, sys\ns3 = boto3.client('s3', endpoint_url='{}', region_name='us-east-1', aws_access_key_id='test', aws_secret_access_key='test')\n", self.url());
        let out = Command::new(python()).arg("-c").arg(prelude + script).output().expect("python");
        assert!(out.status.success(), "boto3: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The keys under `prefix`, with their sizes.
    pub fn list(&self, bucket: &str, prefix: &str) -> Vec<(String, u64)> {
        let out = self.boto3(&format!(
            "for page in s3.get_paginator('list_objects_v2').paginate(Bucket='{bucket}', Prefix='{prefix}'):\n    for o in page.get('Contents', []):\n        print(o['Key'], o['Size'])\n"
        ));
        out.lines().filter_map(|l| l.rsplit_once(' ')).map(|(k, n)| (k.to_string(), n.parse().unwrap_or(0))).collect()
    }

    /// An object's bytes.
    pub fn object(&self, bucket: &str, key: &str) -> Vec<u8> {
        let out = self.boto3(&format!("sys.stdout.buffer.write(s3.get_object(Bucket='{bucket}', Key='{key}')['Body'].read())\n"));
        out.into_bytes()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
