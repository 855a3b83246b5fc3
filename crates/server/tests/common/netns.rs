//! A real network per test: a network namespace for the client side joined to the root
//! namespace by a veth pair (the server side's address on the root end), optionally with every
//! UDP datagram dropped in the client namespace by nftables; and a real coturn (`turnserver`)
//! with TURN REST credentials (`use-auth-secret`). Both are torn down on drop, also when the
//! test panics: the processes started in the namespace are killed by id, the namespace deleted
//! (which deletes the veth pair and the nftables rules with it), coturn killed.
//!
//! Names and addresses are unique per test (process id and a counter, checked against what
//! exists), so these tests can run beside other people's. Creating namespaces needs root
//! (CAP_NET_ADMIN and CAP_SYS_ADMIN): CI runs as root; elsewhere the tests fail saying so.
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Runs a command and returns its output; panics, naming the command, when it cannot start.
fn output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("{cmd:?} could not run: {e}"))
}

/// Runs a command that must succeed.
fn must(cmd: &mut Command) {
    let out = output(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ip(args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(args);
    c
}

/// Whether this process is root (the effective uid in /proc/self/status).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

fn have(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

/// Fails the test loudly when the machine cannot build these networks: it needs root and the
/// `ip` (iproute2), `nft` (nftables) and `turnserver` (coturn) programs. `./scripts/test`
/// installs the packages.
pub fn check_prerequisites() {
    assert!(
        is_root(),
        "NETWORK-NAMESPACE TESTS CANNOT RUN: they create namespaces, veth pairs and nftables \
         rules, which needs root (run as root, as CI and ./scripts/test on CI do)"
    );
    for (program, package) in [
        ("ip", "iproute2"),
        ("nft", "nftables"),
        ("turnserver", "coturn"),
    ] {
        assert!(
            have(program),
            "NETWORK-NAMESPACE TESTS CANNOT RUN: `{program}` is missing: apt-get install \
             {package} (./scripts/test does)"
        );
    }
}

/// Deletes the namespaces of earlier runs of these tests whose process is gone (killed before
/// its Drop could run), with whatever they still hold.
fn remove_stale_namespaces() {
    let list = String::from_utf8_lossy(&output(&mut ip(&["netns", "list"])).stdout).to_string();
    for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(owner) = ns
            .strip_prefix("chorus-t")
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{owner}")).exists() {
            continue;
        }
        kill_namespace_processes(ns);
        let _ = ip(&["netns", "del", ns]).status();
    }
}

/// Kills, by id, the processes running in namespace `ns` (all started by these tests).
fn kill_namespace_processes(ns: &str) {
    if let Ok(out) = ip(&["netns", "pids", ns]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-9", pid]).status();
        }
    }
}

/// A client network namespace joined to the root namespace by a veth pair:
/// `host_ip` (root namespace, where the servers listen) and `client_ip` (in the namespace).
pub struct Net {
    /// The namespace's name (`ip netns exec <ns> ...`).
    pub ns: String,
    /// The root namespace's end of the veth pair.
    host_if: String,
    /// The address of the root end: servers bind here.
    pub host_ip: Ipv4Addr,
    /// The address of the namespace's end.
    pub client_ip: Ipv4Addr,
    /// `TMPDIR` of what runs in the namespace (Chromium profiles): removed on drop, so a
    /// killed browser leaves nothing behind.
    tmp: PathBuf,
}

