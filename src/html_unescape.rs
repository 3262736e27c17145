//! HTML character references decoded exactly as open_clip's cleaning decodes them: Python's
//! `html.unescape` (CPython 3.11), which open_clip applies twice after `ftfy.fix_text`, and
//! ftfy's own `unescape_html` step inside `fix_text` ([`ftfy_unescape`]). [`crate::tokenizer`]
//! uses both so that typoclip's token ids equal open_clip's.
//!
//! [`unescape`] follows CPython's `Lib/html/__init__.py` (the HTML5 parsing spec):
//!
//! * a reference is what the regex `&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)`
//!   matches, scanning left to right without overlaps; the output is never scanned again;
//! * numeric (`&#65;`, `&#x41`, semicolon optional): the Windows-1252 remaps and `0` → U+FFFD
//!   and `0x0D` → `\r` ([`INVALID_CHARREFS`]); surrogates and anything above U+10FFFF (however
//!   many digits) → U+FFFD; control and non-character code points ([`is_invalid_codepoint`]) →
//!   nothing; anything else → that character;
//! * named: the name as matched (up to 32 characters, with its `;` if any) when it is in
//!   [`HTML5`]; otherwise its longest prefix of at least two characters that is (only the
//!   legacy names without `;` can be, e.g. `&notit;` → `¬it;`), followed by the rest; otherwise
//!   the text is kept.
//!
//! [`ftfy_unescape`] follows ftfy 6.3.1's `fixes.unescape_html`: only `&#?[0-9A-Za-z]{1,24};`,
//! always with its semicolon, is decoded: names of [`HTML5`] that end in `;`, the all-caps
//! names of [`FTFY_UPPER`] (`&NTILDE;` → `Ñ`), and numeric references that `html.unescape`
//! decodes whole (`&#4;` → nothing, but `&#12ab;` is kept).
//!
//! The tables are generated data (`src/html_entities.rs`, by `scripts/gen_html_entities.py`).

use std::borrow::Cow;

#[path = "html_entities.rs"]
mod html_entities;

pub use html_entities::{FTFY_UPPER, HTML5};

/// Python's `html._invalid_charrefs`: numeric references that the HTML5 spec remaps (NUL, CR
/// and the Windows-1252 range 0x80–0x9F; the five code points that Windows-1252 leaves undefined
/// map to themselves).
pub const INVALID_CHARREFS: [(u32, char); 34] = [
    (0x00, '\u{FFFD}'),
    (0x0D, '\r'),
    (0x80, '\u{20AC}'),
    (0x81, '\u{81}'),
    (0x82, '\u{201A}'),
    (0x83, '\u{0192}'),
    (0x84, '\u{201E}'),
    (0x85, '\u{2026}'),
    (0x86, '\u{2020}'),
    (0x87, '\u{2021}'),
    (0x88, '\u{02C6}'),
    (0x89, '\u{2030}'),
    (0x8A, '\u{0160}'),
    (0x8B, '\u{2039}'),
    (0x8C, '\u{0152}'),
    (0x8D, '\u{8D}'),
    (0x8E, '\u{017D}'),
    (0x8F, '\u{8F}'),
    (0x90, '\u{90}'),
    (0x91, '\u{2018}'),
    (0x92, '\u{2019}'),
    (0x93, '\u{201C}'),
    (0x94, '\u{201D}'),
    (0x95, '\u{2022}'),
    (0x96, '\u{2013}'),
    (0x97, '\u{2014}'),
    (0x98, '\u{02DC}'),
    (0x99, '\u{2122}'),
    (0x9A, '\u{0161}'),
    (0x9B, '\u{203A}'),
    (0x9C, '\u{0153}'),
    (0x9D, '\u{9D}'),
    (0x9E, '\u{017E}'),
    (0x9F, '\u{0178}'),
];

/// Python's `html._invalid_codepoints`: numeric references to these decode to nothing
/// (0x01–0x08, 0x0B, 0x0E–0x1F, 0x7F–0x9F, U+FDD0–U+FDEF and the two non-characters ending
/// each plane, `..FFFE` and `..FFFF`).
pub fn is_invalid_codepoint(cp: u32) -> bool {
    matches!(cp, 0x01..=0x08 | 0x0B | 0x0E..=0x1F | 0x7F..=0x9F | 0xFDD0..=0xFDEF)
        || (cp <= 0x10FFFF && cp & 0xFFFE == 0xFFFE)
}

/// The replacement of a numeric reference to `cp` (`None`: nothing).
fn numeric(cp: u32) -> Option<char> {
    if let Some(&(_, c)) = INVALID_CHARREFS.iter().find(|(n, _)| *n == cp) {
        return Some(c);
    }
    if (0xD800..=0xDFFF).contains(&cp) || cp > 0x10FFFF {
        return Some('\u{FFFD}');
    }
    if is_invalid_codepoint(cp) {
        return None;
    }
    Some(char::from_u32(cp).expect("not a surrogate, at most U+10FFFF"))
}

