//! Opening hours per queue: weekly hours and holidays in the queue's IANA time zone.
//!
//! Time zones come from `chrono-tz` (the IANA database compiled in), so daylight-saving
//! changes are right without hand-written rules; the state machine stays deterministic
//! because the zone rules are data inside the binary, the same on every replica built from
//! the same lock file.

use std::str::FromStr;

use chrono::{Datelike, NaiveDate, TimeZone, Timelike};
use serde::{Deserialize, Serialize};

use crate::canon::{Canon, Fnv};
use crate::Millis;

/// Open from `open_min` to `close_min` (minutes after local midnight, close exclusive) on
/// `weekday` (1 = Monday ... 7 = Sunday).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenHours {
    pub weekday: u8,
    pub open_min: u16,
    pub close_min: u16,
}

/// A queue's opening hours.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    /// IANA name, e.g. `Europe/Paris`.
    pub time_zone: String,
    pub hours: Vec<OpenHours>,
    /// Closed all day, as local dates `YYYY-MM-DD`.
    pub holidays: Vec<String>,
}

/// Bounds on a schedule's size.
pub const HOURS_MAX: usize = 64;
pub const HOLIDAYS_MAX: usize = 366;

impl Schedule {
    pub(crate) fn problem(&self) -> Option<&'static str> {
        if chrono_tz::Tz::from_str(&self.time_zone).is_err() {
            Some("schedule time_zone must be an IANA zone name such as Europe/Paris")
        } else if self.hours.len() > HOURS_MAX || self.holidays.len() > HOLIDAYS_MAX {
            Some("schedule has too many entries (64 hours, 366 holidays at most)")
        } else if self.hours.iter().any(|h| {
            !(1..=7).contains(&h.weekday) || h.open_min >= h.close_min || h.close_min > 1_440
        }) {
            Some("schedule hours need weekday 1-7 and open_min < close_min <= 1440")
        } else if self
            .holidays
            .iter()
            .any(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").is_err())
        {
            Some("schedule holidays must be dates written YYYY-MM-DD")
        } else {
            None
        }
    }

    /// Whether the queue is open at `now` (Unix ms). A schedule that fails to evaluate
    /// (it was validated, so only an out-of-range time) counts as open.
    pub fn is_open(&self, now: Millis) -> bool {
        let Ok(tz) = chrono_tz::Tz::from_str(&self.time_zone) else {
            return true;
        };
        let Ok(ms) = i64::try_from(now) else {
            return true;
        };
        let chrono::LocalResult::Single(local) = tz.timestamp_millis_opt(ms) else {
            return true;
        };
        let date = local.date_naive().format("%Y-%m-%d").to_string();
        if self.holidays.contains(&date) {
            return false;
        }
        let weekday = u8::try_from(local.weekday().number_from_monday()).unwrap_or(0);
        let minute = u16::try_from(local.hour() * 60 + local.minute()).unwrap_or(0);
        self.hours
            .iter()
            .any(|h| h.weekday == weekday && h.open_min <= minute && minute < h.close_min)
    }
}

impl Canon for OpenHours {
    fn canon(&self, h: &mut Fnv) {
        let OpenHours {
            weekday,
            open_min,
            close_min,
        } = self;
        weekday.canon(h);
        u64::from(*open_min).canon(h);
        u64::from(*close_min).canon(h);
    }
}

impl Canon for Schedule {
    fn canon(&self, h: &mut Fnv) {
        let Schedule {
            time_zone,
            hours,
            holidays,
        } = self;
        time_zone.canon(h);
        hours.canon(h);
        holidays.canon(h);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paris_weekdays() -> Schedule {
        Schedule {
            time_zone: "Europe/Paris".into(),
            hours: (1..=5)
                .map(|weekday| OpenHours {
                    weekday,
                    open_min: 9 * 60,
                    close_min: 17 * 60,
                })
                .collect(),
            holidays: vec!["2025-07-14".into()],
        }
    }

    /// Unix ms of a UTC date-time.
    fn utc(y: i32, m: u32, d: u32, hh: u32, mm: u32) -> Millis {
        let t = chrono::Utc
            .with_ymd_and_hms(y, m, d, hh, mm, 0)
            .single()
            .expect("valid date");
        u64::try_from(t.timestamp_millis()).expect("after 1970")
    }

    #[test]
    fn opening_hours_follow_local_time_and_dst() {
        let s = paris_weekdays();
        assert_eq!(s.problem(), None);
        // Winter (UTC+1): Monday 2025-01-06 08:00 UTC = 09:00 Paris.
        assert!(s.is_open(utc(2025, 1, 6, 8, 0)));
        assert!(!s.is_open(utc(2025, 1, 6, 7, 59)));
        // Summer (UTC+2): Monday 2025-06-02 07:00 UTC = 09:00 Paris; 15:00 UTC = 17:00.
        assert!(s.is_open(utc(2025, 6, 2, 7, 0)));
        assert!(!s.is_open(utc(2025, 6, 2, 15, 0)));
        // Saturday, and a holiday (Monday 14 July 2025).
        assert!(!s.is_open(utc(2025, 6, 7, 10, 0)));
        assert!(!s.is_open(utc(2025, 7, 14, 10, 0)));
    }

    #[test]
    fn bad_schedules_are_named() {
        let mut s = paris_weekdays();
        s.time_zone = "Mars/Olympus".into();
        assert!(s.problem().is_some());
        let mut s = paris_weekdays();
        s.holidays = vec!["14/07/2025".into()];
        assert!(s.problem().is_some());
        let mut s = paris_weekdays();
        s.hours[0].close_min = 2_000;
        assert!(s.problem().is_some());
    }
}
