//! The tokenizer stage: text → CLIP BPE token ids, as open_clip's `SimpleTokenizer`.
//!
//! Cleaning follows open_clip's `_clean_lower`: an ftfy-like `fix_text` subset (NFC, HTML
//! entities unescaped twice, curly quotes, Latin ligatures, full-width forms, control
//! characters), whitespace collapsed, lower-cased. BPE merges use the OpenAI vocabulary bundled
//! by the `instant-clip-tokenizer` crate. Every row is `<start_of_text> … <end_of_text>`,
//! truncated to the context length with the end-of-text token kept, zero-padded.
//!
//! Not reproduced from ftfy: mojibake repair (`fix_encoding`), i.e. re-decoding text that was
//! mis-decoded as Latin-1/Windows-1252. Text that ftfy would "repair" can tokenize differently.

use instant_clip_tokenizer::Token;
use tch::Tensor;
use unicode_normalization::UnicodeNormalization;

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
        let unescaped = html_escape::decode_html_entities(
            &html_escape::decode_html_entities(&fixed).into_owned(),
        )
        .into_owned();
        let trimmed = unescaped.trim();
        self.whitespace
            .replace_all(trimmed, " ")
            .trim()
            .to_lowercase()
    }

    /// Token ids without start/end markers.
    pub fn encode(&self, text: &str) -> Vec<i64> {
        let mut out: Vec<Token> = Vec::new();
        self.inner.encode(&self.clean(text), &mut out);
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
pub fn fix_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            // uncurl_quotes
            '\u{2018}' | '\u{2019}' | '\u{201A}' | '\u{201B}' => out.push('\''),
            '\u{201C}' | '\u{201D}' | '\u{201E}' | '\u{201F}' => out.push('"'),
            // fix_latin_ligatures
            '\u{FB00}' => out.push_str("ff"),
            '\u{FB01}' => out.push_str("fi"),
            '\u{FB02}' => out.push_str("fl"),
            '\u{FB03}' => out.push_str("ffi"),
            '\u{FB04}' => out.push_str("ffl"),
            '\u{FB05}' | '\u{FB06}' => out.push_str("st"),
            '\u{0132}' => out.push_str("IJ"),
            '\u{0133}' => out.push_str("ij"),
            '\u{0149}' => out.push_str("\u{02BC}n"),
            '\u{01C7}' => out.push_str("LJ"),
            '\u{01C8}' => out.push_str("Lj"),
            '\u{01C9}' => out.push_str("lj"),
            '\u{01CA}' => out.push_str("NJ"),
            '\u{01CB}' => out.push_str("Nj"),
            '\u{01CC}' => out.push_str("nj"),
            // fix_line_breaks
            '\u{2028}' | '\u{2029}' | '\u{0085}' => out.push('\n'),
            // fix_character_width: full-width ASCII and the ideographic space
            '\u{3000}' => out.push(' '),
            '\u{FF01}'..='\u{FF5E}' => out.push(char::from_u32(c as u32 - 0xFF01 + 0x21).unwrap()),
            // remove_control_chars
            '\u{0000}'..='\u{0008}' | '\u{000B}' | '\u{000E}'..='\u{001F}' | '\u{007F}' => {}
            '\u{206A}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFC}' => {}
            '\u{E0000}'..='\u{E007F}' | '\u{1D173}'..='\u{1D17A}' => {}
            _ => out.push(c),
        }
    }
    let out = out.replace("\r\n", "\n").replace('\r', "\n");
    out.nfc().collect()
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