/// `name`'s replacement in a sorted `(name, replacement)` table.
fn find(table: &[(&str, &'static str)], name: &str) -> Option<&'static str> {
    table
        .binary_search_by(|(n, _)| n.as_bytes().cmp(name.as_bytes()))
        .ok()
        .map(|i| table[i].1)
}

/// `name`'s replacement in [`HTML5`] (`name` without `&`, with its `;` if any).
pub fn lookup(name: &str) -> Option<&'static str> {
    find(HTML5, name)
}

/// A matched reference: it ends (exclusive) at byte `end`; `head` replaces it, then `tail`.
struct Decoded<'a> {
    end: usize,
    head: Head,
    tail: &'a str,
}

enum Head {
    Char(Option<char>),
    Str(&'static str),
}

/// The value of the digits `digits` in `radix`, saturated just above U+10FFFF (all such values
/// decode alike, to U+FFFD).
fn saturating_value(digits: &str, radix: u32) -> u32 {
    digits.chars().fold(0u32, |acc, d| {
        let v = acc * radix + d.to_digit(radix).expect("matched digit");
        v.min(0x110000)
    })
}

/// Length in bytes of the longest prefix of `s` whose characters all satisfy `pred`.
fn prefix_len(s: &str, pred: impl Fn(char) -> bool) -> usize {
    s.char_indices()
        .find(|&(_, c)| !pred(c))
        .map_or(s.len(), |(i, _)| i)
}

/// The reference whose text starts at byte `start` of `s` (just after an `&`), if the regex
/// matches there, with its replacement; `None` when nothing matches or a name is unknown (the
/// text is then kept as it is).
fn decode_at(s: &str, start: usize) -> Option<Decoded<'_>> {
    let rest = &s[start..];
    let semicolon = |end: usize| end + usize::from(s[end..].starts_with(';'));
    if let Some(num) = rest.strip_prefix('#') {
        let (digits, radix, skip) = match num.strip_prefix(['x', 'X']) {
            Some(hex) => (hex, 16, 2),
            None => (num, 10, 1),
        };
        let n = prefix_len(digits, |c| c.is_digit(radix) && c.is_ascii());
        if n == 0 {
            // `#` cannot start a name, so `&#` followed by anything else is kept.
            return None;
        }
        let cp = saturating_value(&digits[..n], radix);
        return Some(Decoded {
            end: semicolon(start + skip + n),
            head: Head::Char(numeric(cp)),
            tail: "",
        });
    }
    // `[^\t\n\f <&#;]{1,32}`: up to 32 characters (not bytes).
    let mut name_end = rest.len();
    for (count, (i, c)) in rest.char_indices().enumerate() {
        if count == 32 || matches!(c, '\t' | '\n' | '\x0C' | ' ' | '<' | '&' | '#' | ';') {
            name_end = i;
            break;
        }
    }
    if name_end == 0 {
        return None;
    }
    let end = semicolon(start + name_end);
    let matched = &s[start..end];
    if let Some(v) = lookup(matched) {
        return Some(Decoded {
            end,
            head: Head::Str(v),
            tail: "",
        });
    }
    // The longest proper prefix of at least two characters that is a name.
    let boundaries: Vec<usize> = matched.char_indices().map(|(i, _)| i).skip(2).collect();
    boundaries.into_iter().rev().find_map(|x| {
        lookup(&matched[..x]).map(|v| Decoded {
            end,
            head: Head::Str(v),
            tail: &matched[x..],
        })
    })
}

/// Python's `html.unescape(s)`: every HTML5 named and numeric character reference decoded,
/// invalid ones as the HTML5 spec says (see the module documentation). Borrows `s` when it
/// has no `&`.
pub fn unescape(s: &str) -> Cow<'_, str> {
    if !s.contains('&') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut copied = 0;
    let mut from = 0;
    while let Some(off) = s[from..].find('&') {
        let amp = from + off;
        match decode_at(s, amp + 1) {
            Some(d) => {
                out.push_str(&s[copied..amp]);
                match d.head {
                    Head::Char(Some(c)) => out.push(c),
                    Head::Char(None) => {}
                    Head::Str(v) => out.push_str(v),
                }
                out.push_str(d.tail);
                copied = d.end;
                from = d.end;
            }
            None => from = amp + 1,
        }
    }
    out.push_str(&s[copied..]);
    Cow::Owned(out)
}

