//! typoclip: a testbed for typographic attacks on CLIP.
//!
//! CLIP runs natively on libtorch through `tch`, loaded from the real checkpoint formats. The
//! pipeline stages are separate modules, each testable alone:
//! [`model`] (CLIP towers, checkpoint loading, taps), [`tokenizer`] (CLIP BPE),
//! [`preprocess`] (CLIP's resize/crop/normalise), [`dataset`] (reading images), [`attack`]
//! (rendering text overlays), [`sweep`] (the evaluation pipeline, its shards and their merge),
//! [`plan`] (models × datasets × attacks expanded into sharded jobs), [`metrics`], [`records`],
//! [`defense`] (mitigations as plug-ins at four hooks), [`probe`] (neuron activations, concept
//! arithmetic, Stroop, linear probes), [`report`] (HTML/Markdown reports and run comparison), [`ocr`] (a trained scene-text
//! detector),
//! [`cli`].

pub mod attack;
pub mod cli;
pub mod dataset;
pub mod defense;
pub mod hf_scores;
pub mod hf_tokenizer;
pub mod html_unescape;
pub mod hub;
pub mod metrics;
pub mod model;
pub mod npy;
pub mod ocr;
pub mod plan;
pub mod preprocess;
pub mod probe;
pub mod progress;
pub mod records;
pub mod registry;
pub mod report;
pub mod sweep;
pub mod text_tokenizer;
pub mod tokenizer;
pub mod toy;
pub mod zeroshot;
