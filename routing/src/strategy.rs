//! Agent selection: which ready agent gets a queue's head-of-line call.
//!
//! Issue 2 needs one rule, longest idle. Issue 4's strategies (round robin, fewest calls,
//! skill levels...) belong here, chosen per queue, each reading the same roster.

use crate::agent::Roster;

/// The longest-idle ready agent holding `skill` (ties broken by agent id, which the
/// roster's index order already does).
pub(crate) fn longest_idle<'r>(roster: &'r Roster, skill: &str) -> Option<&'r str> {
    roster
        .ready_by_idle()
        .find(|(_, agent)| agent.skills.contains(skill))
        .map(|(id, _)| id)
}
