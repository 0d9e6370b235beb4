use super::*;

const LINPHONE_OFFER: &str = "v=0\r\n\
o=alice 2890844526 2890844526 IN IP4 192.0.2.10\r\n\
s=Talk\r\n\
c=IN IP4 192.0.2.10\r\n\
t=0 0\r\n\
a=rtcp-xr:rcvr-rtt=all:10000\r\n\
m=audio 49170 RTP/AVP 96 8 0 101\r\n\
a=rtpmap:96 opus/48000/2\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-15\r\n\
a=ptime:20\r\n\
a=sendrecv\r\n\
m=video 51372 RTP/AVP 99\r\n\
a=rtpmap:99 H264/90000\r\n";

fn local() -> SocketAddr {
    "203.0.113.5:20000".parse().expect("valid test address")
}

#[test]
fn parses_offer_fields() {
    let sdp = parse(LINPHONE_OFFER).expect("valid offer");
    assert_eq!(sdp.session_id, Some(2_890_844_526));
    assert_eq!(sdp.connection, Some("192.0.2.10".parse().expect("ip")));
    assert_eq!(sdp.media.len(), 2);
    let audio = sdp.audio().expect("audio section");
    assert_eq!(audio.port, 49170);
    assert_eq!(
        audio.payload_types().collect::<Vec<_>>(),
        vec![96, 8, 0, 101]
    );
    assert_eq!(audio.telephone_event(), Some(101));
    assert_eq!(audio.ptime_ms, Some(20));
    assert_eq!(audio.direction, Some(Direction::SendRecv));
    assert_eq!(audio.codec_for(96), None);
    assert_eq!(audio.codec_for(8), Some(Codec::Pcma));
}

#[test]
fn answer_picks_offerers_first_supported_codec_and_echoes_dtmf() {
    let offer = parse(LINPHONE_OFFER).expect("valid offer");
    let answer = negotiate(&offer, local(), &[Codec::Pcmu, Codec::Pcma]).expect("answerable");
    assert_eq!(answer.codec, Codec::Pcma);
    assert_eq!(answer.telephone_event, Some(101));
    assert_eq!(answer.remote, "192.0.2.10:49170".parse().expect("addr"));
    let text = &answer.sdp;
    assert!(text.contains("c=IN IP4 203.0.113.5\r\n"), "{text}");
    assert!(text.contains("m=audio 20000 RTP/AVP 8 101\r\n"), "{text}");
    assert!(text.contains("a=rtpmap:8 PCMA/8000\r\n"), "{text}");
    assert!(text.contains("a=fmtp:101 0-15\r\n"), "{text}");
    assert!(text.contains("a=sendrecv\r\n"), "{text}");
    assert!(text.contains("m=video 0 RTP/AVP 99\r\n"), "{text}");
    // Our answer parses back to the same choice.
    let back = remote_audio(&parse(text).expect("answer parses")).expect("usable");
    assert_eq!(back, (local(), Codec::Pcma));
    let (text, codec) = super::answer(&offer, local(), &Codec::ALL).expect("answerable");
    assert_eq!(codec, Codec::Pcma);
    assert_eq!(&text, &answer.sdp);
    assert_eq!(offer.audio_addr(), Some(answer.remote));
}

#[test]
fn answer_respects_our_support_list() {
    let offer = parse(LINPHONE_OFFER).expect("valid offer");
    let (_, codec) = answer(&offer, local(), &[Codec::Pcmu]).expect("answerable");
    assert_eq!(codec, Codec::Pcmu);
}

#[test]
fn no_common_codec_is_an_error() {
    let offer = parse("v=0\nc=IN IP4 192.0.2.1\nm=audio 4000 RTP/AVP 18 9\n").expect("parses");
    let err = answer(&offer, local(), &Codec::ALL).expect_err("no G.711");
    assert!(matches!(err, MediaError::NoCommonCodec { .. }), "{err}");
    assert!(err.to_string().contains("18 9"), "{err}");
}

#[test]
fn missing_or_rejected_audio_is_an_error() {
    let video_only = parse("v=0\nc=IN IP4 192.0.2.1\nm=video 4000 RTP/AVP 99\n").expect("parses");
    assert!(matches!(
        answer(&video_only, local(), &Codec::ALL),
        Err(MediaError::NoAudio)
    ));
    let rejected = parse("v=0\nc=IN IP4 192.0.2.1\nm=audio 0 RTP/AVP 0\n").expect("parses");
    assert!(matches!(
        answer(&rejected, local(), &Codec::ALL),
        Err(MediaError::NoAudio)
    ));
    let srtp = parse("v=0\nc=IN IP4 192.0.2.1\nm=audio 4000 RTP/SAVP 0\n").expect("parses");
    assert!(matches!(
        answer(&srtp, local(), &Codec::ALL),
        Err(MediaError::NoAudio)
    ));
    let no_c = parse("v=0\nm=audio 4000 RTP/AVP 0\n").expect("parses");
    assert!(matches!(
        answer(&no_c, local(), &Codec::ALL),
        Err(MediaError::NoConnectionAddress)
    ));
}

