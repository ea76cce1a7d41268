//! A TCP proxy between hookbus and a broker, to cut the network the way an outage does (the
//! broker process itself keeps running). For Kafka it is the broker's advertised listener, so
//! every client connection goes through it. It can also refuse one Kafka request type by
//! closing the connection that sends it (a cluster that will not take that request).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct Proxy {
    pub port: u16,
    state: Arc<State>,
}

struct State {
    target: Mutex<Option<u16>>,
    open: AtomicBool,
    /// Kafka api key whose requests close the connection; -1 for none.
    refuse_api_key: AtomicI32,
    connections: Mutex<Vec<TcpStream>>,
}

impl Proxy {
    /// Listens on a free port; forwards to `127.0.0.1:target` once [`Proxy::target`] is set.
    pub fn start() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let state = Arc::new(State {
            target: Mutex::new(None),
            open: AtomicBool::new(true),
            refuse_api_key: AtomicI32::new(-1),
            connections: Mutex::new(Vec::new()),
        });
        let accept_state = state.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let state = accept_state.clone();
                std::thread::spawn(move || state.serve(client));
            }
        });
        Proxy { port, state }
    }

    pub fn target(&self, port: u16) {
        *self.state.target.lock().unwrap() = Some(port);
    }

    /// Closes every connection and refuses new ones until [`Proxy::restore`].
    pub fn cut(&self) {
        self.state.open.store(false, Ordering::SeqCst);
        for c in self.state.connections.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    pub fn restore(&self) {
        self.state.open.store(true, Ordering::SeqCst);
    }

    /// Connections that send a Kafka request with this api key (e.g. 19, CreateTopics) are
    /// closed before it reaches the broker.
    pub fn refuse_kafka_requests(&self, api_key: i16) {
        self.state
            .refuse_api_key
            .store(i32::from(api_key), Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
    }
}

impl State {
    fn serve(self: Arc<Self>, client: TcpStream) {
        let target = *self.target.lock().unwrap();
        let (true, Some(target)) = (self.open.load(Ordering::SeqCst), target) else {
            let _ = client.shutdown(Shutdown::Both);
            return;
        };
        let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
            let _ = client.shutdown(Shutdown::Both);
            return;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        {
            let mut connections = self.connections.lock().unwrap();
            connections.push(client.try_clone().expect("clone"));
            connections.push(server.try_clone().expect("clone"));
        }
        let (c2, s2) = (
            client.try_clone().expect("clone"),
            server.try_clone().expect("clone"),
        );
        let up = {
            let state = self.clone();
            std::thread::spawn(move || state.requests(client, server))
        };
        copy(s2, c2);
        let _ = up.join();
    }

    /// Client → broker, frame by frame (4-byte length prefix), so a refused request type can
    /// be recognized.
    fn requests(&self, mut client: TcpStream, mut server: TcpStream) {
        let _ = client.set_read_timeout(Some(Duration::from_secs(600)));
        loop {
            let mut len = [0u8; 4];
            if client.read_exact(&mut len).is_err() {
                break;
            }
            let size = u32::from_be_bytes(len) as usize;
            let mut frame = vec![0u8; size];
            if client.read_exact(&mut frame).is_err() {
                break;
            }
            let api_key = frame.get(..2).map(|b| i16::from_be_bytes([b[0], b[1]]));
            let refused = self.refuse_api_key.load(Ordering::SeqCst);
            if refused >= 0 && api_key == Some(refused as i16) {
                break;
            }
            if server.write_all(&len).is_err() || server.write_all(&frame).is_err() {
                break;
            }
        }
        let _ = client.shutdown(Shutdown::Both);
        let _ = server.shutdown(Shutdown::Both);
    }
}

fn copy(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
