//! HTTP/2 abuse, frame by frame: rapid reset, more streams than allowed, a CONTINUATION flood,
//! a header block that never ends, SETTINGS and PING floods. Each is cut off, and other clients
//! are still served.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::POLICY;
use crate::support::gateway::yaml;
use crate::support::upstream::Mode;
use crate::support::{Client, FakeUpstream, TestGateway, TestPki};

const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 1;
const ENHANCE_YOUR_CALM: u32 = 0xb;
const END_HEADERS: u8 = 4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A GET / header block in HPACK: indexed :method GET, :scheme https, :path /, and a literal
/// :authority.
fn get_block() -> Vec<u8> {
    let mut b = vec![0x82, 0x87, 0x84, 0x01, 9];
    b.extend_from_slice(b"localhost");
    b
}

/// A TLS connection that negotiated h2, with the client preface and an empty SETTINGS sent.
async fn open(
    gw: &TestGateway,
    pki: &TestPki,
    cert: &crate::support::pki::ClientCert,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut tls = Client::h2(gw.addr, &pki.ca_pem, Some(cert))
        .connect()
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    tls.write_all(&hello).await.unwrap();
    tls
}

/// Frames the server sends, as (type, flags, stream, payload), until `stop` says so, the
/// connection ends, or `within` passes. The bool is whether the connection ended.
async fn read_frames(
    tls: &mut (impl AsyncReadExt + Unpin),
    within: Duration,
    mut stop: impl FnMut(&(u8, u8, u32, Vec<u8>)) -> bool,
) -> (Vec<(u8, u8, u32, Vec<u8>)>, bool) {
    let mut frames = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let mut head = [0u8; 9];
        match tokio::time::timeout_at(deadline, tls.read_exact(&mut head)).await {
            Err(_) => return (frames, false),
            Ok(Err(_)) => return (frames, true),
            Ok(Ok(_)) => {}
        }
        let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
        let mut payload = vec![0u8; len];
        if tokio::time::timeout_at(deadline, tls.read_exact(&mut payload))
            .await
            .map(|r| r.is_err())
            .unwrap_or(true)
        {
            return (frames, true);
        }
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let f = (head[3], head[4], stream, payload);
        let done = stop(&f);
        frames.push(f);
        if done {
            return (frames, false);
        }
    }
}

fn error_code(payload: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([
        payload[at],
        payload[at + 1],
        payload[at + 2],
        payload[at + 3],
    ])
}

async fn still_serves(gw: &TestGateway, pki: &TestPki, cert: &crate::support::pki::ClientCert) {
    let c = Client::h2(gw.addr, &pki.ca_pem, Some(cert));
    assert_eq!(
        c.get("/after").await.unwrap().status,
        200,
        "another client is served"
    );
}

#[tokio::test]
async fn rapid_reset_gets_goaway_and_other_clients_are_served() {
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    let up = FakeUpstream::with_mode(Mode::Delay(Duration::from_millis(200))).await;
    let gw = TestGateway::start(&pki, &yaml(&pki, up.addr, POLICY)).await;
    let mut tls = open(&gw, &pki, &bob).await;
    // Open a stream and cancel it at once, 1,000 times, in one burst.
    let mut burst = Vec::new();
    for i in 0..1000u32 {
        let id = 2 * i + 1;
        burst.extend(frame(HEADERS, END_HEADERS | END_STREAM, id, &get_block()));
        burst.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
    }
    let _ = tls.write_all(&burst).await;
    let (frames, _) = read_frames(&mut tls, Duration::from_secs(5), |f| f.0 == GOAWAY).await;
    let goaway = frames.iter().find(|f| f.0 == GOAWAY).expect("GOAWAY");
    assert_eq!(error_code(&goaway.3, 4), ENHANCE_YOUR_CALM);
    assert!(
        up.requests().len() < 100,
        "{} reset streams reached the upstream",
        up.requests().len()
    );
    still_serves(&gw, &pki, &bob).await;
}

#[tokio::test]
async fn more_streams_than_allowed_are_refused() {
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    let up = FakeUpstream::with_mode(Mode::Delay(Duration::from_millis(1500))).await;
    let gw = TestGateway::start(&pki, &yaml(&pki, up.addr, POLICY)).await;
    let mut tls = open(&gw, &pki, &bob).await;
    let mut burst = Vec::new();
    for i in 0..200u32 {
        burst.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            2 * i + 1,
            &get_block(),
        ));
    }
    tls.write_all(&burst).await.unwrap();
    let mut refused = 0;
    let (frames, ended) = read_frames(&mut tls, Duration::from_secs(5), |f| {
        if f.0 == RST_STREAM && error_code(&f.3, 0) == 7 {
            refused += 1;
        }
        f.0 == GOAWAY || refused >= 72
    })
    .await;
    assert_eq!(
        refused,
        72,
        "streams past 128 are refused: {} frames, ended {ended}",
        frames.len()
    );
    assert!(
        up.requests().len() <= 128,
        "{} reached the upstream",
        up.requests().len()
    );
    still_serves(&gw, &pki, &bob).await;
}