#[test]
fn media_level_connection_wins_and_ipv6_works() {
    let text = "v=0\nc=IN IP4 192.0.2.1\nm=audio 4000 RTP/AVP 0\nc=IN IP6 2001:db8::7\n";
    let remote = remote_audio(&parse(text).expect("parses")).expect("usable");
    assert_eq!(
        remote,
        ("[2001:db8::7]:4000".parse().expect("addr"), Codec::Pcmu)
    );

    let local6: SocketAddr = "[2001:db8::1]:30000".parse().expect("addr");
    let offer_text = offer(local6, &[Codec::Pcmu], 42);
    assert!(
        offer_text.contains("c=IN IP6 2001:db8::1\r\n"),
        "{offer_text}"
    );
    let parsed = parse(&offer_text).expect("our offer parses");
    assert_eq!(parsed.session_id, Some(42));
    assert_eq!(
        remote_audio(&parsed).expect("usable"),
        (local6, Codec::Pcmu)
    );
}

#[test]
fn direction_is_mirrored_in_the_answer() {
    let text = "v=0\nc=IN IP4 192.0.2.1\na=sendonly\nm=audio 4000 RTP/AVP 0\n";
    let offer = parse(text).expect("parses");
    let answer = negotiate(&offer, local(), &Codec::ALL).expect("answerable");
    assert_eq!(answer.direction, Direction::SendOnly);
    assert!(answer.sdp.contains("a=recvonly\r\n"), "{}", answer.sdp);
    let inactive =
        parse("v=0\nc=IN IP4 192.0.2.1\nm=audio 4000 RTP/AVP 0\na=inactive\n").expect("parses");
    assert_eq!(
        audio_details(&inactive).expect("usable").direction,
        Direction::Inactive
    );
}

#[test]
fn rtpmap_overriding_a_static_number_is_respected() {
    let text = "v=0\nc=IN IP4 192.0.2.1\nm=audio 4000 RTP/AVP 0 8\na=rtpmap:0 G729/8000\n";
    let (_, codec) = remote_audio(&parse(text).expect("parses")).expect("usable");
    assert_eq!(codec, Codec::Pcma);
}

#[test]
fn lf_only_unknown_lines_and_multicast_suffixes() {
    let text = "v=0\nz=whatever\nx-custom=1\nc=IN IP4 233.252.0.1/127\nm=audio 4000/2 RTP/AVP 0\n\
                a=unknown\na=rtcp:4001\n";
    let (addr, _) = remote_audio(&parse(text).expect("parses")).expect("usable");
    assert_eq!(addr, "233.252.0.1:4000".parse().expect("addr"));
}

#[test]
fn malformed_input_gives_errors_not_panics() {
    let cases = [
        "v=0\nc=IN IP4\n",
        "v=0\nc=IN IP4 999.1.1.1\n",
        "v=0\nc=IN IP6 192.0.2.1\n",
        "v=0\nc=ATM NSAP x\n",
        "v=0\nm=audio\n",
        "v=0\nm=audio 70000 RTP/AVP 0\n",
        "v=0\nm=audio 4000 RTP/AVP 300\n",
        "v=0\nm=audio 4000 RTP/AVP x\n",
        "v=0\nm=audio 4000 RTP/AVP 0\na=rtpmap:0\n",
        "v=0\nm=audio 4000 RTP/AVP 0\na=rtpmap:0 PCMU\n",
        "v=0\nm=audio 4000 RTP/AVP 0\na=ptime:abc\n",
        "v=0\nm=audio 4000 RTP/AVP 0\na=fmtp:zz 0-16\n",
        "v=0\nthis line has no equals sign\n",
    ];
    for case in cases {
        let err = parse(case).expect_err(case);
        assert!(
            matches!(err, MediaError::SdpSyntax { line: 2.., .. }),
            "{case}: {err}"
        );
    }
    let huge = "a=x\n".repeat(SDP_BYTES_MAX);
    assert!(matches!(parse(&huge), Err(MediaError::SdpTooLarge { .. })));
}

#[test]
fn arbitrary_bytes_never_panic() {
    // A cheap stand-in for the fuzz target: every prefix and a byte-mutated copy of a real offer.
    for end in 0..LINPHONE_OFFER.len() {
        if let Some(prefix) = LINPHONE_OFFER.get(..end) {
            let _ = parse(prefix).map(|s| remote_audio(&s));
        }
    }
    let mut bytes = LINPHONE_OFFER.as_bytes().to_vec();
    for i in 0..bytes.len() {
        let saved = bytes[i];
        for replacement in [b'=', b' ', b'/', b':', b'\n', b'9'] {
            bytes[i] = replacement;
            if let Ok(text) = std::str::from_utf8(&bytes) {
                if let Ok(sdp) = parse(text) {
                    let _ = remote_audio(&sdp);
                    let _ = answer(&sdp, local(), &Codec::ALL);
                }
            }
        }
        bytes[i] = saved;
    }
}

#[test]
fn offer_lists_the_given_codecs() {
    let text = offer(local(), &[Codec::Pcma, Codec::Pcmu], 7);
    assert!(
        text.starts_with("v=0\r\no=carillon 7 1 IN IP4 203.0.113.5\r\n"),
        "{text}"
    );
    assert!(text.contains("m=audio 20000 RTP/AVP 8 0\r\n"), "{text}");
    assert!(text.contains("a=rtpmap:0 PCMU/8000\r\n"), "{text}");
}
