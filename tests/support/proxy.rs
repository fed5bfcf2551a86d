//! A TCP proxy a test controls, placed between a `vantage run` process and Postgres to
//! simulate a network partition.
//!
//! `cut()` black-holes every relayed connection: bytes stop flowing in both directions
//! but the client's socket stays open and gets no RST, which is what a partitioned
//! client sees. The server side of each connection is closed after `server_notices_after`
//! — standing in for the server's keepalive / `tcp_user_timeout` noticing the dead
//! client — which is when Postgres releases the client's session locks. `heal()` lets new
//! connections through again.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct PartitionProxy {
    pub addr: SocketAddr,
    cut: watch::Sender<bool>,
    accepting: Arc<AtomicBool>,
}

impl PartitionProxy {
    pub async fn start(upstream: SocketAddr, server_notices_after: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, cut_rx) = watch::channel(false);
        let accepting = Arc::new(AtomicBool::new(true));
        let accepting_flag = accepting.clone();
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if !accepting_flag.load(Ordering::SeqCst) {
                    // Partitioned: the SYN "arrives" but nothing ever answers.
                    tokio::spawn(async move {
                        let _held = client;
                        std::future::pending::<()>().await;
                    });
                    continue;
                }
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                tokio::spawn(relay(client, server, cut_rx.clone(), server_notices_after));
            }
        });
        Self {
            addr,
            cut,
            accepting,
        }
    }

    /// Partition: existing connections go silent, new ones hang.
    pub fn cut(&self) {
        self.accepting.store(false, Ordering::SeqCst);
        self.cut.send_replace(true);
    }

    /// New connections work again (connections cut earlier stay dead, as after a real
    /// partition the old TCP sessions are gone).
    pub fn heal(&self) {
        // Relays cut earlier are already parked for good; only new ones see this.
        self.cut.send_replace(false);
        self.accepting.store(true, Ordering::SeqCst);
    }
}

async fn relay(
    client: TcpStream,
    server: TcpStream,
    mut cut: watch::Receiver<bool>,
    server_notices_after: Duration,
) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let pump = async {
        let mut up = [0u8; 16 * 1024];
        let mut down = [0u8; 16 * 1024];
        loop {
            tokio::select! {
                n = client_read.read(&mut up) => match n {
                    Ok(0) | Err(_) => return,
                    Ok(n) => if server_write.write_all(&up[..n]).await.is_err() { return },
                },
                n = server_read.read(&mut down) => match n {
                    Ok(0) | Err(_) => return,
                    Ok(n) => if client_write.write_all(&down[..n]).await.is_err() { return },
                },
            }
        }
    };
    tokio::select! {
        _ = pump => {}
        _ = async { let _ = cut.wait_for(|cut| *cut).await; } => {
            // Keep the client's half open and silent; close the server's half once the
            // server would have noticed.
            tokio::time::sleep(server_notices_after).await;
            drop(server_write);
            drop(server_read);
            std::future::pending::<()>().await;
        }
    }
}
