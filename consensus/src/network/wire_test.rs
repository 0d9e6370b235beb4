//! postcard carries every wire message (it cannot decode self-describing serde shapes, so
//! each openraft type we send is round-tripped here).

use std::collections::{BTreeMap, BTreeSet};

use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, VoteRequest, VoteResponse};
use openraft::type_config::alias::{LogIdOf, SnapshotMetaOf, StoredMembershipOf, VoteOf};
use openraft::vote::RaftLeaderIdExt;
use openraft::{EntryPayload, Membership};

use super::wire::{ForwardOutcome, PeerStatus, Request, Response};
use crate::types::{Applied, Member, TypeConfig};

fn round_trip_request(req: &Request) -> Request {
    let bytes = postcard::to_stdvec(req).expect("encode");
    postcard::from_bytes(&bytes).expect("decode")
}

fn round_trip_response(resp: &Response) -> Response {
    let bytes = postcard::to_stdvec(resp).expect("encode");
    postcard::from_bytes(&bytes).expect("decode")
}

type LeaderId = <TypeConfig as openraft::RaftTypeConfig>::LeaderId;
type Entry = <TypeConfig as openraft::RaftTypeConfig>::Entry;

fn log_id(term: u64, node: u64, index: u64) -> LogIdOf<TypeConfig> {
    openraft::LogId::new(LeaderId::new_committed(term, node), index)
}

fn membership() -> Membership<u64, Member> {
    let nodes: BTreeMap<u64, Member> = (1..=3)
        .map(|i| {
            (
                i,
                Member {
                    raft_addr: format!("127.0.0.1:{}", 7000 + i),
                    site: "hq".into(),
                    ..Member::default()
                },
            )
        })
        .collect();
    Membership::new(vec![BTreeSet::from([1, 2, 3])], nodes).expect("membership")
}

#[test]
fn raft_messages_survive_postcard() {
    let vote: VoteOf<TypeConfig> = openraft::Vote::new(3, 2);
    let req = Request::Vote(VoteRequest::new(vote, Some(log_id(2, 1, 10))));
    assert!(matches!(round_trip_request(&req), Request::Vote(r) if r.vote == vote));

    let entries = vec![
        Entry {
            log_id: log_id(3, 2, 11),
            payload: EntryPayload::Blank,
        },
        Entry {
            log_id: log_id(3, 2, 12),
            payload: EntryPayload::Membership(membership()),
        },
    ];
    let append = AppendEntriesRequest::<TypeConfig> {
        vote,
        prev_log_id: Some(log_id(2, 1, 10)),
        entries,
        leader_commit: Some(log_id(2, 1, 10)),
    };
    match round_trip_request(&Request::Append(append)) {
        Request::Append(r) => assert_eq!(r.entries.len(), 2),
        other => panic!("wrong request {other:?}"),
    }

    let meta = SnapshotMetaOf::<TypeConfig> {
        last_log_id: Some(log_id(3, 2, 12)),
        last_membership: StoredMembershipOf::<TypeConfig>::new(
            Some(log_id(3, 2, 12)),
            membership(),
        ),
    };
    let snap = Request::Snapshot {
        vote,
        meta,
        size_bytes: 5,
    };
    assert!(matches!(
        round_trip_request(&snap),
        Request::Snapshot { size_bytes: 5, .. }
    ));

    let resp = Response::Vote(VoteResponse::new(vote, Some(log_id(2, 1, 10)), true));
    assert!(matches!(round_trip_response(&resp), Response::Vote(v) if v.vote_granted));
    let resp = Response::Append(AppendEntriesResponse::Success);
    assert!(matches!(
        round_trip_response(&resp),
        Response::Append(AppendEntriesResponse::Success)
    ));
    let resp = Response::Forward(ForwardOutcome::NotLeader {
        leader_id: Some(1),
        leader: Some(Member::default()),
    });
    assert!(matches!(
        round_trip_response(&resp),
        Response::Forward(ForwardOutcome::NotLeader {
            leader_id: Some(1),
            ..
        })
    ));
    let resp = Response::Forward(ForwardOutcome::Applied(Applied::default()));
    assert!(matches!(
        round_trip_response(&resp),
        Response::Forward(ForwardOutcome::Applied(_))
    ));
    let status = PeerStatus {
        id: 1,
        state: "Leader".into(),
        term: 3,
        leader: Some(1),
        last_log_index: Some(12),
        last_applied: Some(12),
        voters: vec![1, 2, 3],
        members: vec![(1, Member::default())],
    };
    match round_trip_response(&Response::Status(status.clone())) {
        Response::Status(s) => assert_eq!(s, status),
        other => panic!("wrong response {other:?}"),
    }
}
