//! Agent selection: which ready agent(s) get a call.
//!
//! Eligibility first: ready, every needed skill at the needed level (capped by the call's
//! escalation step), and the call's preferred agent only, while it waits for one (VIP,
//! last-agent affinity). Then site: agents at the call's site are preferred; when none is
//! free there (and the call may go to any site), the site with the lowest occupancy (busy
//! / logged in, ties by site name) is chosen. The queue's strategy picks within that site.

use std::collections::BTreeMap;

use crate::agent::{Agent, AgentState, Roster};
use crate::queue::Strategy;
use crate::skill::Need;

/// What a call needs from an agent, and how its queue chooses.
pub(crate) struct Want<'a> {
    pub(crate) needs: &'a [Need],
    /// Escalation: a need's level is lowered to this cap.
    pub(crate) cap: u8,
    pub(crate) site: &'a str,
    /// The call may go to another site's agent (its local wait is over).
    pub(crate) any_site: bool,
    /// Only this agent will do (the call waits for a preferred agent).
    pub(crate) only: Option<&'a str>,
    pub(crate) strategy: Strategy,
    pub(crate) agent_order: &'a [String],
    pub(crate) last_offered: Option<&'a str>,
    /// The call's deterministic draw for `Strategy::Random`.
    pub(crate) draw: u64,
}

impl Want<'_> {
    pub(crate) fn fits(&self, agent: &Agent) -> bool {
        self.needs
            .iter()
            .all(|need| agent.level(&need.skill) >= need.level.min(self.cap).max(1))
    }
}

/// The agents to offer the call to: one, or several for ring-all; empty if none.
pub(crate) fn select<'r>(roster: &'r Roster, want: &Want<'_>) -> Vec<&'r str> {
    if let Some(only) = want.only {
        return match roster.get_entry(only) {
            Some((id, agent)) if agent.state == AgentState::Ready && want.fits(agent) => {
                vec![id]
            }
            _ => Vec::new(),
        };
    }
    let eligible = roster.ready_by_idle().filter(|(_, agent)| want.fits(agent));
    let mut local: Vec<(&'r str, &'r Agent)> = Vec::new();
    let mut other_sites = false;
    for (id, agent) in eligible {
        if agent.site == want.site {
            if want.strategy == Strategy::LongestIdle {
                // The walk is in idle order: the first local one is the answer.
                return vec![id];
            }
            local.push((id, agent));
        } else {
            other_sites = true;
        }
    }
    if local.is_empty() {
        if !want.any_site || !other_sites {
            return Vec::new();
        }
        let Some(site) = least_occupied_site(roster, want) else {
            return Vec::new();
        };
        local = roster
            .ready_by_idle()
            .filter(|(_, agent)| agent.site == site && want.fits(agent))
            .collect();
    }
    pick(local, want)
}

/// Applies the queue's strategy to candidates given in idle order (longest idle first).
fn pick<'r>(mut candidates: Vec<(&'r str, &'r Agent)>, want: &Want<'_>) -> Vec<&'r str> {
    let chosen = match want.strategy {
        Strategy::LongestIdle => candidates.first().copied(),
        Strategy::RingAll => return candidates.into_iter().map(|(id, _)| id).collect(),
        Strategy::FewestCalls => candidates
            .iter()
            .copied()
            .min_by_key(|(_, a)| a.calls_answered),
        Strategy::LeastTalkTime => candidates.iter().copied().min_by_key(|(_, a)| a.talk_ms),
        Strategy::TopDown => candidates.iter().copied().min_by_key(|(id, _)| {
            let place = want.agent_order.iter().position(|a| a == id);
            (place.unwrap_or(usize::MAX), *id)
        }),
        Strategy::RoundRobin => {
            candidates.sort_by_key(|(id, _)| *id);
            let after = want.last_offered.unwrap_or("");
            candidates
                .iter()
                .copied()
                .find(|(id, _)| *id > after)
                .or_else(|| candidates.first().copied())
        }
        Strategy::Random => {
            candidates.sort_by_key(|(id, _)| *id);
            let n = candidates.len() as u64;
            (n > 0)
                .then(|| usize::try_from(want.draw % n).unwrap_or(0))
                .and_then(|i| candidates.get(i).copied())
        }
    };
    chosen.map(|(id, _)| vec![id]).unwrap_or_default()
}

/// Among sites with an eligible ready agent, the one with the lowest share of busy agents.
fn least_occupied_site<'r>(roster: &'r Roster, want: &Want<'_>) -> Option<&'r str> {
    // (busy, logged in, has an eligible ready agent) per site.
    let mut load: BTreeMap<&str, (u64, u64, bool)> = BTreeMap::new();
    for (_, agent) in roster.iter() {
        if agent.state == AgentState::LoggedOut {
            continue;
        }
        let entry = load.entry(agent.site.as_str()).or_default();
        entry.1 += 1;
        if agent.busy() {
            entry.0 += 1;
        }
        if agent.state == AgentState::Ready && want.fits(agent) {
            entry.2 = true;
        }
    }
    let mut best: Option<(&str, u64, u64)> = None;
    for (site, (busy, total, eligible)) in load {
        if !eligible {
            continue;
        }
        // busy/total < best_busy/best_total, without division; BTreeMap order breaks ties.
        let better = match best {
            None => true,
            Some((_, b_busy, b_total)) => busy * b_total < b_busy * total,
        };
        if better {
            best = Some((site, busy, total));
        }
    }
    best.map(|(site, _, _)| site)
}
