//! ksqlDB's time formats (Java `DateTimeFormatter` patterns, e.g. `yyyy-MM-dd HH:mm:ss.SSS`)
//! translated to chrono's `strftime` syntax, which Rill parses and formats with.

use crate::{Result, SqlError};

/// Translates a Java `DateTimeFormatter` pattern into a chrono format string.
pub fn java_to_chrono(pattern: &str) -> Result<String> {
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
        assert_eq!(java_to_chrono("yyyy-MM-dd'T'HH:mm:ssX").unwrap(), "%Y-%m-%dT%H:%M:%S%z");
        assert_eq!(java_to_chrono("dd/MMM/yyyy 'o''clock' h a").unwrap(), "%d/%b/%Y o'clock %I %p");
        assert!(java_to_chrono("yyyy QQ").is_err());
    }
}