impl Net {
    /// Builds the namespace and the link; with `block_udp`, every UDP datagram into or out of
    /// the namespace is dropped (nftables, both directions), TCP passes.
    pub fn new(block_udp: bool) -> Net {
        check_prerequisites();
        remove_stale_namespaces();
        let pid = std::process::id();
        let existing =
            String::from_utf8_lossy(&output(&mut ip(&["-4", "addr"])).stdout).to_string();
        let namespaces =
            String::from_utf8_lossy(&output(&mut ip(&["netns", "list"])).stdout).to_string();
        // Unique names (interface names are at most 15 bytes) and a /24 nobody uses here.
        let (n, second, third) = loop {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let mix = pid
                .wrapping_mul(2_654_435_761)
                .wrapping_add(n.wrapping_mul(40_503));
            let second = 200 + (mix % 50) as u8;
            let third = ((mix >> 8) % 254) as u8 + 1;
            let prefix = format!(" 10.{second}.{third}.");
            let ns = format!("chorus-t{pid}-{n}");
            if !existing.contains(&prefix) && !namespaces.contains(&ns) {
                break (n, second, third);
            }
            assert!(n < 1000, "no free subnet or namespace name");
        };
        let tag = format!("{:x}", (u64::from(pid) << 10) | u64::from(n % 1024));
        let net = Net {
            ns: format!("chorus-t{pid}-{n}"),
            host_if: format!("chh{tag}"),
            host_ip: Ipv4Addr::new(10, second, third, 1),
            client_ip: Ipv4Addr::new(10, second, third, 2),
            tmp: std::env::temp_dir().join(format!("chorus-netns-{pid}-{n}")),
        };
        std::fs::create_dir_all(&net.tmp).expect("namespace scratch dir");
        let client_if = format!("chc{tag}");
        // From here on, Drop cleans up whatever was made.
        must(&mut ip(&["netns", "add", &net.ns]));
        must(&mut ip(&[
            "link",
            "add",
            &net.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &client_if,
            "netns",
            &net.ns,
        ]));
        must(&mut ip(&[
            "addr",
            "add",
            &format!("{}/24", net.host_ip),
            "dev",
            &net.host_if,
        ]));
        must(&mut ip(&["link", "set", &net.host_if, "up"]));
        must(&mut net.exec_cmd(
            "ip",
            &[
                "addr",
                "add",
                &format!("{}/24", net.client_ip),
                "dev",
                &client_if,
            ],
        ));
        must(&mut net.exec_cmd("ip", &["link", "set", &client_if, "up"]));
        must(&mut net.exec_cmd("ip", &["link", "set", "lo", "up"]));
        if block_udp {
            let rules = "table inet chorus_block_udp {\n\
                 chain input { type filter hook input priority 0; policy accept; meta l4proto udp counter drop; }\n\
                 chain output { type filter hook output priority 0; policy accept; meta l4proto udp counter drop; }\n\
                 }\n";
            let mut nft = net.exec_cmd("nft", &["-f", "-"]);
            let mut child = nft
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("nft runs");
            {
                use std::io::Write;
                let mut stdin = child.stdin.take().expect("nft stdin");
                stdin.write_all(rules.as_bytes()).expect("rules to nft");
            }
            let out = child.wait_with_output().expect("nft finishes");
            assert!(
                out.status.success(),
                "nft refused the rules: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        net.wait_link_up();
        net
    }

    /// `program args...` inside the namespace.
    pub fn exec_cmd(&self, program: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns, program]).args(args);
        c
    }

    /// `program` inside the namespace as a tokio command (killed when dropped), with the
    /// namespace's own `TMPDIR`.
    pub fn exec_async(&self, program: &str) -> tokio::process::Command {
        let mut c = tokio::process::Command::new("ip");
        c.args(["netns", "exec", &self.ns, program]);
        c.env("TMPDIR", &self.tmp);
        c.kill_on_drop(true);
        c
    }

    /// Waits until a TCP connection from the namespace reaches a listener on `host_ip` (bash's
    /// `/dev/tcp`: no extra tool), so the link is up and TCP passes the rules.
    fn wait_link_up(&self) {
        let listener = std::net::TcpListener::bind((self.host_ip, 0)).expect("bind on host_ip");
        let port = listener.local_addr().expect("addr").port();
        let probe = format!("exec 3<>/dev/tcp/{}/{port}", self.host_ip);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let out = output(&mut self.exec_cmd("timeout", &["2", "bash", "-c", &probe]));
            if out.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} cannot reach {} over TCP: {}",
                self.ns,
                self.host_ip,
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// UDP datagrams the namespace's nftables rules dropped so far (input, output).
    pub fn udp_dropped(&self) -> (u64, u64) {
        let out = output(&mut self.exec_cmd("nft", &["list", "table", "inet", "chorus_block_udp"]));
        let text = String::from_utf8_lossy(&out.stdout);
        let mut counts = text
            .lines()
            .filter(|l| l.contains("counter packets"))
            .filter_map(|l| {
                l.split_whitespace()
                    .skip_while(|w| *w != "packets")
                    .nth(1)
                    .and_then(|v| v.parse().ok())
            });
        (counts.next().unwrap_or(0), counts.next().unwrap_or(0))
    }

