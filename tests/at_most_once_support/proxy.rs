//! A loopback TCP proxy of our own that delays and cuts connections at random (seeded, with a
//! bounded number of cuts): a store's client sees slow replies, replies that never come and
//! connections that drop between a request and its reply.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use super::linearizability::Rng;

/// At most this many connections are cut in one proxy's life.
const MOST_CUTS: usize = 40;

/// The proxy; it stops when dropped.
pub(crate) struct FaultyProxy {
    addr: SocketAddr,
    cuts: Arc<AtomicUsize>,
    armed: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultyProxy {
    /// A proxy on a free loopback port in front of `upstream`: each chunk is delayed up to 3 ms
    /// one time in four, and, once [`arm`](Self::arm)ed, a connection is cut one chunk in
    /// `cut_one_in`.
    pub(crate) async fn start(upstream: SocketAddr, seed: u64, cut_one_in: u64) -> FaultyProxy {
        assert!(
            upstream.ip().is_loopback(),
            "the proxy only fronts loopback"
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let addr = listener.local_addr().expect("the proxy's address");
        let cuts = Arc::new(AtomicUsize::new(0));
        let armed = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(AtomicU64::new(0));
        let task = {
            let (cuts, armed) = (Arc::clone(&cuts), Arc::clone(&armed));
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let number = connections.fetch_add(1, Ordering::Relaxed);
                    let rng = Rng::new(seed ^ number.wrapping_mul(0x9E37_79B9_7F4A_7C15));
                    let faults = Faults {
                        cut_one_in,
                        cuts: Arc::clone(&cuts),
                        armed: Arc::clone(&armed),
                    };
                    tokio::spawn(relay(client, upstream, rng, faults));
                }
            })
        };
        FaultyProxy {
            addr,
            cuts,
            armed,
            task,
        }
    }

    /// From now on, connections are cut (the clients have connected).
    pub(crate) fn arm(&self) {
        self.armed.store(true, Ordering::Relaxed);
    }

    /// Where clients connect.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many connections it cut.
    pub(crate) fn cuts(&self) -> usize {
        self.cuts.load(Ordering::Relaxed).min(MOST_CUTS)
    }
}

impl Drop for FaultyProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// When a connection is cut.
#[derive(Clone)]
struct Faults {
    cut_one_in: u64,
    cuts: Arc<AtomicUsize>,
    armed: Arc<AtomicBool>,
}

impl Faults {
    fn cut(&self, rng: &mut Rng) -> bool {
        self.armed.load(Ordering::Relaxed)
            && rng.one_in(self.cut_one_in)
            && self.cuts.fetch_add(1, Ordering::Relaxed) < MOST_CUTS
    }
}

async fn relay(client: TcpStream, upstream: SocketAddr, rng: Rng, faults: Faults) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = (client.set_nodelay(true), server.set_nodelay(true));
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let mut down_rng = rng.clone();
    down_rng.skip();
    // Either direction ending (a cut, or a side closing) ends both: the halves drop.
    tokio::select! {
        () = pipe(client_read, server_write, rng, &faults) => {}
        () = pipe(server_read, client_write, down_rng, &faults) => {}
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut rng: Rng,
    faults: &Faults,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        if rng.one_in(4) {
            tokio::time::sleep(Duration::from_micros(rng.up_to(3_000))).await;
        }
        if faults.cut(&mut rng) {
            return;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

/// A proxy in front of the loopback server of `url`, and `url` through it
/// (`scheme://[user@]host:port[/rest]`).
pub(crate) async fn in_front_of(url: &str, seed: u64, cut_one_in: u64) -> (FaultyProxy, String) {
    let (scheme, rest) = url.split_once("://").expect("a URL with a scheme");
    let end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    let (user, host_port) = match authority.rsplit_once('@') {
        Some((user, host_port)) => (format!("{user}@"), host_port),
        None => (String::new(), authority),
    };
    let upstream: SocketAddr = host_port
        .parse()
        .unwrap_or_else(|_| panic!("a loopback host:port in {url}"));
    let proxy = FaultyProxy::start(upstream, seed, cut_one_in).await;
    let proxied = format!("{scheme}://{user}{}{path}", proxy.addr());
    (proxy, proxied)
}
