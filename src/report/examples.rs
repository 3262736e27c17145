//! Example images for a report: picks a deterministic sample of successes and failures from the
//! records and re-creates their clean and attacked model inputs from the run's provenance (the
//! dataset descriptor and data folder, the attack spec verbatim, the seed, the image
//! transform) — rendering is pure, so the pixels are the ones the model saw.

use std::collections::HashMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::RgbImage;

use super::document::Example;
use super::run::RunData;
use crate::attack::AttackSpec;
use crate::dataset::descriptor::{DatasetDescriptor, DatasetKind, Sample};
use crate::records::Record;

/// Thumbnail edge in pixels.
pub const THUMB_PX: u32 = 112;

/// Whether a record counts as a success of the attack: a targeted attack moved the top-1 to its
/// target (from elsewhere); an untargeted one moved a correct top-1 away from the truth, or
/// (without a true label) changed the top-1.
pub fn is_success(r: &Record) -> bool {
    let (Some(c), Some(a)) = (r.clean_top1(), r.attacked_top1()) else {
        return false;
    };
    match (r.target.as_deref(), r.true_label.as_deref()) {
        (Some(t), _) => a == t && c != t,
        (None, Some(y)) => c == y && a != y,
        (None, None) => a != c,
    }
}

fn mix(s: &str, seed: u64) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64 ^ seed, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Up to `per_outcome` successes and as many failures, chosen by a seeded hash of
/// (sample, variant) so the same run always shows the same examples.
pub fn pick(records: &[Record], per_outcome: usize, seed: u64) -> Vec<&Record> {
    let mut ok: Vec<&Record> = records.iter().filter(|r| r.is_ok()).collect();
    ok.sort_by_key(|r| mix(&format!("{}#{}", r.sample_id, r.variant), seed));
    let succ = ok.iter().filter(|r| is_success(r)).take(per_outcome);
    let fail = ok.iter().filter(|r| !is_success(r)).take(per_outcome);
    succ.chain(fail).copied().collect()
}

/// Where a run's images come from.
pub struct ImageSource {
    samples: HashMap<String, Sample>,
    spec: Option<AttackSpec>,
    transform: crate::preprocess::PreprocessCfg,
    seed: u64,
}

impl ImageSource {
    /// Rebuilds the run's inputs from its provenance; `Err` says why images are unavailable.
    pub fn from_run(run: &RunData) -> Result<ImageSource, String> {
        let p = &run.provenance;
        let origin = run.dir.join("provenance.json");
        let (descriptor, _) = DatasetDescriptor::parse(&p.dataset_descriptor, &origin)
            .map_err(|e| format!("dataset descriptor in provenance: {e}"))?;
        let root = match (&p.data_root, descriptor.kind) {
            (Some(r), _) => PathBuf::from(r),
            (None, DatasetKind::Builtin) => PathBuf::new(),
            (None, _) => return Err("the run does not record its data folder".into()),
        };
        let samples = descriptor
            .samples(&root)
            .map_err(|e| format!("dataset images: {e}"))?
            .into_iter()
            .map(|s| (s.id.clone(), s))
            .collect();
        let spec = match &p.attack_path {
            Some(path) => {
                let fonts = crate::attack::fonts::FontBook::global();
                Some(
                    AttackSpec::parse(&p.attack, Path::new(path), fonts)
                        .map_err(|e| format!("attack spec in provenance: {e}"))?,
                )
            }
            None => None,
        };
        Ok(ImageSource {
            samples,
            spec,
            transform: p.transform(),
            seed: p.seed,
        })
    }

    fn load(&self, id: &str) -> Result<RgbImage, String> {
        let s = self
            .samples
            .get(id)
            .ok_or_else(|| format!("{id}: not in the dataset any more"))?;
        crate::dataset::load_rgb(&s.path).map_err(|e| e.to_string())
    }

    /// The clean and attacked model inputs of one record.
    pub fn inputs(&self, r: &Record) -> Result<(RgbImage, RgbImage), String> {
        match &self.spec {
            Some(spec) => {
                let variant = spec
                    .variant(&r.variant)
                    .ok_or_else(|| format!("variant {} not in the spec", r.variant))?;
                let img = self.load(&r.sample_id)?;
                let seed = crate::sweep::image_seed(&r.sample_id, self.seed);
                let m = crate::attack::render_for_model(&img, variant, &self.transform, seed, None);
                Ok((m.clean_input, m.attacked_input))
            }
            None => {
                let clean = self.load(r.clean_id.as_deref().unwrap_or(&r.sample_id))?;
                let attacked = self.load(&r.sample_id)?;
                Ok((
                    crate::preprocess::model_input(&clean, &self.transform),
                    crate::preprocess::model_input(&attacked, &self.transform),
                ))
            }
        }
    }
}

