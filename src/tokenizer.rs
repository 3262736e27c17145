//! The tokenizer stage: text → CLIP BPE token ids, as open_clip's `SimpleTokenizer`.
//!
//! Cleaning follows open_clip's `_clean_lower`: `ftfy.fix_text` without its mojibake repair
//! (ftfy 6.3.1's other fixers: HTML unescaping, C1 controls, Latin ligatures, half/full-width
//! forms, curly quotes, line breaks, terminal escapes, control characters, NFC, repeated on each
//! line until stable, see [`fix_text`]), then HTML references unescaped twice as Python's
//! `html.unescape` ([`crate::html_unescape`]), whitespace collapsed, lower-cased. BPE merges use
//! the OpenAI vocabulary bundled by the `instant-clip-tokenizer` crate. Every row is
//! `<start_of_text> … <end_of_text>`, truncated to the context length with the end-of-text token
//! kept, zero-padded.
//!
//! Not reproduced from ftfy: mojibake repair (`fix_encoding`), i.e. re-decoding text that was
//! mis-decoded as Latin-1/Windows-1252, and its split of lines longer than a million characters.
//! Text that ftfy would "repair" can tokenize differently. Code points that only one of the
//! two word-splitting regexes' Unicode versions assigns (Python's `regex` module, Rust's
//! `regex`) can split into words differently.

use std::borrow::Cow;
use std::sync::OnceLock;

use instant_clip_tokenizer::Token;
use tch::Tensor;
use unicode_normalization::UnicodeNormalization;

use crate::html_unescape::{ftfy_unescape, unescape, INVALID_CHARREFS};

/// CLIP's BPE tokenizer.
pub struct ClipTokenizer {
    inner: instant_clip_tokenizer::Tokenizer,
    whitespace: regex::Regex,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClipTokenizer")
    }
}

impl Default for ClipTokenizer {
    fn default() -> Self {
        Self::new()
    }
}

/// The `<start_of_text>` id.
pub const START_OF_TEXT: i64 = 49406;
/// The `<end_of_text>` id.
pub const END_OF_TEXT: i64 = 49407;

impl ClipTokenizer {
    /// Loads the bundled OpenAI vocabulary (about 50 ms).
    pub fn new() -> ClipTokenizer {
        ClipTokenizer {
            inner: instant_clip_tokenizer::Tokenizer::new(),
            whitespace: regex::Regex::new(r"\s+").expect("valid regex"),
        }
    }

    /// open_clip's cleaning: ftfy-like fixes, HTML unescape (twice), whitespace collapse, lower-case.
    pub fn clean(&self, text: &str) -> String {
        let fixed = fix_text(text);
        let unescaped = unescape(&unescape(&fixed)).into_owned();
        let trimmed = unescaped.trim();
        self.whitespace
            .replace_all(trimmed, " ")
            .trim()
            .to_lowercase()
    }

    /// Token ids without start/end markers.
    pub fn encode(&self, text: &str) -> Vec<i64> {
        let mut out: Vec<Token> = Vec::new();
        let cleaned = self.clean(text);
        // open_clip splits words with `regex` and IGNORECASE, under which U+0345 (combining
        // ypogegrammeni, whose case variants are letters) matches no alternative: it is skipped
        // like whitespace. The same regex without the flag, as here, would keep it.
        let cleaned = if cleaned.contains('\u{345}') {
            cleaned.replace('\u{345}', " ")
        } else {
            cleaned
        };
        self.inner.encode(&cleaned, &mut out);
        out.into_iter().map(|t| t.to_u16() as i64).collect()
    }

    /// One row: `<sot> ids… <eot>`, truncated to `context_length` keeping `<eot>` last, unpadded.
    pub fn encode_row(&self, text: &str, context_length: usize) -> Vec<i64> {
        let mut row = vec![START_OF_TEXT];
        row.extend(self.encode(text));
        row.push(END_OF_TEXT);
        if row.len() > context_length {
            row.truncate(context_length);
            row[context_length - 1] = END_OF_TEXT;
        }
        row
    }

