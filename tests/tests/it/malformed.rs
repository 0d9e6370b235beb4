//! Hostile SIP input over UDP: garbage datagrams are dropped, a request whose framing is
//! sound but whose CSeq is broken gets 400, and the node keeps serving SIP and HTTP.

use std::net::UdpSocket;
use std::time::Duration;

use crate::harness::{agents_csv, free_port, register, Node, NodeSpec};

/// Datagrams no SIP parser should accept.
const GARBAGE: &[&[u8]] = &[
    b"",
    b"\x00\x01\x02\x03\xff\xfe\xfd",
    b"HELLO WORLD\r\n\r\n",
    b"INVITE\r\n\r\n",
    b"SIP/2.0 200\r\n\r\n",
    b"INVITE sip:100@127.0.0.1 SIP/2.0\r\nVia: \r\nCall-ID:\r\nCSeq: 1\r\n\r\n",
    b"REGISTER sip:x SIP/2.0\r\nContent-Length: 99999999999999999999\r\n\r\nabc",
    b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:1;branch=z9hG4bK1\r\n\
      To: <sip:x>\r\nFrom: <sip:y>;tag=1\r\nCall-ID: \xc3\x28\xa0\xa1\r\nCSeq: 1 OPTIONS\r\n\r\n",
];

#[test]
fn malformed() {
    let mut node = Node::start(NodeSpec::for_test());
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap_or_else(|e| panic!("set_read_timeout: {e}"));
    let local = socket
        .local_addr()
        .unwrap_or_else(|e| panic!("local_addr: {e}"));

    for datagram in GARBAGE {
        let _ = socket.send_to(datagram, node.sip);
    }
    let big = vec![b'A'; 60_000];
    let _ = socket.send_to(&big, node.sip);

    // Well framed, sound Via (so a response can be routed), but CSeq is not a number.
    let request = format!(
        "INVITE sip:100@{sip} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {local};branch=z9hG4bK-carillon-malformed-1\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:5551008@{local}>;tag=malformed1\r\n\
         To: <sip:100@{sip}>\r\n\
         Call-ID: malformed-1@carillon.test\r\n\
         CSeq: banana INVITE\r\n\
         Contact: <sip:5551008@{local}>\r\n\
         Content-Length: 0\r\n\r\n",
        sip = node.sip
    );
    let mut status_line = String::new();
    // UDP may drop a datagram: resend a few times, each wait bounded by the read timeout.
    'tries: for _ in 0..6 {
        let _ = socket.send_to(request.as_bytes(), node.sip);
        let mut buf = [0u8; 65_535];
        while let Ok((n, _)) = socket.recv_from(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            if text.contains("malformed-1@carillon.test") {
                status_line = text.lines().next().unwrap_or("").to_string();
                if !status_line.starts_with("SIP/2.0 1") {
                    break 'tries;
                }
            }
        }
    }
    assert!(
        status_line.starts_with("SIP/2.0 400"),
        "a broken CSeq should get 400, got {status_line:?}; node log:\n{}",
        node.log_tail()
    );

    assert!(
        node.is_running(),
        "node died on garbage; log:\n{}",
        node.log_tail()
    );
    assert!(
        matches!(node.health(), Ok((200, _))),
        "HTTP after garbage: {:?}",
        node.health()
    );
    let csv = agents_csv(node.dir(), "agent-1001.csv", [1001], "pw");
    register(&node, &csv, 1, free_port(), 3600, "register-after-garbage")
        .assert_success("SIP still served after garbage");
    node.wait_until("1001 ready", Duration::from_secs(5), |n| {
        n.agents_in("ready") == 1
    });
}
