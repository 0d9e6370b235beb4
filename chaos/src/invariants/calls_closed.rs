//! Every call ends: once every caller has hung up and the cluster has healed, the
//! replicated routing state holds no call (none waiting, offering or connected). A call
//! left there keeps its agent busy for good.

use super::Verdict;
use crate::history::History;

pub fn check(h: &History) -> Verdict {
    match &h.open_calls_after {
        None => Verdict::new(
            "calls_closed",
            false,
            "the routing state was not read after healing".into(),
        ),
        Some((0, _)) => Verdict::new(
            "calls_closed",
            true,
            "no call left in the routing state after the callers hung up".into(),
        ),
        Some((n, queues)) => Verdict::new(
            "calls_closed",
            false,
            format!(
                "{n} calls still open in the routing state after every caller hung up: {queues}"
            ),
        ),
    }
}
