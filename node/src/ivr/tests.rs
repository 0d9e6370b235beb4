//! The flow runner driven by hand: config text in, events and fake time in, actions out.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::*;
use crate::config::Config;

const BASE: &str = r#"
[node]
id = "n1"
data_dir = "var"
[sip]
listen = "127.0.0.1:5060"
[rtp]
ip = "127.0.0.1"
port_min = 20000
port_max = 20100
[http]
listen = "127.0.0.1:8080"
[media]
hold_music = "hold.wav"
[[queues]]
name = "support"
skill = "support"
[[queues]]
name = "outage"
skill = "support"
[[queues]]
name = "closed"
skill = "support"
[queues.schedule]
hours = []
holidays = []
[[numbers]]
number = "100"
flow = "utility"
"#;

const UTILITY: &str = r#"
[[flows]]
name = "utility"
start = "menu"
[[flows.steps]]
id = "menu"
kind = "menu"
prompt = "p/menu.wav"
keys = { "1" = "outage", "2" = "account", "3" = "agent", "0" = "menu" }
timeout_s = 4
retries = 1
on_invalid = "bye"
on_timeout = "agent"
[[flows.steps]]
id = "outage"
kind = "queue"
queue = "outage"
priority = 9
[[flows.steps]]
id = "agent"
kind = "schedule"
queue = "support"
open = "to_support"
closed = "mailbox"
[[flows.steps]]
id = "to_support"
kind = "queue"
queue = "support"
[[flows.steps]]
id = "mailbox"
kind = "voicemail"
mailbox = "support"
[[flows.steps]]
id = "account"
kind = "collect"
prompt = "p/account.wav"
min_digits = 4
max_digits = 8
var = "account"
next = "lookup"
timeout_s = 3
retries = 0
on_timeout = "bye"
[[flows.steps]]
id = "lookup"
kind = "lookup"
url = "http://127.0.0.1:9/balance"
timeout_ms = 500
on_ok = "owes"
on_error = "agent"
[[flows.steps]]
id = "owes"
kind = "branch"
var = "status"
equals = { "overdue" = "outage" }
default = "bye"
[[flows.steps]]
id = "bye"
kind = "hangup"
prompt = "p/bye.wav"
"#;

fn load(extra: &str) -> Result<Config, String> {
    Config::from_toml(&format!("{BASE}{extra}"), "t.toml", PathBuf::from("/etc/c"))
        .map_err(|e| e.to_string())
}

fn utility() -> Arc<Flow> {
    let c = load(UTILITY).expect("the utility flow is valid");
    Arc::new(config::flow(&c, "utility").expect("flow"))
}

fn start() -> (FlowRun, Action) {
    let info = CallInfo {
        call: "c1".into(),
        caller: "5551000".into(),
        dialled: "100".into(),
    };
    FlowRun::start(utility(), info, BTreeMap::new(), 1_000)
}

fn play(p: &str) -> Action {
    Action::Play(PathBuf::from("/etc/c").join(p))
}

#[test]
fn key_one_queues_at_high_priority() {
    let (mut run, first) = start();
    assert_eq!(first, play("p/menu.wav"));
    // A key pressed during the prompt counts (barge-in).
    let a = run.on_event(Event::DigitReceived('1'), 1_500);
    assert_eq!(
        a,
        Action::Finish(Outcome::Queue {
            queue: "outage".into(),
            priority: Some(9),
            skills: None
        })
    );
    assert_eq!(run.on_event(Event::PromptDone, 1_600), Action::Wait);
}

#[test]
fn zero_repeats_the_menu_and_the_timer_starts_after_the_prompt() {
    let (mut run, _) = start();
    assert_eq!(run.deadline_ms(), None, "no timer while the prompt plays");
    assert_eq!(run.on_event(Event::PromptDone, 3_000), Action::Wait);
    assert_eq!(run.deadline_ms(), Some(7_000));
    assert_eq!(
        run.on_event(Event::DigitReceived('0'), 4_000),
        play("p/menu.wav")
    );
    assert_eq!(run.deadline_ms(), None);
}

#[test]
fn invalid_key_replays_then_takes_the_invalid_exit() {
    let (mut run, _) = start();
    run.on_event(Event::PromptDone, 2_000);
    assert_eq!(
        run.on_event(Event::DigitReceived('9'), 2_500),
        play("p/menu.wav"),
        "one retry"
    );
    run.on_event(Event::PromptDone, 4_000);
    assert_eq!(
        run.on_event(Event::DigitReceived('9'), 4_500),
        Action::Finish(Outcome::HangUp {
            prompt: Some(PathBuf::from("/etc/c/p/bye.wav"))
        })
    );
}

