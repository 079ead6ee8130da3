//! process: the broker binary as a child of a test: `qbroker run` with its
//! log collected and its ports read from it, `qbroker stdin` with both ends
//! of omprog's protocol in the test's hands; signals, and waits for an exit
//! that give up after a deadline. The binary's path is the caller's (an
//! integration test has it as `env!("CARGO_BIN_EXE_qbroker")`).

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::wait::{poll, wait_for};

/// How long a broker may take to log the addresses it listens on.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(20);

/// Wait up to `timeout` for `child` to exit: its status, or None if it still runs.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    poll(timeout, || child.try_wait().ok().flatten())
}

/// `kill -<signal> <pid>` (`TERM`, `KILL`, `HUP`...); panics when it fails.
pub fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{signal} {pid}: {status}");
}

/// The value of one sample of a Prometheus page, such as
/// `qbroker_queue_messages` or `qbroker_cluster_frames_total{cluster="a"}`.
pub fn metric_value(text: &str, sample: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(sample)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// `key=value` of the first log line containing `marker` and `key=`.
pub fn log_field(log: &[String], marker: &str, key: &str) -> Option<u64> {
    log.iter()
        .filter(|l| l.contains(marker))
        .find_map(|l| field(l, key)?.parse().ok())
}

/// The text after `key=` up to the next space.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split(&format!("{key}="))
        .nth(1)?
        .split_whitespace()
        .next()
}

/// The `listen=` address of a log line that contains `marker`.
fn listen_addr(line: &str, marker: &str) -> Option<SocketAddr> {
    if !line.contains(marker) {
        return None;
    }
    field(line, "listen")?.parse().ok()
}

/// `qbroker run` as a child process, its log (stderr) collected. Killed on drop.
pub struct BrokerProcess {
    pub child: Child,
    pub syslog: SocketAddr,
    pub metrics: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl BrokerProcess {
    /// `bin run --config <config>` with `RUST_LOG=info`. The configuration
    /// should listen on port 0 for syslog and metrics: the ports are read
    /// from the log.
    pub fn spawn(bin: impl AsRef<Path>, config: &Path) -> BrokerProcess {
        BrokerProcess::spawn_with_log(bin, config, "info")
    }

    /// [`spawn`](Self::spawn) with this `RUST_LOG` filter.
    pub fn spawn_with_log(bin: impl AsRef<Path>, config: &Path, rust_log: &str) -> BrokerProcess {
        BrokerProcess::spawn_with_env(bin, config, rust_log, &[])
    }

    /// [`spawn_with_log`](Self::spawn_with_log) with these variables set.
    pub fn spawn_with_env(
        bin: impl AsRef<Path>,
        config: &Path,
        rust_log: &str,
        env: &[(String, String)],
    ) -> BrokerProcess {
        let mut child = Command::new(bin.as_ref())
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", rust_log)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("qbroker starts");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let log2 = log.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                log2.lock().expect("broker log").push(line);
            }
        });
        let find = |marker: &str| {
            wait_for(LISTEN_TIMEOUT, || {
                log.lock()
                    .expect("broker log")
                    .iter()
                    .find_map(|l| listen_addr(l, marker))
            })
        };
        let syslog = find("accepting syslog connections");
        let metrics = find("serving /metrics");
        BrokerProcess {
            child,
            syslog,
            metrics,
            log,
            reader: Some(reader),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send a signal (`TERM`, `KILL`) and wait (up to 60 s) for the exit.
    pub fn signal_and_wait(&mut self, signal: &str) -> ExitStatus {
        self::signal(self.pid(), signal);
        let status = wait_exit(&mut self.child, Duration::from_secs(60)).expect("the broker exits");
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        status
    }

    /// Every line it logged so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().expect("broker log").clone()
    }

    /// The value of one sample of its /metrics page.
    pub fn metric(&self, sample: &str) -> Option<f64> {
        metric_value(&crate::net::http_get(self.metrics, "/metrics"), sample)
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `qbroker stdin` with both ends of omprog's protocol in the test's hands.
/// Its log goes on to the test's stderr; the metrics address is read from it.
/// Killed on drop.
pub struct StdinFeed {
    pub child: Child,
    /// None once closed (the end of input).
    pub input: Option<ChildStdin>,
    pub output: BufReader<ChildStdout>,
    pub metrics: SocketAddr,
}

impl StdinFeed {
    /// `bin stdin --config <config> <args>` with `RUST_LOG=info` and `env`;
    /// returns once it serves /metrics (its first answer is still to be read).
    pub fn spawn(
        bin: impl AsRef<Path>,
        config: &Path,
        args: &[&str],
        env: &[(String, String)],
    ) -> StdinFeed {
        let mut child = Command::new(bin.as_ref())
            .args(["stdin", "--config"])
            .arg(config)
            .args(args)
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("qbroker stdin starts");
        let input = child.stdin.take();
        let output = BufReader::new(child.stdout.take().expect("piped stdout"));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = BufReader::new(child.stderr.take().expect("piped stderr"));
        std::thread::spawn(move || {
            for line in stderr.lines() {
                let Ok(line) = line else { break };
                eprintln!("{line}");
                if let Some(addr) = listen_addr(&line, "serving /metrics") {
                    let _ = tx.send(addr);
                }
            }
        });
        let metrics = rx
            .recv_timeout(LISTEN_TIMEOUT)
            .expect("qbroker stdin serves /metrics");
        StdinFeed {
            child,
            input,
            output,
            metrics,
        }
    }

    /// Write one line.
    pub fn send(&mut self, line: &str) {
        let input = self.input.as_mut().expect("input still open");
        input.write_all(line.as_bytes()).expect("writing a line");
        input.write_all(b"\n").expect("writing a line");
        input.flush().expect("writing a line");
    }

    /// The next answer, without omprog's keep-alive dots.
    pub fn answer(&mut self) -> String {
        let mut line = String::new();
        self.output.read_line(&mut line).expect("reading an answer");
        assert!(line.ends_with('\n'), "an answer is one line: {line:?}");
        line.trim_end().trim_start_matches('.').to_string()
    }

    /// SIGKILL now: no drain.
    pub fn kill(mut self) {
        self.child.kill().expect("kill");
        self.child.wait().expect("wait");
    }

    /// The end of input, then wait (up to 30 s) for the exit.
    pub fn finish(mut self) -> ExitStatus {
        drop(self.input.take());
        wait_exit(&mut self.child, Duration::from_secs(30)).expect("qbroker stdin exits")
    }
}

impl Drop for StdinFeed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_fields_and_listen_addresses() {
        let log = vec![
            "INFO qbroker: serving /metrics listen=127.0.0.1:9100".to_string(),
            "INFO qbroker: stopped lost_events=0 spooled=12".to_string(),
        ];
        assert_eq!(
            listen_addr(&log[0], "serving /metrics"),
            Some("127.0.0.1:9100".parse().unwrap())
        );
        assert_eq!(listen_addr(&log[0], "accepting syslog"), None);
        assert_eq!(log_field(&log, "stopped", "spooled"), Some(12));
        assert_eq!(log_field(&log, "stopped", "absent"), None);
        let page = "# HELP x\nqbroker_x{t=\"a\"} 3\nqbroker_x 1.5\n";
        assert_eq!(metric_value(page, "qbroker_x"), Some(1.5));
        assert_eq!(metric_value(page, "qbroker_x{t=\"a\"}"), Some(3.0));
    }
}
