//! Ports for the servers the tests start. A server that can bind a port of its own choosing
//! does (`NatsServer`: `-p -1`, read back). The others are told a port picked here, which the
//! OS may hand to another test's server before they bind it: that lost race ends their start
//! with "address already in use", and the start is retried on another port (a first start) or,
//! for a restart (clients were told this port), on the same one until a deadline.

use std::net::TcpListener;
use std::process::{Child, Command};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

/// How many ports a first start tries before it gives up.
pub const PORT_ATTEMPTS: usize = 5;

/// A port nobody listened on when it was picked (see the module notes: pass it to a start that
/// retries on a bind failure).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// A port nothing listens on while the tests run (connections to it are refused): it is
/// held by a bound socket that never listens, so no server can bind it and the OS never hands
/// it out.
pub fn dead_port() -> u16 {
    static DEAD: LazyLock<(tokio::net::TcpSocket, u16)> = LazyLock::new(|| {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(([127, 0, 0, 1], 0).into())
            .expect("bind 127.0.0.1:0");
        let port = socket.local_addr().expect("local addr").port();
        (socket, port)
    });
    DEAD.1
}

/// Whether process `pid` itself has a socket listening on TCP `port`: the listening sockets of
/// `/proc/net/tcp{,6}` on that port, matched against the process's descriptors (a connection
/// that succeeds may reach whichever process bound the port).
pub fn listens(pid: u32, port: u16) -> bool {
    let inodes: Vec<String> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .filter_map(|line| {
                    // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
                    let columns: Vec<&str> = line.split_whitespace().collect();
                    let (_, local_port) = columns.get(1)?.rsplit_once(':')?;
                    let inode = columns.get(9)?;
                    let listening = columns.get(3) == Some(&"0A");
                    (listening && u16::from_str_radix(local_port, 16).ok()? == port)
                        .then(|| format!("socket:[{inode}]"))
                })
                .collect::<Vec<_>>()
        })
        .collect();
    if inodes.is_empty() {
        return false;
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .is_ok_and(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
    })
}

/// Whether a server's log says it could not bind its port.
pub fn port_taken(log: &str) -> bool {
    log.to_ascii_lowercase().contains("address already in use")
}

/// Spawns `command` (its output already sent where `log` reads it) and waits until the process
/// itself listens on `port`. `None` when it exited because the port was taken; panics when it
/// exits for another reason or does not listen within `within`.
pub fn spawn_on(
    command: &mut Command,
    port: u16,
    what: &str,
    within: Duration,
    log: &dyn Fn() -> String,
) -> Option<Child> {
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: {e} (scripts/setup installs it)"));
    let deadline = Instant::now() + within;
    loop {
        if listens(child.id(), port) {
            return Some(child);
        }
        if let Some(status) = child.try_wait().expect("try_wait") {
            let text = log();
            if port_taken(&text) {
                return None;
            }
            panic!("{what} exited ({status}) before it listened on port {port}:\n{text}");
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what} did not listen on port {port} within {within:?}:\n{}",
                log()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A first start: [`spawn_on`] a [`free_port`], another one when a lost race took it.
pub fn spawn_on_free_port(
    what: &str,
    within: Duration,
    log: &dyn Fn() -> String,
    mut command: impl FnMut(u16) -> Command,
) -> (Child, u16) {
    for _ in 0..PORT_ATTEMPTS {
        let port = free_port();
        if let Some(child) = spawn_on(&mut command(port), port, what, within, log) {
            return (child, port);
        }
    }
    panic!(
        "{what}: each of {PORT_ATTEMPTS} free ports was taken before it could bind it:\n{}",
        log()
    );
}

/// A restart: [`spawn_on`] the same `port` (clients were told it), again while another
/// process holds it, until `within` has passed.
pub fn respawn_on(
    port: u16,
    what: &str,
    within: Duration,
    log: &dyn Fn() -> String,
    mut command: impl FnMut() -> Command,
) -> Child {
    let deadline = Instant::now() + within;
    loop {
        if let Some(child) = spawn_on(&mut command(), port, what, within, log) {
            return child;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: port {port} stayed taken for {within:?}:\n{}",
            log()
        );
        // Another process holds the port: give it time to let go (a retry, not a sync).
        std::thread::sleep(Duration::from_millis(100));
    }
}
