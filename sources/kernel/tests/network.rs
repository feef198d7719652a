//! TCP facts from the real kernel over loopback: a refused connect, an established one with
//! its accept and close, and the owning process of each.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use tapio_config::KernelCollectorConfig;
use tapio_model::{ConnectOutcome, FactPayload};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_and_established_connects() {
    let running = common::start(KernelCollectorConfig::default()).await;
    let me = std::process::id();

    // A port nobody listens on: bind to get a free one, then close it.
    let closed_port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let refused =
        tokio::task::spawn_blocking(move || TcpStream::connect(("127.0.0.1", closed_port)))
            .await
            .unwrap();
    assert_eq!(
        refused.err().map(|e| e.kind()),
        Some(std::io::ErrorKind::ConnectionRefused)
    );

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut buf = [0u8; 5];
        conn.read_exact(&mut buf).unwrap();
        conn.write_all(b"world!").unwrap();
    });
    let client_port = tokio::task::spawn_blocking(move || {
        let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
        conn.write_all(b"hello").unwrap();
        let mut buf = [0u8; 6];
        conn.read_exact(&mut buf).unwrap();
        conn.local_addr().unwrap().port()
    })
    .await
    .unwrap();
    server.join().unwrap();

    let fact = running
        .wait_for(
            Duration::from_secs(5),
            |p| matches!(p, FactPayload::TcpConnect(c) if c.remote.port() == closed_port),
        )
        .await
        .expect("refused connect fact");
    let FactPayload::TcpConnect(connect) = fact.payload else {
        unreachable!()
    };
    assert_eq!(connect.outcome, ConnectOutcome::Refused);
    assert_eq!(connect.error, 111, "ECONNREFUSED");
    assert_eq!(connect.remote.ip().to_string(), "127.0.0.1");
    assert_eq!(connect.process.as_ref().map(|p| p.pid), Some(me));

    let fact = running
        .wait_for(
            Duration::from_secs(5),
            |p| matches!(p, FactPayload::TcpConnect(c) if c.remote.port() == port),
        )
        .await
        .expect("established connect fact");
    let FactPayload::TcpConnect(connect) = fact.payload else {
        unreachable!()
    };
    assert_eq!(connect.outcome, ConnectOutcome::Established);
    assert_eq!(connect.local.port(), client_port);
    assert_eq!(connect.process.as_ref().map(|p| p.pid), Some(me));
    assert!(connect.latency_ns < 1_000_000_000);

    let fact = running
        .wait_for(
            Duration::from_secs(5),
            |p| matches!(p, FactPayload::TcpAccept(a) if a.local.port() == port),
        )
        .await
        .expect("accept fact");
    let FactPayload::TcpAccept(accept) = fact.payload else {
        unreachable!()
    };
    assert_eq!(accept.remote.port(), client_port);
    assert_eq!(
        accept.process.as_ref().map(|p| p.pid),
        Some(me),
        "listener's owner"
    );

    let fact = running
        .wait_for(
            Duration::from_secs(5),
            |p| matches!(p, FactPayload::TcpClose(c) if c.local.port() == client_port),
        )
        .await
        .unwrap_or_else(|| {
            panic!(
                "client close fact; seen: {:#?}",
                running
                    .facts()
                    .iter()
                    .filter(|f| matches!(
                        f.payload,
                        FactPayload::TcpClose(_)
                            | FactPayload::TcpConnect(_)
                            | FactPayload::TcpAccept(_)
                    ))
                    .collect::<Vec<_>>()
            )
        });
    let FactPayload::TcpClose(close) = fact.payload else {
        unreachable!()
    };
    assert_eq!(close.remote.port(), port);
    assert_eq!(close.bytes_received, 6);
    assert_eq!(close.bytes_sent, 5);
    assert_eq!(close.process.as_ref().map(|p| p.pid), Some(me));

    let fact = running
        .wait_for(Duration::from_secs(5), |p| {
            matches!(p, FactPayload::TcpClose(c) if c.local.port() == port && c.remote.port() == client_port)
        })
        .await
        .expect("server close fact");
    let FactPayload::TcpClose(close) = fact.payload else {
        unreachable!()
    };
    assert_eq!((close.bytes_received, close.bytes_sent), (5, 6));
    assert_eq!(close.process.as_ref().map(|p| p.pid), Some(me));
    running.stop().await.expect("clean stop");
}
