//! Helpers shared by the scenario files: condition polling, test actors, the binary under test.

use std::future::Future;
use std::time::{Duration, Instant};

/// A test that measures the server's memory holds this exclusively while it measures; tests that
/// load the machine heavily (media, fuzzing, a browser) hold it shared. The measurement then
/// runs alone: on two loaded cores the allocator's retained memory is noise larger than a leak.
pub static MEASURING: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Polls `condition` every few milliseconds until it holds or `deadline` passes.
pub async fn eventually<F, Fut>(what: &str, deadline: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if condition().await {
            return;
        }
        if started.elapsed() > deadline {
            panic!("condition not met within {deadline:?}: {what}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await; // poll interval
    }
}

/// Polls `probe` until it answers `Some`, or `None` after `deadline`.
#[cfg(feature = "sfu")]
pub async fn eventually_value<T, F, Fut>(deadline: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return Some(value);
        }
        if started.elapsed() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await; // Poll interval (an admin request each).
    }
}

// ---------------------------------------------------------------------------------------------
// The real binary as a child process.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;

use parking_lot::Mutex;

/// A `rampart` process started on 127.0.0.1:0 with a fresh data directory. Killed on drop.
pub struct RampartProcess {
    child: Child,
    pub base_url: String,
    output: Arc<Mutex<String>>,
    /// stdout while a test deliberately leaves it unread (a stalled pipe).
    held_stdout: Option<std::process::ChildStdout>,
    _data_dir: Option<tempfile::TempDir>,
}

/// What the test does with the server's stdout.
pub enum Stdout {
    /// Read continuously into `output()`.
    Collect,
    /// Never read until `release_stdout`: the pipe fills and stalls the log writer. The server
    /// must log to a file (`RAMPART__LOG__FILE`), where the listening line is looked for.
    Hold,
}

/// A command for the binary with a clean `RAMPART__*` environment, loopback port 0 and `data_dir`.
pub fn rampart_command(data_dir: &std::path::Path, env: &[(&str, &str)], args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_rampart"));
    for (key, _) in std::env::vars() {
        if key.starts_with("RAMPART__") {
            command.env_remove(key);
        }
    }
    command
        .args(args)
        .env("RAMPART__HTTP__BIND", "127.0.0.1:0")
        .env("RAMPART__HTTP__WORKERS", "1")
        .env("RAMPART__STORAGE__DATA_DIR", data_dir)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Gives `to` the environment changes of `from` (for a command that runs the binary through
/// another program: `nsenter`, `script`).
pub fn copy_env(from: &Command, to: &mut Command) {
    for (key, value) in from.get_envs() {
        match value {
            Some(value) => to.env(key, value),
            None => to.env_remove(key),
        };
    }
}

/// A test whose external tool is missing: fails where CI requires the tool
/// (`RAMPART_REQUIRE_<REQUIREMENT>=1`), otherwise says it skips. The caller returns after it.
pub fn tool_missing(requirement: &str, what: &str) {
    let variable = format!("RAMPART_REQUIRE_{requirement}");
    let required = std::env::var(&variable).is_ok_and(|value| value == "1");
    assert!(!required, "required here ({variable}=1) but missing: {what}");
    eprintln!("skipping, missing: {what}");
}

fn collect(stream: impl std::io::Read + Send + 'static, output: Arc<Mutex<String>>) {
    #[allow(clippy::disallowed_methods, reason = "test helper: ends when the child closes the pipe")]
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            let mut output = output.lock();
            output.push_str(&line);
            output.push('\n');
        }
    });
}

impl RampartProcess {
    /// Starts the server and waits for its `listening on http://ADDR` line.
    pub fn start(env: &[(&str, &str)]) -> Self {
        Self::start_with(env, Stdout::Collect)
    }

    pub fn start_with(env: &[(&str, &str)], stdout: Stdout) -> Self {
        let data_dir = tempfile::tempdir().expect("temp dir");
        Self::start_in(data_dir.path().to_owned(), Some(data_dir), env, stdout)
    }

    /// Starts on an existing data directory (restart scenarios); the caller keeps it alive.
    pub fn start_on(data_dir: &std::path::Path, env: &[(&str, &str)]) -> Self {
        Self::start_in(data_dir.to_owned(), None, env, Stdout::Collect)
    }

