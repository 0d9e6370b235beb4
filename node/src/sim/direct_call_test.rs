//! A Caller calling an AgentPhone directly, no node in between: proves the two
//! phones speak SIP to each other and that RTP flows both ways.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::caller::CallPlan;
use super::{AgentPhone, AgentPhoneConfig, Caller, CallerConfig, HangupBy};

fn quick_agent(seed: u64, talk_ms: (u64, u64)) -> AgentPhoneConfig {
    let mut cfg = AgentPhoneConfig::new("1001", "pw1001");
    cfg.ring_delay_ms = (50, 150);
    cfg.talk_time_ms = talk_ms;
    cfg.seed = seed;
    cfg
}

#[tokio::test]
async fn caller_hangs_up_and_rtp_flows_both_ways() {
    let cancel = CancellationToken::new();
    let phone = AgentPhone::start(quick_agent(1, (60_000, 60_000)), &cancel)
        .await
        .expect("agent phone starts");
    let caller = Caller::start(CallerConfig::new(phone.sip_addr()), &cancel)
        .await
        .expect("caller starts");
    let plan = CallPlan {
        number: "1001".to_string(),
        from_user: None,
        hold_for_ms: 1_500,
    };
    let outcome = tokio::time::timeout(Duration::from_secs(10), caller.call(&plan))
        .await
        .expect("call finishes in time")
        .expect("call succeeds");
    assert_eq!(outcome.final_status, Some(200), "{outcome:?}");
    assert!(outcome.connected);
    assert_eq!(outcome.hangup_by, HangupBy::Caller);
    // ~1.3 s of talk at 50 packets/s; leave room for a slow shared machine.
    assert!(outcome.rtp_sent >= 20, "{outcome:?}");
    assert!(outcome.rtp_received >= 20, "{outcome:?}");

    // The phone sees the BYE shortly after.
    let mut stats = phone.stats();
    for _ in 0..100 {
        stats = phone.stats();
        if stats.hangups_by_remote == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stats.calls_offered, 1, "{stats:?}");
    assert_eq!(stats.calls_answered, 1, "{stats:?}");
    assert_eq!(stats.hangups_by_remote, 1, "{stats:?}");
    assert_eq!(stats.calls_active, 0, "{stats:?}");
    assert!(stats.rtp_received >= 20, "{stats:?}");
    assert!(stats.rtp_sent >= 20, "{stats:?}");
    let cs = caller.stats();
    assert_eq!(
        (cs.calls_placed, cs.calls_connected, cs.hangups_by_caller),
        (1, 1, 1)
    );
    phone.stop().await;
    cancel.cancel();
}

#[tokio::test]
async fn agent_hangs_up_first() {
    let cancel = CancellationToken::new();
    let phone = AgentPhone::start(quick_agent(2, (600, 700)), &cancel)
        .await
        .expect("agent phone starts");
    let caller = Caller::start(CallerConfig::new(phone.sip_addr()), &cancel)
        .await
        .expect("caller starts");
    let plan = CallPlan {
        number: "1001".to_string(),
        from_user: Some("5551234".to_string()),
        hold_for_ms: 8_000,
    };
    let outcome = tokio::time::timeout(Duration::from_secs(10), caller.call(&plan))
        .await
        .expect("call finishes in time")
        .expect("call succeeds");
    assert!(outcome.connected, "{outcome:?}");
    assert_eq!(outcome.hangup_by, HangupBy::Remote, "{outcome:?}");
    assert!(outcome.connected_ms < 5_000, "{outcome:?}");
    assert!(outcome.rtp_received >= 5, "{outcome:?}");
    assert_eq!(phone.stats().hangups_by_agent, 1);
    phone.stop().await;
}

#[tokio::test]
async fn caller_abandons_while_ringing() {
    let cancel = CancellationToken::new();
    let mut cfg = quick_agent(3, (60_000, 60_000));
    cfg.ring_delay_ms = (5_000, 5_000);
    let phone = AgentPhone::start(cfg, &cancel)
        .await
        .expect("agent phone starts");
    let caller = Caller::start(CallerConfig::new(phone.sip_addr()), &cancel)
        .await
        .expect("caller starts");
    let plan = CallPlan {
        number: "1001".to_string(),
        from_user: None,
        hold_for_ms: 500,
    };
    let outcome = tokio::time::timeout(Duration::from_secs(10), caller.call(&plan))
        .await
        .expect("call finishes in time")
        .expect("call returns an outcome");
    assert!(!outcome.connected, "{outcome:?}");
    assert_eq!(outcome.hangup_by, HangupBy::Caller);
    // The CANCEL reaches the phone, which never answers.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stats = phone.stats();
    assert_eq!(
        (stats.calls_offered, stats.calls_answered),
        (1, 0),
        "{stats:?}"
    );
    cancel.cancel();
}