/// ftfy's `unescape_html` (ftfy 6.3.1, run by `ftfy.fix_text` before open_clip's own
/// unescaping): each `&#?[0-9A-Za-z]{1,24};` that is an HTML5 name ending in `;`, one of ftfy's
/// all-caps names, or a numeric reference that [`unescape`] decodes without leaving a `;` is
/// replaced; anything else is kept. Borrows `s` when it has no `&`.
pub fn ftfy_unescape(s: &str) -> Cow<'_, str> {
    if !s.contains('&') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut copied = 0;
    let mut from = 0;
    while let Some(off) = s[from..].find('&') {
        let amp = from + off;
        let body = amp + 1 + usize::from(s[amp + 1..].starts_with('#'));
        let n = prefix_len(&s[body..], |c| c.is_ascii_alphanumeric());
        if (1..=24).contains(&n) && s[body + n..].starts_with(';') {
            let end = body + n + 1;
            let matched = &s[amp..end];
            let replacement: Option<Cow<'_, str>> = if body > amp + 1 {
                Some(unescape(matched)).filter(|u| !u.contains(';'))
            } else {
                let name = &matched[1..];
                lookup(name)
                    .or_else(|| find(FTFY_UPPER, name))
                    .map(Cow::Borrowed)
            };
            if let Some(r) = replacement {
                out.push_str(&s[copied..amp]);
                out.push_str(&r);
                copied = end;
            }
            // The match holds no other `&`: scanning on after it or after the `&` is the same.
            from = end;
        } else {
            from = amp + 1;
        }
    }
    out.push_str(&s[copied..]);
    if copied == 0 {
        return Cow::Borrowed(s);
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> String {
        unescape(s).into_owned()
    }

    #[test]
    fn table_is_sorted_and_complete() {
        assert_eq!(HTML5.len(), 2231);
        assert!(HTML5
            .windows(2)
            .all(|w| w[0].0.as_bytes() < w[1].0.as_bytes()));
        assert_eq!(lookup("amp"), Some("&"));
        assert_eq!(lookup("AElig"), Some("\u{C6}"));
        assert_eq!(lookup("notin;"), Some("\u{2209}"));
        assert_eq!(lookup("notin"), None);
    }

    #[test]
    fn invalid_tables_match_python() {
        // len(html._invalid_codepoints) == 126
        assert_eq!(
            (0..0x110000).filter(|&c| is_invalid_codepoint(c)).count(),
            126
        );
        assert!(is_invalid_codepoint(0x10FFFF) && is_invalid_codepoint(0x1FFFE));
        assert!(!is_invalid_codepoint(0x0C) && !is_invalid_codepoint(0xFFFD));
    }

    // Expected values below are Python 3.11's `html.unescape` (repr as printed by python3).
    #[test]
    fn named_references() {
        assert_eq!(u("&amp;"), "&");
        assert_eq!(u("&amp"), "&");
        assert_eq!(u("&ampx"), "&x");
        assert_eq!(u("&amp;amp;"), "&amp;");
        assert_eq!(u("&notin;"), "\u{2209}");
        assert_eq!(u("&notit;"), "\u{AC}it;");
        assert_eq!(u("&notin"), "\u{AC}in");
        assert_eq!(u("&AElig;&AEligx&Aacute"), "\u{C6}\u{C6}x\u{C1}");
        assert_eq!(u("&lt;3 &gt &GT; &quot"), "<3 > > \"");
        assert_eq!(u("&NotNestedGreaterGreater;"), "\u{2AA2}\u{338}");
        assert_eq!(u("&fjlig;"), "fj");
    }

    #[test]
    fn unknown_names_and_lone_ampersands_kept() {
        assert_eq!(u("&bogus;"), "&bogus;");
        assert_eq!(u("&am;"), "&am;");
        assert_eq!(u("&a"), "&a");
        assert_eq!(u("&"), "&");
        assert_eq!(u("&&"), "&&");
        assert_eq!(u("& amp;"), "& amp;");
        assert_eq!(u("&;"), "&;");
        assert_eq!(u("&#"), "&#");
        assert_eq!(u("&#;"), "&#;");
        assert_eq!(u("&#x;"), "&#x;");
        assert_eq!(u("&#xg;"), "&#xg;");
        assert_eq!(u("AT&T"), "AT&T");
        assert_eq!(u("a && b"), "a && b");
        assert_eq!(u("&&amp;"), "&&");
    }

    #[test]
    fn numeric_references() {
        assert_eq!(u("&#65;"), "A");
        assert_eq!(u("&#65"), "A");
        assert_eq!(u("&#065x"), "Ax");
        assert_eq!(u("&#x41;"), "A");
        assert_eq!(u("&#X41"), "A");
        assert_eq!(u("&#x41g"), "Ag");
        assert_eq!(u("&#x1F600;"), "\u{1F600}");
        assert_eq!(u("&#128512"), "\u{1F600}");
        assert_eq!(u("&#0;"), "\u{FFFD}");
        assert_eq!(u("&#13;"), "\r");
        assert_eq!(u("&#x80;"), "\u{20AC}");
        assert_eq!(u("&#x81;"), "\u{81}");
        assert_eq!(u("&#150;&#x9F"), "\u{2013}\u{178}");
        assert_eq!(u("&#4;"), "");
        assert_eq!(u("&#4?98"), "?98");
        assert_eq!(u("&#11;&#x7f;&#xFDD0;&#xFFFE;&#x10FFFF;"), "");
        assert_eq!(u("&#9;&#10;&#12;"), "\t\n\x0C");
        assert_eq!(u("&#xD800;"), "\u{FFFD}");
        assert_eq!(u("&#57343;"), "\u{FFFD}");
        assert_eq!(u("&#x110000;"), "\u{FFFD}");
        assert_eq!(u("&#99999999999999999999;"), "\u{FFFD}");
        assert_eq!(u("&#xFFFFFFFFFFFFFFFFFFFFFFFF"), "\u{FFFD}");
        assert_eq!(u("&#0000000000000000000065;"), "A");
        assert_eq!(u("&#x0000000000000000000041;"), "A");
        // Non-ASCII digits are not digits here.
        assert_eq!(u("&#\u{0663};"), "&#\u{0663};");
    }

    #[test]
    fn non_ascii_around_references() {
        assert_eq!(u("café&eacute;&#233;é"), "café\u{E9}\u{E9}é");
        assert_eq!(u("東京&amp;大阪"), "東京&大阪");
        assert_eq!(u("😀&amp😀"), "😀&😀");
        assert_eq!(u("&notπ"), "\u{AC}π");
        assert_eq!(u("&ampé;"), "&é;");
        assert_eq!(u("Ωmega &Omega; &ohm;"), "Ωmega \u{3A9} \u{3A9}");
        assert_eq!(u("&\u{A0}amp;"), "&\u{A0}amp;");
    }

    #[test]
    fn names_are_at_most_32_characters() {
        // 32 characters are taken even when a longer run follows; the prefix rule then applies.
        let long = format!("&amp{}", "é".repeat(40));
        assert_eq!(u(&long), format!("&{}", "é".repeat(40)));
        let name33 = format!("&amp{};", "x".repeat(29));
        assert_eq!(u(&name33), format!("&{};", "x".repeat(29)));
        let name34 = format!("&amp{};", "x".repeat(30));
        assert_eq!(u(&name34), format!("&{};", "x".repeat(30)));
    }

    #[test]
    fn borrows_without_ampersand() {
        assert!(matches!(unescape("plain text"), Cow::Borrowed(_)));
        assert!(matches!(ftfy_unescape("plain text"), Cow::Borrowed(_)));
        assert!(matches!(ftfy_unescape("AT&T &bogus;"), Cow::Borrowed(_)));
    }

    // Expected values below are ftfy 6.3.1's `ftfy.fixes.unescape_html`.
    #[test]
    fn ftfy_references() {
        let f = |s: &str| ftfy_unescape(s).into_owned();
        assert_eq!(f("&lt;tag&gt;"), "<tag>");
        assert_eq!(
            f("&Jscr;ohn &HilbertSpace;ancock"),
            "\u{1D4A5}ohn \u{210B}ancock"
        );
        assert_eq!(
            f("P&EACUTE;REZ BUNDESSTRA&SZLIG;E"),
            "P\u{C9}REZ BUNDESSTRASSE"
        );
        assert_eq!(
            f("&ntilde; &Ntilde; &NTILDE; &nTILDE;"),
            "\u{F1} \u{D1} \u{D1} &nTILDE;"
        );
        // Only with a semicolon, and not the prefix rule.
        assert_eq!(f("&amp &amp;x &notit; &AMP;"), "&amp &x &notit; &");
        assert_eq!(f("&amp;amp;"), "&amp;");
        // Numeric: decoded only when html.unescape consumes the semicolon.
        assert_eq!(f("&#65;&#x41;&#4;&#0;&#x80;"), "AA\u{FFFD}\u{20AC}");
        assert_eq!(
            f("&#12ab; &#xZZ; &#xD800; &#99999999999999999999;"),
            "&#12ab; &#xZZ; \u{FFFD} \u{FFFD}"
        );
        // At most 24 characters after `&` or `&#`.
        assert_eq!(
            f("&CounterClockwiseContourIntegral;"),
            "&CounterClockwiseContourIntegral;"
        );
        assert_eq!(
            f("&#0000000000000000000000065;"),
            "&#0000000000000000000000065;"
        );
        assert_eq!(f("&#000000000000000000000065;"), "A");
        assert_eq!(
            f("&&amp; &;&#; & amp; caf\u{E9}&eacute;"),
            "&& &;&#; & amp; caf\u{E9}\u{E9}"
        );
    }
}