    /// Starts the binary through `prefix` (e.g. `nsenter -t PID -m`: inside another process's
    /// mount namespace) on `data_dir`, with the usual test environment.
    pub fn start_through(prefix: &[&str], data_dir: &std::path::Path, env: &[(&str, &str)]) -> Self {
        let inner = rampart_command(data_dir, env, &[]);
        let mut command = Command::new(prefix[0]);
        command
            .args(&prefix[1..])
            .arg(inner.get_program())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, value) in inner.get_envs() {
            match value {
                Some(value) => command.env(key, value),
                None => command.env_remove(key),
            };
        }
        Self::spawn(command, None, env, Stdout::Collect)
    }

    fn start_in(
        path: std::path::PathBuf,
        data_dir: Option<tempfile::TempDir>,
        env: &[(&str, &str)],
        stdout: Stdout,
    ) -> Self {
        Self::spawn(rampart_command(&path, env, &[]), data_dir, env, stdout)
    }

    fn spawn(mut command: Command, data_dir: Option<tempfile::TempDir>, env: &[(&str, &str)], stdout: Stdout) -> Self {
        let mut child = command.spawn().expect("spawn rampart");
        let output = Arc::new(Mutex::new(String::new()));
        let child_stdout = child.stdout.take().expect("stdout");
        let held_stdout = match stdout {
            Stdout::Collect => {
                collect(child_stdout, output.clone());
                None
            }
            Stdout::Hold => Some(child_stdout),
        };
        // Only for a held stdout (never read e.g. /dev/full: it never ends).
        let log_file = held_stdout
            .as_ref()
            .and_then(|_| env.iter().find(|(key, _)| *key == "RAMPART__LOG__FILE"))
            .map(|(_, path)| path.to_string());
        collect(child.stderr.take().expect("stderr"), output.clone());
        let mut process = Self { child, base_url: String::new(), output, held_stdout, _data_dir: data_dir };
        let started = std::time::Instant::now();
        loop {
            let from_file = log_file.as_ref().and_then(|path| std::fs::read_to_string(path).ok());
            if let Some(address) = process.listening_address().or_else(|| from_file.as_deref().and_then(listening_in)) {
                process.base_url = format!("http://{address}");
                return process;
            }
            if let Ok(Some(status)) = process.child.try_wait() {
                panic!("rampart exited early with {status}:\n{}", process.output());
            }
            if started.elapsed() > Duration::from_secs(30) {
                panic!("rampart did not start listening:\n{}", process.output());
            }
            std::thread::sleep(Duration::from_millis(10)); // poll interval, deadline above
        }
    }

    fn listening_address(&self) -> Option<String> {
        listening_in(&self.output())
    }

    /// Starts reading a held stdout (see [`Stdout::Hold`]) into `output()`.
    pub fn release_stdout(&mut self) {
        if let Some(stdout) = self.held_stdout.take() {
            collect(stdout, self.output.clone());
        }
    }

    /// Closes a held stdout: the server's next write to it fails (EPIPE).
    pub fn close_stdout(&mut self) {
        drop(self.held_stdout.take());
    }

    pub fn output(&self) -> String {
        self.output.lock().clone()
    }

    /// Peak resident memory of the process so far (`VmHWM`), in bytes.
    pub fn peak_rss_bytes(&self) -> u64 {
        self.proc_status("VmHWM:") * 1024
    }

    /// Resident memory now (`VmRSS`), in bytes.
    #[cfg_attr(not(feature = "sfu"), expect(dead_code, reason = "used by the SFU leak test"))]
    pub fn rss_bytes(&self) -> u64 {
        self.proc_status("VmRSS:") * 1024
    }

    /// OS threads now.
    #[cfg_attr(not(feature = "sfu"), expect(dead_code, reason = "used by the SFU leak test"))]
    pub fn threads(&self) -> u64 {
        self.proc_status("Threads:")
    }

    /// The first number of a `/proc/<pid>/status` line.
    fn proc_status(&self, key: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("procfs");
        let line = status.lines().find(|line| line.starts_with(key)).unwrap_or_else(|| panic!("{key} in procfs"));
        line.split_whitespace().nth(1).and_then(|value| value.parse().ok()).unwrap_or_else(|| panic!("{key} value"))
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// Sends SIGTERM (through `kill`, so the tests need no unsafe code).
    /// SIGKILL: no shutdown code runs (the durability scenario).
    pub fn kill_hard(&mut self) {
        self.child.kill().expect("kill -9");
        let _ = self.child.wait();
    }

    pub fn terminate(&self) {
        let status = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status().expect("kill");
        assert!(status.success());
    }

    /// Waits for the process to exit on its own.
    pub fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let started = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if started.elapsed() > deadline {
                panic!("rampart did not exit within {deadline:?}:\n{}", self.output());
            }
            std::thread::sleep(Duration::from_millis(10)); // poll interval, deadline above
        }
    }
}