/// PNG bytes of a `THUMB_PX` square thumbnail.
pub fn thumbnail_png(img: &RgbImage) -> Vec<u8> {
    png_bytes(&image::imageops::resize(
        img,
        THUMB_PX,
        THUMB_PX,
        image::imageops::FilterType::Triangle,
    ))
}

/// PNG bytes of an image.
pub fn png_bytes(img: &RgbImage) -> Vec<u8> {
    let mut buf = Cursor::new(Vec::new());
    img.write_to(&mut buf, image::ImageFormat::Png)
        .expect("PNG encoding to memory");
    buf.into_inner()
}

fn top3(top: &[crate::records::Scored]) -> Vec<String> {
    top.iter()
        .take(3)
        .map(|s| format!("{} {:.1}%", s.label, 100.0 * s.prob))
        .collect()
}

/// The report's example grid for a run.
pub fn examples(run: &RunData, per_outcome: usize) -> (Vec<Example>, Option<String>) {
    let picked = pick(&run.records, per_outcome, run.provenance.seed);
    let source = ImageSource::from_run(run);
    let note = source.as_ref().err().cloned();
    let out = picked
        .into_iter()
        .map(|r| {
            let (clean_png, attacked_png) = match source.as_ref().map(|s| s.inputs(r)) {
                Ok(Ok((c, a))) => (Some(thumbnail_png(&c)), Some(thumbnail_png(&a))),
                _ => (None, None),
            };
            let mut caption = format!("{} · {}", r.sample_id, r.variant);
            if let Some(y) = &r.true_label {
                caption.push_str(&format!(" · true: {y}"));
            }
            if let Some(t) = &r.target {
                caption.push_str(&format!(" · target: {t}"));
            }
            Example {
                caption,
                outcome: if is_success(r) { "success" } else { "failure" }.into(),
                clean_png,
                attacked_png,
                clean_top: top3(&r.clean_top5),
                attacked_top: top3(&r.attacked_top5),
            }
        })
        .collect();
    (out, note)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::Scored;

    fn rec(clean: &str, attacked: &str, y: Option<&str>, t: Option<&str>) -> Record {
        let s = |l: &str| Scored {
            label: l.into(),
            prob: 0.5,
        };
        Record {
            sample_id: format!("{clean}-{attacked}"),
            variant: "v".into(),
            true_label: y.map(String::from),
            target: t.map(String::from),
            clean_top5: vec![s(clean)],
            attacked_top5: vec![s(attacked)],
            ..Record::default()
        }
    }

    #[test]
    fn success_follows_the_attack_kind() {
        assert!(is_success(&rec(
            "apple",
            "iPod",
            Some("apple"),
            Some("iPod")
        )));
        assert!(!is_success(&rec(
            "iPod",
            "iPod",
            Some("apple"),
            Some("iPod")
        )));
        assert!(!is_success(&rec(
            "apple",
            "pear",
            Some("apple"),
            Some("iPod")
        )));
        assert!(is_success(&rec("apple", "pear", Some("apple"), None)));
        assert!(!is_success(&rec("pear", "plum", Some("apple"), None)));
        assert!(is_success(&rec("pear", "plum", None, None)));
    }

    #[test]
    fn pick_is_deterministic_and_balanced() {
        let recs: Vec<Record> = (0..20)
            .map(|i| {
                let mut r = if i % 2 == 0 {
                    rec("apple", "iPod", Some("apple"), Some("iPod"))
                } else {
                    rec("apple", "apple", Some("apple"), Some("iPod"))
                };
                r.sample_id = format!("img{i}");
                r
            })
            .collect();
        let a = pick(&recs, 3, 7);
        let b = pick(&recs, 3, 7);
        assert_eq!(a, b);
        assert_eq!(a.iter().filter(|r| is_success(r)).count(), 3);
        assert_eq!(a.len(), 6);
    }
}
