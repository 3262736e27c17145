//! The text-encoding interface shared by typoclip's tokenizers: texts → rows of token ids of a
//! fixed context length, padded with the tokenizer's pad id, as open_clip's tokenizers return
//! them (`tokenizer(texts, context_length)`).
//!
//! Implemented by [`ClipTokenizer`] (OpenAI's BPE, open_clip's `SimpleTokenizer`; pad id 0)
//! and [`HfTokenizer`] (a Hugging Face `tokenizer.json`, open_clip's `HFTokenizer`). Pure: the
//! tokenizers are loaded before, encoding touches no files.

use tch::Tensor;

use crate::hf_tokenizer::{HfTokenizer, HfTokenizerError};
use crate::tokenizer::ClipTokenizer;

/// A tokenizer as the text tower sees it.
pub trait TextTokenizer {
    /// One row per text, each exactly `context_length` ids (truncated, then padded with
    /// [`TextTokenizer::pad_id`] as the reference pads).
    fn tokenize_rows(
        &self,
        texts: &[&str],
        context_length: usize,
    ) -> Result<Vec<Vec<i64>>, HfTokenizerError>;

    /// The id padding fills rows with.
    fn pad_id(&self) -> i64;

    /// The row of `text` without its padding, when padding with 0 to any width gives the text
    /// tower the same result as the full row (CLIP's BPE: rows end at the end-of-text token, the
    /// pad id is 0); `None`: only full rows ([`TextTokenizer::tokenize_rows`]) are valid.
    fn unpadded_row(&self, _text: &str, _context_length: usize) -> Option<Vec<i64>> {
        None
    }

    /// What identifies this tokenizer in caches and provenance (`clip-bpe`, or the
    /// `tokenizer.json` digest with the cleaning options).
    fn identity(&self) -> String;

    /// The rows as `[B, context_length] i64`.
    fn tokenize_tensor(
        &self,
        texts: &[&str],
        context_length: usize,
    ) -> Result<Tensor, HfTokenizerError> {
        let rows = self.tokenize_rows(texts, context_length)?;
        let flat: Vec<i64> = rows.concat();
        Ok(Tensor::from_slice(&flat).view([rows.len() as i64, context_length as i64]))
    }
}

impl TextTokenizer for ClipTokenizer {
    fn tokenize_rows(
        &self,
        texts: &[&str],
        context_length: usize,
    ) -> Result<Vec<Vec<i64>>, HfTokenizerError> {
        Ok(texts
            .iter()
            .map(|t| {
                let mut row = self.encode_row(t, context_length);
                row.resize(context_length, 0);
                row
            })
            .collect())
    }

    fn pad_id(&self) -> i64 {
        0
    }

    fn unpadded_row(&self, text: &str, context_length: usize) -> Option<Vec<i64>> {
        Some(self.encode_row(text, context_length))
    }

    fn identity(&self) -> String {
        "clip-bpe".into()
    }
}

impl TextTokenizer for HfTokenizer {
    fn tokenize_rows(
        &self,
        texts: &[&str],
        context_length: usize,
    ) -> Result<Vec<Vec<i64>>, HfTokenizerError> {
        self.encode_rows(texts, context_length)
    }

    fn pad_id(&self) -> i64 {
        HfTokenizer::pad_id(self)
    }

    fn identity(&self) -> String {
        HfTokenizer::identity(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_rows_equal_its_tensor() {
        let tok = ClipTokenizer::new();
        let texts = ["a photo of a cat", "", &"word ".repeat(100)];
        let t = tok.tokenize_tensor(&texts, 77).unwrap();
        assert!(t.equal(&tok.tokenize(&texts, 77)));
        assert_eq!(TextTokenizer::pad_id(&tok), 0);
    }
}