    /// Token ids `[N, context_length] i64`, zero-padded — exactly open_clip's `tokenize`.
    pub fn tokenize<S: AsRef<str>>(&self, texts: &[S], context_length: usize) -> Tensor {
        let rows: Vec<Vec<i64>> = texts
            .iter()
            .map(|t| self.encode_row(t.as_ref(), context_length))
            .collect();
        pad_rows(&rows, context_length)
    }
}

/// Stacks rows into `[N, width] i64`, zero-padded on the right.
pub fn pad_rows(rows: &[Vec<i64>], width: usize) -> Tensor {
    let mut flat = vec![0i64; rows.len() * width];
    for (i, r) in rows.iter().enumerate() {
        flat[i * width..i * width + r.len().min(width)].copy_from_slice(&r[..r.len().min(width)]);
    }
    Tensor::from_slice(&flat).view([rows.len() as i64, width as i64])
}

/// The subset of `ftfy.fix_text` that applies to text that is not mojibake.
///
/// As ftfy, it works line by line (each segment ends after a `\n`) and repeats its fixes on a
/// line until nothing changes; the first fix is ftfy's `unescape_html`
/// ([`ftfy_unescape`]), skipped from the first line that contains a `<` on (ftfy's
/// `unescape_html="auto"`).
pub fn fix_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut unescape_html = true;
    for segment in text.split_inclusive('\n') {
        unescape_html &= !segment.contains('<');
        let mut current = segment.to_string();
        loop {
            let unescaped = if unescape_html {
                ftfy_unescape(&current)
            } else {
                Cow::Borrowed(current.as_str())
            };
            let fixed = fix_chars(&unescaped);
            if fixed == current {
                break;
            }
            current = fixed;
        }
        out.push_str(&current);
    }
    out
}

/// One pass of ftfy 6.3.1's fixers after `unescape_html`, in ftfy's order: `fix_c1_controls`,
/// `fix_latin_ligatures`, `fix_character_width` and `uncurl_quotes` (as one character map),
/// `fix_line_breaks`, `remove_terminal_escapes`, `remove_control_chars`, then NFC.
fn fix_chars(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        // fix_c1_controls: C1 controls read as Windows-1252 (the five it leaves undefined stay).
        let c = match c {
            '\u{80}'..='\u{9F}' => c1_as_windows_1252(c),
            _ => c,
        };
        match c {
            // fix_latin_ligatures
            '\u{0132}' => out.push_str("IJ"),
            '\u{0133}' => out.push_str("ij"),
            '\u{0149}' => out.push_str("'n"), // ftfy's "\u{2BC}n", then uncurl_quotes
            '\u{01C4}' => out.push_str("D\u{17D}"),
            '\u{01C5}' => out.push_str("D\u{17E}"),
            '\u{01C6}' => out.push_str("d\u{17E}"),
            '\u{01C7}' => out.push_str("LJ"),
            '\u{01C8}' => out.push_str("Lj"),
            '\u{01C9}' => out.push_str("lj"),
            '\u{01CA}' => out.push_str("NJ"),
            '\u{01CB}' => out.push_str("Nj"),
            '\u{01CC}' => out.push_str("nj"),
            '\u{01F1}' => out.push_str("DZ"),
            '\u{01F2}' => out.push_str("Dz"),
            '\u{01F3}' => out.push_str("dz"),
            '\u{FB00}' => out.push_str("ff"),
            '\u{FB01}' => out.push_str("fi"),
            '\u{FB02}' => out.push_str("fl"),
            '\u{FB03}' => out.push_str("ffi"),
            '\u{FB04}' => out.push_str("ffl"),
            '\u{FB05}' => out.push_str("\u{17F}t"),
            '\u{FB06}' => out.push_str("st"),
            // fix_character_width: the half- and full-width forms as NFKC has them, and the
            // ideographic space (none of these give a curly quote)
            '\u{3000}' => out.push(' '),
            '\u{FF01}'..='\u{FFEF}' => out.extend(std::iter::once(c).nfkc()),
            // uncurl_quotes
            '\u{02BC}' | '\u{2018}'..='\u{201B}' => out.push('\''),
            '\u{201C}'..='\u{201F}' => out.push('"'),
            // fix_line_breaks (U+0085 is already an ellipsis, as in ftfy)
            '\u{2028}' | '\u{2029}' => out.push('\n'),
            _ => out.push(c),
        }
    }
    let out = out.replace("\r\n", "\n").replace('\r', "\n");
    // remove_terminal_escapes
    let out = if out.contains('\x1B') {
        static ANSI: OnceLock<regex::Regex> = OnceLock::new();
        ANSI.get_or_init(|| regex::Regex::new(r"\x1B\[(?:\d|;)*[a-zA-Z]").expect("valid regex"))
            .replace_all(&out, "")
            .into_owned()
    } else {
        out
    };
    // remove_control_chars (ftfy 6 keeps the tag characters U+E0000–U+E007F, used in emoji
    // flag sequences, and the musical-notation controls U+1D173–U+1D17A)
    out.chars()
        .filter(|c| {
            !matches!(c,
                '\u{0000}'..='\u{0008}' | '\u{000B}' | '\u{000E}'..='\u{001F}' | '\u{007F}'
                | '\u{206A}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFC}')
        })
        .nfc()
        .collect()
}