#[test]
fn timeouts_retry_then_take_the_timeout_exit_through_the_schedule() {
    let (mut run, _) = start();
    run.on_event(Event::PromptDone, 2_000);
    assert_eq!(run.on_event(Event::Timeout, 6_000), play("p/menu.wav"));
    run.on_event(Event::PromptDone, 8_000);
    assert_eq!(run.deadline_ms(), Some(12_000));
    // support has no schedule: always open.
    assert_eq!(
        run.on_event(Event::Timeout, 12_000),
        Action::Finish(Outcome::Queue {
            queue: "support".into(),
            priority: None,
            skills: None
        })
    );
}

#[test]
fn collect_then_lookup_merges_vars_and_branches() {
    let (mut run, _) = start();
    assert_eq!(
        run.on_event(Event::DigitReceived('2'), 1_100),
        play("p/account.wav")
    );
    for (i, d) in "1234".chars().enumerate() {
        let a = run.on_event(Event::DigitReceived(d), 1_200 + i as u64);
        assert_eq!(a, Action::Silence, "typing stops the prompt");
    }
    let a = run.on_event(Event::DigitReceived('#'), 1_300);
    let Action::Lookup {
        url,
        timeout_ms,
        body,
    } = a
    else {
        panic!("expected a look-up, got {a:?}");
    };
    assert_eq!(url, "http://127.0.0.1:9/balance");
    assert_eq!(timeout_ms, 500);
    assert_eq!(body["vars"]["account"], "1234");
    assert_eq!(body["caller"], "5551000");
    assert_eq!(body["dialled"], "100");
    assert_eq!(body["call"], "c1");
    let reply =
        serde_json::json!({"vars": {"status": "overdue", "balance": 42}, "prompt": "balance"});
    assert_eq!(
        run.on_event(Event::LookupDone(Ok(reply)), 1_400),
        Action::Play(PathBuf::from("/etc/c/prompts/balance.wav"))
    );
    assert_eq!(run.vars()["balance"], "42");
    assert_eq!(
        run.on_event(Event::PromptDone, 3_000),
        Action::Finish(Outcome::Queue {
            queue: "outage".into(),
            priority: Some(9),
            skills: None
        }),
        "status overdue branches to the outage queue"
    );
}

#[test]
fn collect_ends_at_max_digits_or_on_timeout_and_short_entry_retries() {
    let (mut run, _) = start();
    run.on_event(Event::DigitReceived('2'), 0);
    for d in "1234567".chars() {
        run.on_event(Event::DigitReceived(d), 10);
    }
    assert!(matches!(
        run.on_event(Event::DigitReceived('8'), 20),
        Action::Lookup { .. }
    ));
    assert_eq!(run.vars()["account"], "12345678");

    let (mut run, _) = start();
    run.on_event(Event::DigitReceived('2'), 0);
    run.on_event(Event::DigitReceived('1'), 10);
    assert_eq!(run.deadline_ms(), Some(3_010), "inter-digit timer");
    // One digit is under min_digits, and retries = 0: the timeout exit.
    assert_eq!(
        run.on_event(Event::Timeout, 3_010),
        Action::Finish(Outcome::HangUp {
            prompt: Some(PathBuf::from("/etc/c/p/bye.wav"))
        })
    );

    let (mut run, _) = start();
    run.on_event(Event::DigitReceived('2'), 0);
    for d in "12345".chars() {
        run.on_event(Event::DigitReceived(d), 10);
    }
    assert!(matches!(
        run.on_event(Event::Timeout, 3_010),
        Action::Lookup { .. }
    ));
    assert_eq!(run.vars()["account"], "12345");
}

#[test]
fn lookup_failure_takes_on_error() {
    let (mut run, _) = start();
    run.on_event(Event::DigitReceived('2'), 0);
    for d in "1234#".chars() {
        run.on_event(Event::DigitReceived(d), 10);
    }
    let a = run.on_event(Event::LookupDone(Err("timed out".into())), 600);
    assert_eq!(
        a,
        Action::Finish(Outcome::Queue {
            queue: "support".into(),
            priority: None,
            skills: None
        })
    );
    assert_eq!(run.vars()["lookup_error"], "timed out");
    // A reply that names a path instead of a prompt is refused.
    let (mut run, _) = start();
    run.on_event(Event::DigitReceived('2'), 0);
    for d in "1234#".chars() {
        run.on_event(Event::DigitReceived(d), 10);
    }
    let evil = serde_json::json!({"prompt": "../../etc/passwd"});
    assert!(matches!(
        run.on_event(Event::LookupDone(Ok(evil)), 600),
        Action::Finish(Outcome::Queue { .. })
    ));
}

#[test]
fn closed_schedule_goes_to_voicemail() {
    let text = UTILITY.replace(
        "id = \"agent\"\nkind = \"schedule\"\nqueue = \"support\"",
        "id = \"agent\"\nkind = \"schedule\"\nqueue = \"closed\"",
    );
    let c = load(&text).expect("valid");
    let flow = Arc::new(config::flow(&c, "utility").expect("flow"));
    let (mut run, _) = FlowRun::start(flow, CallInfo::default(), BTreeMap::new(), 0);
    assert_eq!(
        run.on_event(Event::DigitReceived('3'), 1_700_000_000_000),
        Action::Finish(Outcome::Voicemail {
            mailbox: "support".into()
        })
    );
}

