//! `PollTls` over real sockets: ciphertext read into the session's spare
//! capacity (the `set_len` in `poll_fill`) and plaintext both ways, in
//! pieces larger than a TLS record and than one read. scripts/sanitize.sh
//! runs this under AddressSanitizer.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::PollTls;
use crate::runtime::{self, TcpListener, TcpStream};
use crate::tls::identity::{server_name, ShardTls, ALPN_H2};
use crate::tls::revoked::PeerConns;
use crate::tls::stream::TlsStream;
use crate::tls::testpki::Pki;
use crate::tls::Session;

const TD: &str = "spiffe://mesh.test/service/";

/// A TLS connection over loopback, handshaken, in readiness mode.
async fn poll_pair() -> (PollTls, PollTls) {
    let pki = Pki::new("mesh");
    let web = ShardTls::new(&Arc::new(pki.identity(&format!("{TD}web")))).unwrap();
    let api = ShardTls::new(&Arc::new(pki.identity(&format!("{TD}api")))).unwrap();
    let std_l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std_l.set_nonblocking(true).unwrap();
    let addr = std_l.local_addr().unwrap();
    let l = TcpListener::from_std(std_l).unwrap();
    let stop = runtime::Stop::new();
    let (accepted, connected, ()) = runtime::join3(
        l.accept(&stop.handle()),
        TcpStream::connect(addr, Duration::from_secs(5)),
        async {},
    )
    .await;
    let (server_tcp, _) = accepted.unwrap();
    let client_tcp = connected.unwrap();
    let c = Session::client_with_alpn(
        web.client.clone(),
        server_name("api", addr).unwrap(),
        ALPN_H2,
    )
    .unwrap();
    let s = Session::server(api.server.clone()).unwrap();
    let peers = Rc::new(PeerConns::default());
    let limit = Duration::from_secs(5);
    let (c, s, ()) = runtime::join3(
        TlsStream::handshake(client_tcp, c, limit, &peers),
        TlsStream::handshake(server_tcp, s, limit, &peers),
        async {},
    )
    .await;
    let poll = |t: TlsStream| {
        let p = t.into_parts().expect("not shared");
        PollTls::new(p.tcp.into_poll().unwrap(), p.session, p.registered)
    };
    (poll(c.unwrap()), poll(s.unwrap()))
}

#[test]
fn bytes_cross_a_poll_mode_tls_connection_whole_both_ways() {
    // 300 KB: many 16 KiB records, more than one socket read and more than
    // the session's receive buffer holds at once.
    const N: usize = 300_000;
    runtime::start_shard("tls-poll-test".into(), None, |_| async {
        let (mut c, mut s) = poll_pair().await;
        let up: Vec<u8> = (0..N).map(|i| (i % 253) as u8).collect();
        let expected = up.clone();
        let (sent, got, ()) = runtime::join3(
            async {
                c.write_all(&up).await.unwrap();
                c.flush().await.unwrap();
                // And the answer back, on the same connection.
                let mut back = vec![0u8; 5];
                c.read_exact(&mut back).await.unwrap();
                back
            },
            async {
                let mut got = vec![0u8; N];
                s.read_exact(&mut got).await.unwrap();
                s.write_all(b"thank").await.unwrap();
                s.flush().await.unwrap();
                got
            },
            async {},
        )
        .await;
        assert_eq!(sent, b"thank");
        assert!(got == expected, "the plaintext arrived changed");
        // Closing one side reads as the end of the stream on the other.
        c.shutdown().await.unwrap();
        drop(c);
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest).await;
        assert!(rest.is_empty());
    })
    .unwrap()
    .join()
    .unwrap();
}
