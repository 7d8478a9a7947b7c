//! A loopback TCP proxy that can be cut and healed: the network partition of the fencing tests.
//!
//! While cut, every connection through it is dropped, and new ones are closed at once (an
//! unreachable host, so a sandbox behind it fails fast and would keep writing at full speed if
//! it ignored its lease). It binds its own port 0 and knows it before any client connects.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A running proxy.
pub struct Proxy {
    /// `http://127.0.0.1:PORT`: where clients connect instead of the upstream.
    pub url: String,
    cut: watch::Sender<bool>,
    connections: Arc<AtomicU64>,
    rt: Option<tokio::runtime::Runtime>,
}

impl Proxy {
    /// Forwards a loopback port to `upstream` (`http://HOST:PORT` or `HOST:PORT`).
    pub fn start(upstream: &str) -> Proxy {
        let upstream: SocketAddr =
            upstream.trim_start_matches("http://").trim_end_matches('/').parse().expect("upstream HOST:PORT");
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).expect("bind the proxy");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (cut, _) = watch::channel(false);
        let connections = Arc::new(AtomicU64::new(0));
        let (state, count) = (cut.subscribe(), connections.clone());
        rt.spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { continue };
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(client, upstream, state.clone()));
            }
        });
        Proxy { url, cut, connections, rt: Some(rt) }
    }

    /// Cuts the link: live connections are dropped, new ones closed at once.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Heals the link: new connections are forwarded again.
    pub fn heal(&self) {
        self.cut.send_replace(false);
    }

    /// How many connections clients have opened so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Forwards one connection until either side closes or the link is cut.
async fn serve(mut client: TcpStream, upstream: SocketAddr, mut cut: watch::Receiver<bool>) {
    if *cut.borrow_and_update() {
        return;
    }
    let Ok(mut server) = TcpStream::connect(upstream).await else { return };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = cut.wait_for(|c| *c) => {}
    }
}
