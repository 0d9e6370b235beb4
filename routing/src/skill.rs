//! Skills with levels: agents hold `name:level` (1-10), queues and calls need
//! `name:min_level`. A skill written without a level is level 1 for an agent ("has the
//! skill, proficiency not stated": such agents come last when a queue asks for levels) and
//! "any level" for a need.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::canon::{Canon, Fnv};

pub const LEVEL_MAX: u8 = 10;

/// A required skill at a minimum level.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Need {
    pub(crate) skill: String,
    pub(crate) level: u8,
}

/// Parses `name` or `name:level` (level 1-10).
pub(crate) fn parse(text: &str) -> Option<Need> {
    let (name, level) = match text.rsplit_once(':') {
        Some((name, level)) => (name, level.parse::<u8>().ok()?),
        None => (text, 1),
    };
    if name.is_empty() || level == 0 || level > LEVEL_MAX {
        return None;
    }
    Some(Need {
        skill: name.to_owned(),
        level,
    })
}

/// An agent's skills as name -> level; None if any entry is malformed.
pub(crate) fn parse_all(skills: &[String]) -> Option<BTreeMap<String, u8>> {
    let mut out = BTreeMap::new();
    for text in skills {
        let need = parse(text)?;
        out.insert(need.skill, need.level);
    }
    Some(out)
}

impl Canon for Need {
    fn canon(&self, h: &mut Fnv) {
        let Need { skill, level } = self;
        skill.canon(h);
        level.canon(h);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_levels() {
        let need = parse("support:8").expect("valid");
        assert_eq!((need.skill.as_str(), need.level), ("support", 8));
        assert_eq!(parse("support").map(|n| n.level), Some(1));
        assert!(parse("support:0").is_none());
        assert!(parse("support:11").is_none());
        assert!(parse(":5").is_none());
        assert!(parse("support:x").is_none());
        let all = parse_all(&["a:3".into(), "b".into()]).expect("valid");
        assert_eq!(all.get("a"), Some(&3));
    }
}