#[tokio::test]
async fn a_continuation_flood_is_cut_at_the_header_limit() {
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&pki, &yaml(&pki, up.addr, POLICY)).await;
    let mut tls = open(&gw, &pki, &bob).await;
    // A header block that never ends: HEADERS without END_HEADERS, then CONTINUATION frames
    // each carrying one more literal header, far past max_header_bytes.
    let mut flood = frame(HEADERS, END_STREAM, 1, &get_block());
    let mut literal = vec![0x00, 8];
    literal.extend_from_slice(b"x-filler");
    literal.push(0x7f);
    literal.push(0x81);
    literal.push(0x07); // 127 + 129 = 256-byte value
    literal.extend(std::iter::repeat_n(b'a', 256));
    for _ in 0..2000 {
        flood.extend(frame(CONTINUATION, 0, 1, &literal));
    }
    let _ = tls.write_all(&flood).await;
    let (frames, ended) = read_frames(&mut tls, Duration::from_secs(5), |f| {
        f.0 == GOAWAY || f.0 == RST_STREAM || (f.0 == HEADERS && f.2 == 1)
    })
    .await;
    assert!(
        frames.iter().any(|f| f.0 == GOAWAY),
        "the flood was not cut: {:?}, ended {ended}",
        frames.iter().map(|f| f.0).collect::<Vec<_>>()
    );
    assert!(up.requests().is_empty());
    still_serves(&gw, &pki, &bob).await;
}

#[tokio::test]
async fn a_header_block_that_never_ends_is_closed_by_header_timeout() {
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    let up = FakeUpstream::start().await;
    let policy = format!("{POLICY}\nlimits:\n  header_timeout: 500ms\n");
    let gw = TestGateway::start(&pki, &yaml(&pki, up.addr, &policy)).await;
    let mut tls = open(&gw, &pki, &bob).await;
    tls.write_all(&frame(HEADERS, END_STREAM, 1, &get_block()))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let (frames, ended) = read_frames(&mut tls, Duration::from_secs(5), |f| f.0 == GOAWAY).await;
    assert!(
        frames.iter().any(|f| f.0 == GOAWAY),
        "the connection stayed open: {:?}, ended {ended}",
        frames.iter().map(|f| f.0).collect::<Vec<_>>()
    );
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "cut by the timeout, not at once"
    );
    assert!(up.requests().is_empty());
    still_serves(&gw, &pki, &bob).await;
}

/// SETTINGS and PING each oblige the gateway to answer (an ACK). A client that floods them and
/// reads nothing must not make the gateway queue answers: h2 writes each answer before it reads
/// the next frame, so once the client's receive buffer is full the gateway stops reading, the
/// client's writes stall, and send_timeout ends the connection.
#[tokio::test]
async fn settings_and_ping_floods_that_are_never_read_stall_and_are_cut_off() {
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    let up = FakeUpstream::start().await;
    let policy = format!("{POLICY}\nlimits:\n  send_timeout: 1s\n");
    let gw = TestGateway::start(&pki, &yaml(&pki, up.addr, &policy)).await;
    let floods = [
        ("SETTINGS", frame(SETTINGS, 0, 0, &[])),
        ("PING", frame(PING, 0, 0, b"12345678")),
    ];
    for (round, (name, one)) in floods.into_iter().enumerate() {
        let mut tls = open(&gw, &pki, &bob).await;
        // 64 KiB writes, up to 256 MiB in all: far more than any socket buffers hold.
        let chunk: Vec<u8> = one.repeat(64 * 1024 / one.len());
        let mut written = 0usize;
        let outcome = tokio::time::timeout(Duration::from_secs(30), async {
            while written < 256 * 1024 * 1024 {
                tls.write_all(&chunk).await?;
                written += chunk.len();
            }
            Ok::<_, std::io::Error>(())
        })
        .await;
        assert!(
            matches!(outcome, Ok(Err(_))),
            "{name} flood: the gateway should stop reading and then close; it took {written} \
             bytes and the write ended with {outcome:?}"
        );
        assert!(
            written < 64 * 1024 * 1024,
            "{name} flood: the gateway kept reading ({written} bytes) for a client that reads nothing"
        );
        assert!(
            crate::support::metric(
                &gw,
                "portcullis_connections_closed_total{reason=\"send_timeout\"}"
            )
            .await
                >= (round + 1) as f64,
            "{name} flood: closed by send_timeout"
        );
        still_serves(&gw, &pki, &bob).await;
    }
}
