//! The store role's flags for users' feedback: the live quality gauges' refresh and bounds,
//! and how long feedback is kept (`docs/quality.md`).

use std::time::Duration;

use clap::Args;

#[derive(Debug, Clone, Args)]
pub struct FeedbackArgs {
    /// Store and all roles: seconds between two reads of the live quality from the
    /// database into the `sightline_quality_*` gauges (in the background, never per request
    /// or scrape); 0 = no gauges.
    #[arg(long, env = "SIGHTLINE_QUALITY_REFRESH_SECS", default_value_t = 30)]
    pub quality_refresh_secs: u64,

    /// Store and all roles: classes with their own `sightline_quality_class_*` series per
    /// model digest (those with the most answers); the rest are pooled as `class="other"`.
    #[arg(long, env = "SIGHTLINE_QUALITY_TOP_CLASSES", default_value_t = 10,
          value_parser = clap::value_parser!(u16).range(1..=100))]
    pub quality_top_classes: u16,

    /// Store and all roles: how long users' feedback (current answers and history) is kept,
    /// `<n>d`, `<n>h`, `<n>m` or `<n>s`; older answers are deleted in batches. `0` keeps it
    /// forever.
    #[arg(long, env = "SIGHTLINE_FEEDBACK_RETENTION", default_value = "90d",
          value_parser = parse_retention)]
    pub feedback_retention: Retention,

    /// Store and all roles: seconds between two purges of feedback older than
    /// --feedback-retention (one runs at start).
    #[arg(long, env = "SIGHTLINE_FEEDBACK_PURGE_INTERVAL_SECS", default_value_t = 3600,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub feedback_purge_interval_secs: u64,
}

/// How long feedback is kept: `None` = forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention(pub Option<Duration>);

/// `0`, or a whole number with the unit `d`, `h`, `m` or `s` (at most 100 years).
pub fn parse_retention(text: &str) -> Result<Retention, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Retention(None));
    }
    let bad = || {
        format!("{text:?} is not a retention: 0 (forever) or a number with d, h, m or s (e.g. 90d)")
    };
    let unit = text.chars().last().ok_or_else(bad)?;
    let seconds: u64 = match unit {
        'd' => 86_400,
        'h' => 3_600,
        'm' => 60,
        's' => 1,
        _ => return Err(bad()),
    };
    let n: u64 = text[..text.len() - 1].parse().map_err(|_| bad())?;
    if n == 0 {
        return Ok(Retention(None));
    }
    let total = n
        .checked_mul(seconds)
        .filter(|s| *s <= 100 * 365 * 86_400)
        .ok_or_else(|| {
            format!("{text:?} is longer than 100 years: use 0 to keep feedback forever")
        })?;
    Ok(Retention(Some(Duration::from_secs(total))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retentions_parse_and_bad_ones_say_why() {
        let days = |n: u64| Retention(Some(Duration::from_secs(n * 86_400)));
        assert_eq!(parse_retention("90d"), Ok(days(90)));
        assert_eq!(
            parse_retention("36h"),
            Ok(Retention(Some(Duration::from_secs(36 * 3600))))
        );
        assert_eq!(
            parse_retention("2s"),
            Ok(Retention(Some(Duration::from_secs(2))))
        );
        assert_eq!(parse_retention("0"), Ok(Retention(None)));
        assert_eq!(parse_retention("0d"), Ok(Retention(None)));
        for bad in [
            "",
            "d",
            "90",
            "-1d",
            "1.5d",
            "90 days",
            "9w",
            "99999999999999999d",
            "36501d",
        ] {
            assert!(parse_retention(bad).is_err(), "{bad:?}");
        }
    }
}