fn listening_in(output: &str) -> Option<String> {
    let rest = &output[output.find("listening on http://")? + "listening on http://".len()..];
    let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '[' | ']')))?;
    Some(rest[..end].to_owned())
}

/// `GET /metrics` as text.
pub async fn scrape(server: &RampartProcess) -> String {
    let request = awc::Client::new().get(server.url("/metrics"));
    let response = request.insert_header(("Accept", "application/openmetrics-text; version=1.0.0")).send().await;
    let mut response = response.expect("scrape");
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    assert!(content_type.starts_with("application/openmetrics-text"), "{content_type}");
    String::from_utf8(response.body().limit(8 << 20).await.expect("body").to_vec()).expect("utf-8")
}

/// The value of one series (`name{labels}` exactly as exposed), if present.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

impl Drop for RampartProcess {
    fn drop(&mut self) {
        // A failing test shows the end of what its server said.
        if std::thread::panicking() {
            let output = self.output.lock();
            let lines: Vec<&str> = output.lines().collect();
            eprintln!("--- {}: last lines of its log ---", self.base_url);
            for line in &lines[lines.len().saturating_sub(60)..] {
                eprintln!("{line}");
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the binary to completion (for commands that exit by themselves); returns status and
/// combined output.
pub fn run_to_exit(env: &[(&str, &str)], args: &[&str]) -> (ExitStatus, String) {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let output = rampart_command(data_dir.path(), env, args).output().expect("run rampart");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status, text)
}

/// A JSON request helper over awc.
pub struct Http {
    client: awc::Client,
}

impl Http {
    pub fn new() -> Self {
        // Idle connections are dropped before the server's 5 s keep-alive closes them: reusing
        // one the server already closed fails the request with `Disconnected` (seen after a
        // test paused longer than that, e.g. while a Kafka tool ran).
        let connector = awc::Connector::new().conn_keep_alive(Duration::from_secs(3));
        Self { client: awc::Client::builder().connector(connector).timeout(Duration::from_secs(10)).finish() }
    }

    pub async fn request(
        &self,
        method: awc::http::Method,
        url: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut request = self.client.request(method, url);
        if let Some(token) = token {
            request = request.insert_header(("Authorization", format!("Bearer {token}")));
        }
        let mut response = match body {
            Some(body) => request.send_json(&body).await,
            None => request.send().await,
        }
        .expect("request sent");
        let bytes = response.body().limit(8 << 20).await.expect("body");
        let json =
            if bytes.is_empty() { serde_json::Value::Null } else { serde_json::from_slice(&bytes).expect("JSON body") };
        (response.status().as_u16(), json)
    }

    pub async fn get(&self, url: &str, token: Option<&str>) -> (u16, serde_json::Value) {
        self.request(awc::http::Method::GET, url, token, None).await
    }

    /// A text body (`/metrics`).
    #[cfg_attr(not(feature = "kafka"), allow(dead_code, reason = "used by the Kafka suite"))]
    pub async fn get_text(&self, url: &str) -> String {
        let mut response = self.client.get(url).send().await.expect("request sent");
        let bytes = response.body().limit(8 << 20).await.expect("body");
        String::from_utf8_lossy(&bytes).into_owned()
    }

    pub async fn post(&self, url: &str, token: Option<&str>, body: serde_json::Value) -> (u16, serde_json::Value) {
        self.request(awc::http::Method::POST, url, token, Some(body)).await
    }
}

/// A TCP proxy to a server (`http://host:port` or `host:port`) that can stop passing connections
/// (an outage as rampart sees it, without stopping a server other tests share) or hold the
/// server's answers back (a slow server: requests arrive and are carried out, their replies come
/// late).
pub struct Proxy {
    pub address: String,
    up: tokio::sync::watch::Sender<bool>,
    /// How long each chunk from the server waits before it is passed on.
    delay: tokio::sync::watch::Sender<Duration>,
    /// Client-to-server messages passed, counted by MongoDB wire framing (a little-endian length
    /// first); meaningless for other protocols.
    requests: Arc<std::sync::atomic::AtomicU64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// Runs the accept loop and every connection on a runtime of its own: a test thread blocked
    /// on starting a server (which connects through the proxy) must not stall it.
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    pub async fn start(upstream: &str) -> Self {
        let upstream = upstream.trim_start_matches("http://").trim_end_matches('/').to_owned();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("proxy bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let address = format!("http://{}", listener.local_addr().expect("proxy address"));
        let (up, switch) = tokio::sync::watch::channel(true);
        let (delay, delays) = tokio::sync::watch::channel(Duration::ZERO);
        let requests = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = requests.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("test.proxy".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                    let mut connections = tokio::task::JoinSet::new();
                    let accept = async {
                        loop {
                            let Ok((inbound, _)) = listener.accept().await else { return };
                            if !*switch.borrow() {
                                drop(inbound); // refused: closed at once
                                continue;
                            }
                            let (upstream, mut switch, delays, counted) =
                                (upstream.clone(), switch.clone(), delays.clone(), counted.clone());
                            connections.spawn(async move {
                                let Ok(outbound) = tokio::net::TcpStream::connect(&upstream).await else {
                                    return;
                                };
                                // Pass bytes while up; an outage cuts open connections too.
                                let relay = relay(inbound, outbound, delays, counted);
                                tokio::select! { _ = relay => {}, _ = switch.wait_for(|up| !up) => {} }
                            });
                        }
                    };
                    tokio::select! { _ = accept => {}, _ = stopped => {} }
                    connections.abort_all();
                });
            })
            .expect("proxy thread");
        Self { address, up, delay, requests, stop: Some(stop), thread: Some(thread) }
    }

    pub fn set_up(&self, up: bool) {
        self.up.send_replace(up);
    }

    /// From now on the server's answers reach the client `delay` after the server sent them
    /// (zero: at once, including those held back so far).
    pub fn set_delay(&self, delay: Duration) {
        self.delay.send_replace(delay);
    }

    /// MongoDB messages clients sent through the proxy so far.
    pub fn mongodb_requests(&self) -> u64 {
        self.requests.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// Copies client → server at once, and server → client holding each chunk until it is `delays`
/// old (the delay in force when it is passed on), in order.
async fn relay(
    inbound: tokio::net::TcpStream,
    outbound: tokio::net::TcpStream,
    mut delays: tokio::sync::watch::Receiver<Duration>,
    requests: Arc<std::sync::atomic::AtomicU64>,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (mut client_read, mut client_write) = inbound.into_split();
    let (mut server_read, mut server_write) = outbound.into_split();
    let upstream = async move {
        let mut buffer = vec![0u8; 64 * 1024];
        // MongoDB framing: each message starts with its total length (i32, little-endian).
        let (mut header, mut left_in_message) = (Vec::with_capacity(4), 0usize);
        while let Ok(n @ 1..) = client_read.read(&mut buffer).await {
            let mut rest = &buffer[..n];
            while !rest.is_empty() {
                if left_in_message == 0 {
                    let take = (4 - header.len()).min(rest.len());
                    header.extend_from_slice(&rest[..take]);
                    rest = &rest[take..];
                    if header.len() == 4 {
                        let length = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
                        left_in_message = length.saturating_sub(4).max(1);
                        header.clear();
                        requests.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                    }
                } else {
                    let take = left_in_message.min(rest.len());
                    left_in_message -= take;
                    rest = &rest[take..];
                }
            }
            if server_write.write_all(&buffer[..n]).await.is_err() {
                break;
            }
        }
        let _ = server_write.shutdown().await;
    };
    let (chunks, mut held) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let read_answers = async move {
        let mut buffer = vec![0u8; 64 * 1024];
        while let Ok(n @ 1..) = server_read.read(&mut buffer).await {
            if chunks.send((Instant::now(), buffer[..n].to_vec())).is_err() {
                return;
            }
        }
    };
    let pass_answers = async move {
        while let Some((arrived, chunk)) = held.recv().await {
            loop {
                let due = arrived + *delays.borrow_and_update();
                if Instant::now() >= due {
                    break;
                }
                // Re-read the delay when it changes (cleared: pass on at once).
                tokio::select! { _ = tokio::time::sleep_until(due.into()) => {}, _ = delays.changed() => {} }
            }
            if client_write.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = client_write.shutdown().await;
    };
    tokio::join!(upstream, async { tokio::join!(read_answers, pass_answers) });
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