    /// `N` distinct free ports on `host_ip`, each for both TCP and UDP (bound together, then
    /// released for the server that will bind them).
    pub fn free_ports<const N: usize>(&self) -> [u16; N] {
        let mut held = Vec::new();
        let mut ports = [0; N];
        for port in &mut ports {
            *port = (0..50)
                .find_map(|_| {
                    let tcp = std::net::TcpListener::bind((self.host_ip, 0)).ok()?;
                    let p = tcp.local_addr().ok()?.port();
                    let udp = UdpSocket::bind((self.host_ip, p)).ok()?;
                    held.push((tcp, udp));
                    Some(p)
                })
                .unwrap_or_else(|| panic!("no free port on {}", self.host_ip));
        }
        ports
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Whatever still runs in the namespace (a Chromium whose node parent was killed) was
        // started by this test: kill it by id, or the namespace outlives its name.
        kill_namespace_processes(&self.ns);
        let _ = ip(&["netns", "del", &self.ns]).status();
        // Gone with the namespace's end; deleted here in case the namespace was not made.
        let _ = ip(&["link", "del", &self.host_if])
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}

/// A real coturn started for one test, with TURN REST credentials (`use-auth-secret`,
/// `static-auth-secret` = the secret Chorus hands credentials for), listening on one address
/// over UDP and TCP and relaying from that address. Killed on drop; its log is kept in memory
/// for the test to read.
pub struct Coturn {
    child: Child,
    dir: PathBuf,
    /// Where it listens (UDP and TCP).
    pub addr: SocketAddr,
}

impl Coturn {
    /// Starts `turnserver` with no configuration file, on `ip:port` (UDP and TCP, no TLS),
    /// relaying from `ip` to peers at `ip` only.
    pub fn start(ip: Ipv4Addr, port: u16, secret: &str) -> Coturn {
        let ip_s = ip.to_string();
        let args = [
            "-n".to_owned(), // no configuration file: everything is on this command line
            "--no-cli".into(),
            "--no-tls".into(),
            "--no-dtls".into(),
            "--simple-log".into(),
            "--fingerprint".into(),
            "--use-auth-secret".into(),
            "--realm=chorus.test".into(),
            // Only the SFU may be a peer (coturn allows private peers unless told not to;
            // saying it keeps this test honest if a later coturn denies them by default).
            format!("--allowed-peer-ip={ip_s}"),
        ];
        Self::spawn(&args, ip, port, port, secret)
    }

    /// Starts `turnserver -c config` (e.g. the production sample) with the test's own address
    /// (listening and relaying on `ip`, plain TURN on `port`, TLS on `tls_port`), certificate,
    /// secret and scratch files on the command line, which take precedence over the file;
    /// `ip` is allowed as a peer (the sample denies private ranges). Ready when `tls_port`
    /// accepts TCP.
    pub fn from_config(
        config: &Path,
        ip: Ipv4Addr,
        (port, tls_port): (u16, u16),
        secret: &str,
        (cert, key): (&Path, &Path),
    ) -> Coturn {
        let args = [
            "-c".to_owned(),
            config.display().to_string(),
            format!("--tls-listening-port={tls_port}"),
            format!("--cert={}", cert.display()),
            format!("--pkey={}", key.display()),
            format!("--allowed-peer-ip={ip}"),
        ];
        Self::spawn(&args, ip, port, tls_port, secret)
    }

    fn spawn(args: &[String], ip: Ipv4Addr, port: u16, ready_port: u16, secret: &str) -> Coturn {
        let dir = std::env::temp_dir().join(format!(
            "chorus-coturn-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("coturn dir");
        let log = std::fs::File::create(dir.join("turnserver.log")).expect("log file");
        let child = Command::new("turnserver")
            .args(args)
            .args([
                "--log-file=stdout".to_owned(),
                "--verbose".into(),
                format!("--static-auth-secret={secret}"),
                format!("--listening-ip={ip}"),
                format!("--listening-port={port}"),
                format!("--relay-ip={ip}"),
                "--min-port=40000".into(),
                "--max-port=40999".into(),
                format!("--pidfile={}", dir.join("turnserver.pid").display()),
                format!("--userdb={}", dir.join("turndb").display()),
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("turnserver runs (apt-get install coturn)");
        let mut turn = Coturn {
            child,
            dir,
            addr: SocketAddr::from((ip, port)),
        };
        // Ready when it accepts TCP.
        let ready = SocketAddr::from((ip, ready_port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&ready, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = turn.child.try_wait() {
                panic!("turnserver exited ({status}):\n{}", turn.log());
            }
            assert!(
                Instant::now() < deadline,
                "turnserver did not listen on {ready} within 10 s:\n{}",
                turn.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        turn
    }

    /// What coturn logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("turnserver.log")).unwrap_or_default()
    }

    /// Its scratch directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
