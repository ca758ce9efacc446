//! ISO-8601 durations as Knative's `delivery` fields use them
//! (`PT0.5S`, `PT1M30S`, `P1D`, `P1W`).
//!
//! Grammar: `P [nY] [nM] [nW] [nD] [T [nH] [nM] [nS]]`, each `n` a decimal
//! number that may have a fraction (`.` or `,`). At least one component is
//! required, and `T` must be followed by one. Calendar units have no fixed
//! length; like Knative (which converts with an approximate duration) a
//! year counts as 365 days and a month as 30. Negative durations are
//! refused: no delivery field means anything by them.

use std::time::Duration;

pub fn parse(s: &str) -> Result<Duration, String> {
    let bad = |why: &str| format!("invalid ISO-8601 duration {s:?}: {why}");
    let rest = s
        .strip_prefix('P')
        .or_else(|| s.strip_prefix('p'))
        .ok_or_else(|| bad("must start with P"))?;
    let mut secs = 0f64;
    let mut in_time = false;
    let mut any = false;
    let mut any_after_t = false;
    let mut num = String::new();
    // Units must appear in this order, each at most once.
    let date_units = ['Y', 'M', 'W', 'D'];
    let time_units = ['H', 'M', 'S'];
    let mut last_rank: i32 = -1;
    for c in rest.chars() {
        let c = c.to_ascii_uppercase();
        if c.is_ascii_digit() || c == '.' || c == ',' {
            num.push(if c == ',' { '.' } else { c });
            continue;
        }
        if c == 'T' {
            if in_time || !num.is_empty() {
                return Err(bad("misplaced T"));
            }
            in_time = true;
            last_rank = 3;
            continue;
        }
        let units: &[char] = if in_time { &time_units } else { &date_units };
        let Some(idx) = units.iter().position(|u| *u == c) else {
            return Err(bad(&format!("unknown unit {c:?}")));
        };
        let rank = if in_time { 4 + idx as i32 } else { idx as i32 };
        if rank <= last_rank {
            return Err(bad("units out of order or repeated"));
        }
        last_rank = rank;
        if num.is_empty() || num == "." {
            return Err(bad(&format!("no number before {c}")));
        }
        let n: f64 = num
            .parse()
            .map_err(|_| bad(&format!("bad number {num:?}")))?;
        num.clear();
        let unit_secs = match (in_time, c) {
            (false, 'Y') => 365.0 * 86400.0,
            (false, 'M') => 30.0 * 86400.0,
            (false, 'W') => 7.0 * 86400.0,
            (false, 'D') => 86400.0,
            (true, 'H') => 3600.0,
            (true, 'M') => 60.0,
            _ => 1.0,
        };
        secs += n * unit_secs;
        any = true;
        any_after_t |= in_time;
    }
    if !num.is_empty() {
        return Err(bad("number without a unit"));
    }
    if !any {
        return Err(bad("no components"));
    }
    if in_time && !any_after_t {
        return Err(bad("T without a time component"));
    }
    Duration::try_from_secs_f64(secs).map_err(|_| bad("out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_knative_manifests_use() {
        let ms = |m| Duration::from_millis(m);
        assert_eq!(parse("PT0.2S"), Ok(ms(200)));
        assert_eq!(parse("PT1S"), Ok(ms(1000)));
        assert_eq!(parse("PT1M30S"), Ok(ms(90_000)));
        assert_eq!(parse("PT1H"), Ok(ms(3_600_000)));
        assert_eq!(parse("P1D"), Ok(ms(86_400_000)));
        assert_eq!(parse("P1W"), Ok(ms(7 * 86_400_000)));
        assert_eq!(parse("P1DT12H"), Ok(ms(129_600_000)));
        assert_eq!(parse("PT0,5S"), Ok(ms(500)));
        assert_eq!(parse("PT0S"), Ok(Duration::ZERO));
        assert_eq!(parse("pt2s"), Ok(ms(2000)));
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "", "P", "PT", "1S", "PT1", "PT1X", "PS", "PT1S1M", "P1DT", "-PT1S", "PT1H1H", "P1T1H",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
