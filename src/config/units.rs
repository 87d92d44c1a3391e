//! Parsing of the human units used in `gateway.yaml`: durations (`500ms`, `2s`, `5m`, `1h`)
//! and sizes (`512`, `16KiB`, `10MiB`, `1GiB`). Pure functions; the caller adds the location.

use std::time::Duration;

/// Parses a duration such as `500ms`, `2s`, `5m` or `1h`.
///
/// # Errors
/// Returns a sentence saying what was expected.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("expected a duration such as 500ms, 2s or 5m, got {text:?}"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => {
            return Err(format!(
                "expected a duration such as 500ms, 2s or 5m (units ms, s, m, h), got {text:?}"
            ));
        }
    };
    Ok(d)
}

/// Parses a size such as `512`, `16KiB`, `10MiB` or `1GiB` (also `KB`/`MB`/`GB` as powers of 1000).
///
/// # Errors
/// Returns a sentence saying what was expected.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("expected a size such as 16KiB or 10MiB, got {text:?}"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => {
            return Err(format!(
                "expected a size such as 16KiB or 10MiB (units B, KiB, MiB, GiB), got {text:?}"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {text:?} is too large"))
}

/// Parses a rate such as `100/s`, `6000/min` or `10/h` into (count, period).
///
/// # Errors
/// Returns a sentence saying what was expected.
pub fn parse_rate(text: &str) -> Result<(u32, Duration), String> {
    let expected = || format!("expected a rate such as 100/s, 6000/min or 10/h, got {text:?}");
    let (n, unit) = text.trim().split_once('/').ok_or_else(expected)?;
    let n: u32 = n.trim().parse().map_err(|_| expected())?;
    if n == 0 {
        return Err("a rate must be at least 1 per period".to_owned());
    }
    let per = match unit.trim() {
        "s" | "sec" | "second" => Duration::from_secs(1),
        "m" | "min" | "minute" => Duration::from_secs(60),
        "h" | "hour" => Duration::from_secs(3600),
        "d" | "day" => Duration::from_secs(86400),
        _ => return Err(expected()),
    };
    Ok((n, per))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("2").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("2 days").is_err());
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("100/s"), Ok((100, Duration::from_secs(1))));
        assert_eq!(parse_rate("6000/min"), Ok((6000, Duration::from_secs(60))));
        assert_eq!(parse_rate("10/h"), Ok((10, Duration::from_secs(3600))));
        assert!(parse_rate("0/s").is_err());
        assert!(parse_rate("10").is_err());
        assert!(parse_rate("10/fortnight").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("16KiB"), Ok(16 * 1024));
        assert_eq!(parse_size("10MiB"), Ok(10 * 1024 * 1024));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("10XB").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
    }
}
