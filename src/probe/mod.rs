//! The research probes: commands that look at *why* typographic attacks work, built on the
//! model's taps ([`crate::model::probe`] owns taps and interventions inside the forward pass;
//! this module owns the experiments that use them).
//!
//! - [`neurons`]: spatially pooled activations of chosen units (ResNet channels, ViT MLP
//!   neurons or residual directions), top-activating images, activation change under an attack,
//!   a self-contained HTML contact sheet;
//! - [`concepts`]: arithmetic over text embeddings (`finance + toys`, `0.5*smile - illness`),
//!   ranked nearest labels / images, and an image embedding decomposed as a sparse non-negative
//!   combination of concept embeddings;
//! - [`stroop`]: the Distill article's Stroop experiment (colour words in other ink colours);
//! - [`linear`]: linear probes (multinomial logistic regression on frozen image embeddings).
//!
//! Inputs: a [`crate::model::ClipModel`], images as tensors, text through the tokenizer.
//! Outputs: tensors and plain rows; the CLI (`cli/probe_cmd.rs`) prints and writes them.

pub mod concepts;
pub mod linear;
pub mod neurons;
pub mod stroop;

/// Errors of the probe stage; each names its input (file, field, expression).
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// A malformed concept expression.
    #[error("concept expression `{expression}`: {message}")]
    Expression {
        /// The expression as given.
        expression: String,
        /// What is wrong.
        message: String,
    },
    /// A layer or unit that the model does not have.
    #[error("{0}")]
    Site(String),
    /// A file that cannot be read or is malformed.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What is wrong (field first).
        message: String,
    },
    /// Anything else that is invalid.
    #[error("{0}")]
    Invalid(String),
}