/// A C1 control (U+0080–U+009F) read as its Windows-1252 byte: ftfy's "sloppy-windows-1252",
/// which is the HTML5 remap of numeric references in that range.
fn c1_as_windows_1252(c: char) -> char {
    INVALID_CHARREFS
        .iter()
        .find(|(n, _)| *n == c as u32)
        .map_or(c, |&(_, r)| r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_ids() {
        let t = ClipTokenizer::new();
        // From open_clip: tokenize(["a photo of a cat."])
        assert_eq!(
            t.encode_row("a photo of a cat.", 77),
            vec![49406, 320, 1125, 539, 320, 2368, 269, 49407]
        );
        // Cleaning: case, whitespace, entities.
        assert_eq!(
            t.encode("A   Photo\tof &amp; a CAT."),
            t.encode("a photo of & a cat.")
        );
    }

    #[test]
    fn fix_text_matches_ftfy() {
        // Expected values: ftfy 6.3.1's fix_text.
        let cases = [
            ("it&rsquo;s &#xFB01;ne", "it's fine"),
            ("&amp;amp;amp;amp;", "&"),
            ("P&EACUTE;REZ", "P\u{C9}REZ"),
            ("a<b &amp;amp;", "a<b &amp;amp;"),
            (
                "x&amp;amp;\na<b &amp;amp;\n&amp;amp;",
                "x&\na<b &amp;amp;\n&amp;amp;",
            ),
            ("\u{85} \u{91}q\u{92} \u{81}", "\u{2026} 'q' \u{81}"),
            ("\u{149} \u{1F3} \u{FB05}", "'n dz \u{17F}t"),
            (
                "\u{FF71}\u{FF9E} \u{FFE1} \u{FFE3}",
                "\u{30A2}\u{3099} \u{A3}  \u{304}",
            ),
            ("\x1B[31mred\x1B[0m", "red"),
            (
                "\u{1F3F4}\u{E0067}\u{E0062}\u{E007F}",
                "\u{1F3F4}\u{E0067}\u{E0062}\u{E007F}",
            ),
            ("e&#x301;", "\u{E9}"),
            ("&#xFEFF;x\r\ny", "x\ny"),
        ];
        for (text, expected) in cases {
            assert_eq!(fix_text(text), expected, "{text:?}");
        }
    }

    #[test]
    fn ypogegrammeni_splits_words() {
        // open_clip's word regex (IGNORECASE) skips U+0345.
        let t = ClipTokenizer::new();
        assert_eq!(t.encode("x\u{345}y"), t.encode("x y"));
    }

    #[test]
    fn truncation_keeps_eot() {
        let t = ClipTokenizer::new();
        let long = "word ".repeat(200);
        let row = t.encode_row(&long, 77);
        assert_eq!(row.len(), 77);
        assert_eq!(row[0], START_OF_TEXT);
        assert_eq!(row[76], END_OF_TEXT);
        let tensor = t.tokenize(&["hi", long.as_str()], 77);
        assert_eq!(tensor.size(), vec![2, 77]);
    }
}