#[test]
fn a_caller_looping_through_the_menu_is_stopped() {
    let (mut run, _) = start();
    let mut last = Action::Wait;
    for i in 0..(STEPS_MAX + 5) {
        last = run.on_event(Event::DigitReceived('0'), u64::from(i));
        if matches!(last, Action::Finish(_)) {
            break;
        }
    }
    assert!(
        matches!(&last, Action::Finish(Outcome::Failed(why)) if why.contains("more than")),
        "{last:?}"
    );
}

#[test]
fn transfer_dials_the_number_through_its_gateway_else_the_callback_gateway() {
    let text = |gateway: &str| {
        format!(
            "[[flows]]\nname = \"utility\"\nstart = \"out\"\n[[flows.steps]]\nid = \"out\"\n\
             kind = \"transfer\"\nnumber = \"5550177\"\n{gateway}"
        )
    };
    let outcome = |text: &str| {
        let c = load(text).expect(text);
        let flow = Arc::new(config::flow(&c, "utility").expect("flow"));
        let info = CallInfo {
            call: "c1".into(),
            caller: "5551000".into(),
            dialled: "100".into(),
        };
        FlowRun::start(flow, info, BTreeMap::new(), 1_000).1
    };
    let own = outcome(&text("gateway = \"127.0.0.1:5099\"\n"));
    assert_eq!(
        own,
        Action::Finish(Outcome::Transfer {
            number: "5550177".into(),
            gateway: "127.0.0.1:5099".parse().expect("an address"),
        })
    );
    let callback = format!("{}[callback]\ngateway = \"127.0.0.1:5098\"\n", text(""));
    assert_eq!(
        outcome(&callback),
        Action::Finish(Outcome::Transfer {
            number: "5550177".into(),
            gateway: "127.0.0.1:5098".parse().expect("an address"),
        })
    );
    let e = load(&text("")).expect_err("no gateway anywhere");
    assert!(e.contains("flows[0].steps[0].gateway"), "{e}");
}

#[test]
fn validation_names_the_key() {
    let err = |text: &str| load(text).expect_err(text);
    let bad_key = UTILITY.replace("\"3\" = \"agent\"", "\"9\" = \"nowhere\"");
    let e = err(&bad_key);
    assert!(e.contains("flows[0].steps[0].keys.9"), "{e}");
    assert!(e.contains("no step with id `nowhere`"), "{e}");
    let e = err(&UTILITY.replace("\"3\" = \"agent\"", "\"33\" = \"agent\""));
    assert!(e.contains("flows[0].steps[0].keys.33"), "{e}");
    let e = err(&UTILITY.replace("kind = \"voicemail\"", "kind = \"fax\""));
    assert!(
        e.contains("flows[0].steps[4].kind") && e.contains("not one of"),
        "{e}"
    );
    let e = err(&UTILITY.replace(
        "mailbox = \"support\"",
        "mailbox = \"support\"\nnext = \"menu\"",
    ));
    assert!(
        e.contains("flows[0].steps[4].next") && e.contains("does not take"),
        "{e}"
    );
    let e = err(&UTILITY.replace("start = \"menu\"", "start = \"nope\""));
    assert!(e.contains("flows[0].start"), "{e}");
    let e = err(&UTILITY.replace("queue = \"outage\"\npriority", "queue = \"nope\"\npriority"));
    assert!(e.contains("flows[0].steps[1].queue"), "{e}");
    let e = err(&UTILITY.replace("url = \"http://", "url = \"https://"));
    assert!(e.contains("flows[0].steps[6].url"), "{e}");
    let e = err(&format!(
        "{UTILITY}[[numbers]]\nnumber = \"200\"\nflow = \"missing\"\n"
    ));
    assert!(e.contains("numbers[1].flow"), "{e}");
    // A loop of plays never waits for the caller: refused.
    let loop_text = r#"
[[flows]]
name = "utility"
start = "a"
[[flows.steps]]
id = "a"
kind = "play"
prompt = "a.wav"
next = "b"
[[flows.steps]]
id = "b"
kind = "branch"
var = "x"
default = "a"
"#;
    let e = err(loop_text);
    assert!(e.contains("loop"), "{e}");
    // The same loop through a menu is fine.
    let ok = loop_text.replace(
        "kind = \"branch\"\nvar = \"x\"\ndefault = \"a\"",
        "kind = \"menu\"\nprompt = \"m.wav\"\nkeys = { \"1\" = \"a\" }",
    );
    load(&ok).expect("a loop through a menu");
}

#[test]
fn the_example_utility_flow_loads() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/ivr-utility.toml");
    let c = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let flow = config::flow(&c, "utility").expect("the utility flow");
    assert_eq!(flow.steps[flow.start].id, "welcome");
    assert_eq!(c.numbers[0].flow.as_deref(), Some("utility"));
}
