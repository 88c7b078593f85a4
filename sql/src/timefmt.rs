//! ksqlDB's time formats (Java `DateTimeFormatter` patterns, e.g. `yyyy-MM-dd HH:mm:ss.SSS`)
//! translated to chrono's `strftime` syntax, which Rill parses and formats with.

use crate::{Result, SqlError};

/// An ISO-8601 date-time, possibly partial (`2020-02-23`, `2020-02-23T23:45`,
/// `2020-02-23T23:45:12.000`) and possibly with an offset (`+0100`, `+01:00`, `Z`), as epoch
/// milliseconds (UTC unless an offset is given; missing fields are zero).
pub fn parse_iso_prefix(text: &str) -> Option<i64> {
    use chrono::{DateTime, NaiveDate, NaiveDateTime};
    let text = text.trim();
    if let Some(at) = text.find("T24") {
        // Hour 24 is the end of the day: hour 23 plus an hour.
        return parse_iso_prefix(&format!("{}T23{}", &text[..at], &text[at + 3..])).map(|ms| ms + 3_600_000);
    }
    let (base, zoned) = match text.strip_suffix('Z') {
        Some(rest) => (format!("{rest}+0000"), true),
        None => {
            let tail = text.get(10..).unwrap_or("");
            (text.to_string(), tail.contains('+') || tail.contains('-'))
        }
    };
    if zoned {
        for f in ["%Y-%m-%dT%H:%M:%S%.f%z", "%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M%z", "%Y-%m-%dT%H%z"] {
            if let Ok(t) = DateTime::parse_from_str(&base, f) {
                return Some(t.timestamp_millis());
            }
        }
        return None;
    }
    for f in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(&base, f) {
            return Some(t.and_utc().timestamp_millis());
        }
    }
    if let Ok(t) = NaiveDateTime::parse_from_str(&format!("{base}:00"), "%Y-%m-%dT%H:%M") {
        return Some(t.and_utc().timestamp_millis());
    }
    // A year, or a year and month, alone: their first day.
    let day = match base.len() {
        4 => format!("{base}-01-01"),
        7 => format!("{base}-01"),
        _ => base,
    };
    NaiveDate::parse_from_str(&day, "%Y-%m-%d")
        .ok()
        .and_then(|d| Some(d.and_hms_opt(0, 0, 0)?.and_utc().timestamp_millis()))
}

#[cfg(test)]
mod iso_tests {
    use super::parse_iso_prefix;

    #[test]
    fn iso_prefixes_with_and_without_zones() {
        let day = 1_582_416_000_000; // 2020-02-23T00:00:00Z
        assert_eq!(parse_iso_prefix("2020-02-23"), Some(day));
        assert_eq!(parse_iso_prefix("2020-02-23T01"), Some(day + 3_600_000));
        assert_eq!(parse_iso_prefix("2020-02-23T01:30"), Some(day + 5_400_000));
        assert_eq!(parse_iso_prefix("2020-02-23T01:30:00.250"), Some(day + 5_400_250));
        assert_eq!(parse_iso_prefix("2020-02-23T02:30:00.250+0100"), Some(day + 5_400_250));
        assert_eq!(parse_iso_prefix("2020-02-23T01:30:00Z"), Some(day + 5_400_000));
        assert_eq!(parse_iso_prefix("2020-02-22T24"), Some(day));
        assert_eq!(parse_iso_prefix("2020-02"), Some(day - 22 * 86_400_000));
        assert_eq!(parse_iso_prefix("2018"), Some(1_514_764_800_000));
        assert_eq!(parse_iso_prefix("yesterday"), None);
    }
}

/// Translates a Java `DateTimeFormatter` pattern into a chrono format string (to format with).
pub fn java_to_chrono(pattern: &str) -> Result<String> {
    translate(pattern, false)
}

/// [`java_to_chrono`] for parsing: a fraction of one or two digits after a `.` (`ss.S`) reads
/// as Java reads it (`.2` is 200 ms), where chrono's fixed-width fraction wants three digits.
pub fn java_to_chrono_parse(pattern: &str) -> Result<String> {
    translate(pattern, true)
}

fn translate(pattern: &str, parsing: bool) -> Result<String> {
    let unsupported = |what: &str| {
        SqlError::plan(format!("Invalid date format: {pattern}: the pattern letter(s) {what} are not supported"))
    };
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = String::with_capacity(pattern.len() * 2);
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' {
            // Quoted literal; '' is a quote.
            if chars.get(i + 1) == Some(&'\'') {
                out.push('\'');
                i += 2;
                continue;
            }
            i += 1;
            while i < chars.len() {
                if chars[i] == '\'' {
                    if chars.get(i + 1) == Some(&'\'') {
                        out.push('\'');
                        i += 2;
                        continue;
                    }
                    break;
                }
                push_literal(&mut out, chars[i]);
                i += 1;
            }
            i += 1;
            continue;
        }
        if !c.is_ascii_alphabetic() {
            push_literal(&mut out, c);
            i += 1;
            continue;
        }
        let mut n = 1;
        while chars.get(i + n) == Some(&c) {
            n += 1;
        }
        let run: String = std::iter::repeat_n(c, n).collect();
        if parsing && c == 'S' && n < 3 && out.ends_with('.') {
            out.pop();
            out.push_str("%.f");
            i += n;
            continue;
        }
        out.push_str(match (c, n) {
            ('y' | 'u', 2) => "%y",
            ('y' | 'u', _) => "%Y",
            ('M', 1 | 2) => "%m",
            ('M', 3) => "%b",
            ('M', _) => "%B",
            ('d', _) => "%d",
            ('D', _) => "%j",
            ('H', _) => "%H",
            ('h', _) => "%I",
            ('k', _) => "%H",
            ('m', _) => "%M",
            ('s', _) => "%S",
            ('S', 1..=3) => "%3f",
            ('S', 4..=6) => "%6f",
            ('S', _) => "%9f",
            ('a', _) => "%p",
            ('E', 1..=3) => "%a",
            ('E', _) => "%A",
            ('z', _) => "%Z",
            ('X' | 'x', 1 | 2) | ('Z', 1..=3) => "%z",
            ('X' | 'x', _) | ('Z', _) => "%:z",
            _ => return Err(unsupported(&run)),
        });
        i += n;
    }
    Ok(out)
}

fn push_literal(out: &mut String, c: char) {
    if c == '%' {
        out.push_str("%%");
    } else {
        out.push(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_patterns() {
        assert_eq!(java_to_chrono("yyyy-MM-dd HH:mm:ss.SSS").unwrap(), "%Y-%m-%d %H:%M:%S.%3f");
        assert_eq!(java_to_chrono_parse("HH:mm:ss.S").unwrap(), "%H:%M:%S%.f");
        let t = chrono::NaiveTime::parse_from_str("13:31:09.2", &java_to_chrono_parse("HH:mm:ss.S").unwrap()).unwrap();
        assert_eq!(t, chrono::NaiveTime::from_hms_milli_opt(13, 31, 9, 200).unwrap());
        assert_eq!(java_to_chrono("yyyy-MM-dd'T'HH:mm:ssX").unwrap(), "%Y-%m-%dT%H:%M:%S%z");
        assert_eq!(java_to_chrono("dd/MMM/yyyy 'o''clock' h a").unwrap(), "%d/%b/%Y o'clock %I %p");
        assert!(java_to_chrono("yyyy QQ").is_err());
    }
}
