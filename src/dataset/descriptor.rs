//! Dataset descriptors (`datasets/*.toml`) and the sample lists they describe.
//!
//! Kinds: `image_folder` (class = sub-folder name, or the wnid prefix of flat file names
//! `n<wnid>_…`), `csv` (`path,label[,target]`), `distill_in_the_wild` (`<object>-<text>.jpg`,
//! `blank` = the clean control: physical attacks already in the photo), `scam` (`index.json`
//! with NoSCAM / SCAM / SynthSCAM variants paired by image id), `rta100` (`label=X_text=Y`
//! file names), `builtin` (the default images) and `synthetic` (scenes of the toy's world,
//! rendered once from `seed` and `size`, see [`super::synthetic`]). Listing is cheap (paths only); images are
//! decoded later, one by one.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The kinds of dataset typoclip reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DatasetKind {
    /// Class folders, or flat `n<wnid>_…` files.
    ImageFolder,
    /// A CSV file `path,label[,target]`.
    Csv,
    /// Goh et al.'s photos `<object>-<written text>.jpg`.
    DistillInTheWild,
    /// SCAM / NoSCAM / SynthSCAM with `index.json`.
    Scam,
    /// RTA-100 style names `label=X_text=Y.ext`.
    Rta100,
    /// The built-in default images.
    Builtin,
    /// Scenes of the positive control's synthetic world (`seed`, `size`).
    Synthetic,
}

/// A dataset descriptor file.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetDescriptor {
    /// Short name.
    pub name: String,
    /// Layout.
    pub kind: DatasetKind,
    /// Root folder (or CSV file), relative to the descriptor's folder unless absolute.
    #[serde(default)]
    pub path: Option<String>,
    /// Label set for zero-shot evaluation: `imagenet`, a label file relative to the descriptor,
    /// or `dataset` (the classes found in the data).
    #[serde(default = "default_labels")]
    pub labels: String,
    /// One line on what this is.
    #[serde(default)]
    pub description: Option<String>,
    /// Licence of the images.
    #[serde(default)]
    pub licence: Option<String>,
    /// `synthetic`: the seed of the scenes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// `synthetic`: how many scenes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<usize>,
}

fn default_labels() -> String {
    "dataset".into()
}

/// One image of a dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// Stable id (path relative to the root).
    pub id: String,
    /// The file.
    pub path: PathBuf,
    /// True class name, when known.
    pub label: Option<String>,
    /// WordNet id, when known.
    pub wnid: Option<String>,
    /// For physical attacks: the word written in the photo (None for clean controls).
    pub attack_text: Option<String>,
    /// For paired physical attacks: the condition (`SCAM`, `NoSCAM`, `SynthSCAM`, `blank`, …).
    pub condition: Option<String>,
    /// For paired physical attacks: the id shared by the photos of one scene.
    pub pair: Option<String>,
}

/// Errors reading a dataset; each names the file.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct DatasetError {
    /// File or folder.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

fn derr(path: &Path, message: impl Into<String>) -> DatasetError {
    DatasetError {
        path: path.display().to_string(),
        message: message.into(),
    }
}

const IMAGE_EXTS: [&str; 7] = ["jpg", "jpeg", "png", "webp", "bmp", "gif", "tif"];

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .map(|e| IMAGE_EXTS.contains(&e.to_ascii_lowercase().as_str()))
        .unwrap_or(false)
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, DatasetError> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| derr(dir, format!("cannot list: {e}")))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    v.sort();
    Ok(v)
}

fn rel_id(root: &Path, p: &Path) -> String {
    p.strip_prefix(root)
        .unwrap_or(p)
        .to_string_lossy()
        .into_owned()
}

impl DatasetDescriptor {
    /// Reads and validates a descriptor; errors name the file (and line:col for TOML errors).
    pub fn load(path: &Path) -> Result<(DatasetDescriptor, PathBuf), DatasetError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| derr(path, format!("cannot read: {e}")))?;
        Self::parse(&text, path)
    }

    /// Validates descriptor text; `path` names it in errors and anchors a relative data folder.
    pub fn parse(text: &str, path: &Path) -> Result<(DatasetDescriptor, PathBuf), DatasetError> {
        let d: DatasetDescriptor = toml::from_str(text).map_err(|e| {
            let (line, col) = e
                .span()
                .map(|s| {
                    let before = &text[..s.start.min(text.len())];
                    (
                        before.matches('\n').count() + 1,
                        s.start - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1,
                    )
                })
                .unwrap_or((1, 1));
            DatasetError {
                path: format!("{}:{line}:{col}", path.display()),
                message: e.message().to_string(),
            }
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let root = match (&d.path, d.kind) {
            (Some(p), _) => {
                let p = PathBuf::from(p);
                if p.is_absolute() {
                    p
                } else {
                    base.join(p)
                }
            }
            (None, DatasetKind::Builtin) => PathBuf::new(),
            (None, DatasetKind::Synthetic) => super::synthetic::default_root(
                &d.name,
                d.seed.unwrap_or_default(),
                d.size.unwrap_or_default(),
            ),
            (None, _) => return Err(derr(path, "path: required for this kind")),
        };
        match (d.kind, d.seed, d.size) {
            (DatasetKind::Synthetic, Some(_), Some(n)) if n > 0 => {}
            (DatasetKind::Synthetic, _, _) => {
                return Err(derr(
                    path,
                    "seed, size: required (size ≥ 1) for kind = \"synthetic\"",
                ))
            }
            (_, None, None) => {}
            _ => return Err(derr(path, "seed, size: only for kind = \"synthetic\"")),
        }
        Ok((d, root))
    }

    /// Lists the samples under `root`, sorted by id.
    pub fn samples(&self, root: &Path) -> Result<Vec<Sample>, DatasetError> {
        if self.kind == DatasetKind::Synthetic {
            super::synthetic::ensure_rendered(
                root,
                self.seed.unwrap_or_default(),
                self.size.unwrap_or_default(),
            )?;
        }
        if self.kind != DatasetKind::Builtin && !root.exists() {
            return Err(derr(
                root,
                format!(
                    "dataset `{}` not found (give --data-root or fix `path`)",
                    self.name
                ),
            ));
        }
        let mut out = match self.kind {
            DatasetKind::ImageFolder | DatasetKind::Synthetic => image_folder(root)?,
            DatasetKind::Csv => csv_list(root)?,
            DatasetKind::DistillInTheWild => distill(root)?,
            DatasetKind::Scam => scam(root)?,
            DatasetKind::Rta100 => rta100(root)?,
            DatasetKind::Builtin => crate::dataset::builtin_images()
                .map_err(|e| DatasetError {
                    path: e.path,
                    message: e.message,
                })?
                .into_iter()
                .map(|b| Sample {
                    id: b
                        .path
                        .file_name()
                        .map(|f| f.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    path: b.path,
                    label: Some(b.label),
                    wnid: None,
                    attack_text: None,
                    condition: None,
                    pair: None,
                })
                .collect(),
        };
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }
}

/// What a plain folder passed as `--dataset` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FolderShape {
    /// Class sub-folders (torchvision's `ImageFolder`), possibly with loose images beside them.
    ClassFolders,
    /// Images only, none named `n<wnid>_…`: no true labels.
    Unlabelled,
    /// Images only, named `n<wnid>_<id>_<label>.ext`.
    WnidFiles,
}

impl DatasetDescriptor {
    /// A plain folder as a dataset: class sub-folders become an `image_folder` whose label set
    /// is the folder's classes; a flat folder of images is unlabelled (labelled only by
    /// `n<wnid>_…` file names), scored against ImageNet's classes unless `--labels` says
    /// otherwise. Returns the descriptor, its root and the folder's shape; an empty folder, one
    /// with no images and a class folder with none are one-line errors naming the folder.
    pub fn from_folder(
        dir: &Path,
    ) -> Result<(DatasetDescriptor, PathBuf, FolderShape), DatasetError> {
        let samples = image_folder(dir)?;
        if samples.is_empty() {
            return Err(derr(
                dir,
                format!("no images in this folder ({})", image_exts()),
            ));
        }
        let shape = if sorted_entries(dir)?.iter().any(|e| e.is_dir()) {
            FolderShape::ClassFolders
        } else if samples.iter().all(|s| s.label.is_none()) {
            FolderShape::Unlabelled
        } else {
            FolderShape::WnidFiles
        };
        let name = std::path::absolute(dir)
            .unwrap_or(dir.to_path_buf())
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "folder".into());
        let descriptor = DatasetDescriptor {
            name,
            kind: DatasetKind::ImageFolder,
            path: Some(dir.display().to_string()),
            labels: match shape {
                FolderShape::Unlabelled => "imagenet".into(),
                _ => "dataset".into(),
            },
            description: Some(match shape {
                FolderShape::ClassFolders => "a folder of class folders".into(),
                FolderShape::Unlabelled => "a folder of unlabelled images".into(),
                FolderShape::WnidFiles => "a folder of n<wnid>_<id>_<label> images".into(),
            }),
            licence: None,
            seed: None,
            size: None,
        };
        Ok((descriptor, dir.to_path_buf(), shape))
    }

    /// The descriptor as TOML (what provenance records for a folder given as `--dataset`).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a descriptor serialises")
    }
}

/// A dataset as a command opens it: from a descriptor file or a plain folder.
#[derive(Debug, Clone)]
pub struct OpenedDataset {
    /// The descriptor (synthesised for a folder).
    pub descriptor: DatasetDescriptor,
    /// The data folder (or CSV file).
    pub root: PathBuf,
    /// The descriptor's text, as provenance records it.
    pub text: String,
    /// Where a relative label file named by the descriptor is looked up.
    pub label_base: PathBuf,
    /// For a plain folder: what it holds.
    pub shape: Option<FolderShape>,
}

impl DatasetDescriptor {
    /// Opens `path`: a descriptor file (`datasets/*.toml`) or a plain folder of images or class
    /// folders ([`DatasetDescriptor::from_folder`]).
    pub fn open(path: &Path) -> Result<OpenedDataset, DatasetError> {
        if path.is_dir() {
            let (descriptor, root, shape) = Self::from_folder(path)?;
            return Ok(OpenedDataset {
                text: descriptor.to_toml(),
                descriptor,
                root,
                label_base: PathBuf::from("."),
                shape: Some(shape),
            });
        }
        let text =
            std::fs::read_to_string(path).map_err(|e| derr(path, format!("cannot read: {e}")))?;
        let (descriptor, root) = Self::parse(&text, path)?;
        Ok(OpenedDataset {
            descriptor,
            root,
            text,
            label_base: path.parent().unwrap_or(Path::new(".")).to_path_buf(),
            shape: None,
        })
    }

    /// The built-in default images (`datasets/builtin-images.toml`, compiled in).
    pub fn builtin() -> OpenedDataset {
        const TEXT: &str = include_str!("../../datasets/builtin-images.toml");
        let (descriptor, root) =
            Self::parse(TEXT, Path::new("datasets/builtin-images.toml")).expect("valid descriptor");
        OpenedDataset {
            descriptor,
            root,
            text: TEXT.into(),
            label_base: PathBuf::from("."),
            shape: None,
        }
    }
}

/// sha256 over the sample ids, in order: identifies the file list in provenance.
pub fn file_list_hash(samples: &[Sample]) -> String {
    let mut h = Sha256::new();
    for s in samples {
        h.update(s.id.as_bytes());
        h.update(b"\n");
    }
    hex::encode(h.finalize())
}

/// `n` followed by digits only: a WordNet id (`n01443537`).
fn is_wnid(s: &str) -> bool {
    s.len() > 1 && s.starts_with('n') && s[1..].chars().all(|c| c.is_ascii_digit())
}

/// The image extensions a folder dataset reads, for error messages.
fn image_exts() -> String {
    IMAGE_EXTS.map(|e| format!(".{e}")).join(" ")
}

fn image_folder(root: &Path) -> Result<Vec<Sample>, DatasetError> {
    let mut out = Vec::new();
    let entries = sorted_entries(root)?;
    if entries.is_empty() {
        return Err(derr(root, "empty folder: no images and no class folders"));
    }
    let mut imagenet: Option<crate::zeroshot::LabelSet> = None;
    for entry in entries {
        if entry.is_dir() {
            let class = entry.file_name().unwrap().to_string_lossy().into_owned();
            let wnid = is_wnid(&class).then(|| class.clone());
            // A WordNet-id folder is named by its ImageNet class where it is one of the 1000.
            let label = match &wnid {
                Some(w) => {
                    let names = imagenet.get_or_insert_with(crate::zeroshot::LabelSet::imagenet);
                    names
                        .index_of_wnid(w)
                        .map(|i| names.classes[i].name.clone())
                }
                None => Some(class.clone()),
            };
            let files: Vec<PathBuf> = sorted_entries(&entry)?
                .into_iter()
                .filter(|p| is_image(p))
                .collect();
            if files.is_empty() {
                return Err(derr(
                    &entry,
                    format!("class folder `{class}` has no images ({})", image_exts()),
                ));
            }
            for f in files {
                out.push(Sample {
                    id: rel_id(root, &f),
                    path: f,
                    label: label.clone(),
                    wnid: wnid.clone(),
                    attack_text: None,
                    condition: None,
                    pair: None,
                });
            }
        } else if is_image(&entry) {
            // Flat `n<wnid>_<id>_<label>.ext` names carry their class; other loose images are
            // unlabelled.
            let stem = entry.file_stem().unwrap().to_string_lossy().into_owned();
            let mut parts = stem.splitn(3, '_');
            let first = parts.next().unwrap_or("");
            let wnid = is_wnid(first).then(|| first.to_string());
            let label = wnid
                .as_ref()
                .and_then(|_| parts.nth(1).map(|l| l.replace('_', " ")));
            out.push(Sample {
                id: rel_id(root, &entry),
                path: entry,
                label,
                wnid,
                attack_text: None,
                condition: None,
                pair: None,
            });
        }
    }
    Ok(out)
}

fn csv_list(file: &Path) -> Result<Vec<Sample>, DatasetError> {
    let base = file.parent().unwrap_or(Path::new("."));
    let mut rdr = csv::Reader::from_path(file).map_err(|e| derr(file, e.to_string()))?;
    let headers = rdr
        .headers()
        .map_err(|e| derr(file, e.to_string()))?
        .clone();
    let col = |c: &str| headers.iter().position(|h| h.trim() == c);
    let pcol = col("path").ok_or_else(|| derr(file, "line 1: path: no `path` column"))?;
    let lcol = col("label");
    let tcol = col("target");
    let mut out = Vec::new();
    for (i, rec) in rdr.records().enumerate() {
        let rec = rec.map_err(|e| derr(file, format!("line {}: {e}", i + 2)))?;
        let rel = rec.get(pcol).unwrap_or("").trim();
        if rel.is_empty() {
            return Err(derr(file, format!("line {}: path: empty", i + 2)));
        }
        let field = |c: Option<usize>| {
            c.and_then(|c| rec.get(c))
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        };
        out.push(Sample {
            id: rel.to_string(),
            path: base.join(rel),
            label: field(lcol),
            wnid: None,
            attack_text: field(tcol),
            condition: None,
            pair: None,
        });
    }
    Ok(out)
}

fn distill(root: &Path) -> Result<Vec<Sample>, DatasetError> {
    let mut files = Vec::new();
    for e in sorted_entries(root)? {
        if e.is_dir() {
            files.extend(sorted_entries(&e)?.into_iter().filter(|p| is_image(p)));
        } else if is_image(&e) {
            files.push(e);
        }
    }
    Ok(files
        .into_iter()
        .filter_map(|f| {
            let stem = f.file_stem()?.to_string_lossy().into_owned();
            let (object, text) = stem.split_once('-')?;
            let group = f
                .parent()
                .and_then(|p| p.file_name())
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            Some(Sample {
                id: rel_id(root, &f),
                label: Some(object.to_string()),
                wnid: None,
                attack_text: (text != "blank").then(|| text.to_string()),
                condition: Some(if text == "blank" {
                    "blank".into()
                } else {
                    "attacked".into()
                }),
                pair: Some(format!("{group}/{object}")),
                path: f,
            })
        })
        .collect())
}

#[derive(Deserialize)]
struct ScamEntry {
    image_id: String,
    object_label: String,
    attack_word: String,
}

fn scam(root: &Path) -> Result<Vec<Sample>, DatasetError> {
    let index = root.join("index.json");
    let text =
        std::fs::read_to_string(&index).map_err(|e| derr(&index, format!("cannot read: {e}")))?;
    let entries: Vec<ScamEntry> =
        serde_json::from_str(&text).map_err(|e| derr(&index, format!("line {}: {e}", e.line())))?;
    let mut out = Vec::new();
    for e in entries {
        for cond in ["NoSCAM", "SCAM", "SynthSCAM"] {
            let dir = root.join(cond);
            let suffix = e.image_id.strip_prefix("SCAM_").unwrap_or(&e.image_id);
            let candidates = [
                format!("{cond}_{suffix}.webp"),
                format!("{}.webp", e.image_id),
                format!("{cond}_{suffix}.png"),
                format!("{cond}_{suffix}.jpg"),
            ];
            let Some(path) = candidates.iter().map(|c| dir.join(c)).find(|p| p.exists()) else {
                continue;
            };
            out.push(Sample {
                id: rel_id(root, &path),
                path,
                label: Some(e.object_label.clone()),
                wnid: None,
                attack_text: (cond != "NoSCAM").then(|| e.attack_word.clone()),
                condition: Some(cond.into()),
                pair: Some(e.image_id.clone()),
            });
        }
    }
    Ok(out)
}

/// SCAM's stated post-it area (`postit_area_pct`, percent of the photo) per `image_id`, from
/// the dataset's `index.json`; entries without it are left out.
pub fn scam_postit_areas(
    root: &Path,
) -> Result<std::collections::BTreeMap<String, f64>, DatasetError> {
    #[derive(Deserialize)]
    struct Entry {
        image_id: String,
        postit_area_pct: Option<f64>,
    }
    let index = root.join("index.json");
    let text =
        std::fs::read_to_string(&index).map_err(|e| derr(&index, format!("cannot read: {e}")))?;
    let entries: Vec<Entry> =
        serde_json::from_str(&text).map_err(|e| derr(&index, format!("line {}: {e}", e.line())))?;
    Ok(entries
        .into_iter()
        .filter_map(|e| e.postit_area_pct.map(|a| (e.image_id, a)))
        .collect())
}

fn rta100(root: &Path) -> Result<Vec<Sample>, DatasetError> {
    Ok(sorted_entries(root)?
        .into_iter()
        .filter(|p| is_image(p))
        .filter_map(|f| {
            let stem = f.file_stem()?.to_string_lossy().into_owned();
            let rest = stem.strip_prefix("label=")?;
            let (label, text) = rest.split_once("_text=")?;
            Some(Sample {
                id: rel_id(root, &f),
                path: f.clone(),
                label: Some(label.replace('_', " ")),
                wnid: None,
                attack_text: Some(text.replace('_', " ")),
                condition: Some("attacked".into()),
                pair: None,
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_wnid_files_and_class_folders() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("n01443537_2625_goldfish.jpg"), b"x").unwrap();
        std::fs::create_dir(dir.path().join("cat")).unwrap();
        std::fs::write(dir.path().join("cat/a.png"), b"x").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"x").unwrap();
        let s = image_folder(dir.path()).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].label.as_deref(), Some("cat"));
        assert_eq!(s[1].wnid.as_deref(), Some("n01443537"));
        assert_eq!(s[1].label.as_deref(), Some("goldfish"));
    }

    #[test]
    fn distill_names_and_rta_names() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["apple-blank.jpg", "apple-iPod.jpg"] {
            std::fs::write(dir.path().join(f), b"x").unwrap();
        }
        let s = distill(dir.path()).unwrap();
        assert_eq!(s[0].attack_text, None);
        assert_eq!(s[1].attack_text.as_deref(), Some("iPod"));
        assert_eq!(s[0].pair, s[1].pair);
        std::fs::write(dir.path().join("label=dog_text=cat.png"), b"x").unwrap();
        let r = rta100(dir.path()).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(
            (r[0].label.as_deref(), r[0].attack_text.as_deref()),
            (Some("dog"), Some("cat"))
        );
    }

    #[test]
    fn bad_descriptor_names_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.toml");
        std::fs::write(&p, "name = \"x\"\nkind = \"image_folder\"\npaths = \"y\"\n").unwrap();
        let e = DatasetDescriptor::load(&p).unwrap_err().to_string();
        assert!(e.contains("d.toml:3:1"), "{e}");
        assert!(e.contains("paths"), "{e}");
    }

    #[test]
    fn plain_folders_of_both_shapes() {
        let dir = tempfile::tempdir().unwrap();
        // Class folders, one named by a WordNet id of ImageNet-1k (goldfish).
        let classes = dir.path().join("classes");
        for (class, files) in [("cat", 2), ("n01443537", 1)] {
            std::fs::create_dir_all(classes.join(class)).unwrap();
            for k in 0..files {
                std::fs::write(classes.join(class).join(format!("{k}.jpg")), b"x").unwrap();
            }
        }
        let o = DatasetDescriptor::open(&classes).unwrap();
        assert_eq!(o.shape, Some(FolderShape::ClassFolders));
        assert_eq!(o.descriptor.labels, "dataset");
        assert_eq!(o.descriptor.name, "classes");
        let s = o.descriptor.samples(&o.root).unwrap();
        let labels: Vec<_> = s.iter().map(|s| s.label.as_deref().unwrap()).collect();
        assert_eq!(labels, ["cat", "cat", "goldfish"]);
        assert_eq!(s[2].wnid.as_deref(), Some("n01443537"));
        // The synthesised descriptor is what provenance records, and it parses back.
        let (back, _) = DatasetDescriptor::parse(&o.text, &classes.join("x.toml")).unwrap();
        assert_eq!(back.kind, DatasetKind::ImageFolder);

        // A flat folder: unlabelled, scored against ImageNet; `my_photo_1.jpg` is not a class.
        let flat = dir.path().join("flat");
        std::fs::create_dir_all(&flat).unwrap();
        for f in ["a.png", "my_photo_1.jpg", "notes.txt"] {
            std::fs::write(flat.join(f), b"x").unwrap();
        }
        let o = DatasetDescriptor::open(&flat).unwrap();
        assert_eq!(o.shape, Some(FolderShape::Unlabelled));
        assert_eq!(o.descriptor.labels, "imagenet");
        let s = o.descriptor.samples(&o.root).unwrap();
        assert_eq!(s.len(), 2);
        assert!(s.iter().all(|s| s.label.is_none()));

        // Flat n<wnid>_<id>_<label> files carry their class.
        let wnid = dir.path().join("wnid");
        std::fs::create_dir_all(&wnid).unwrap();
        std::fs::write(wnid.join("n01443537_2625_goldfish.jpg"), b"x").unwrap();
        let o = DatasetDescriptor::open(&wnid).unwrap();
        assert_eq!(o.shape, Some(FolderShape::WnidFiles));
        assert_eq!(o.descriptor.labels, "dataset");
    }

    #[test]
    fn plain_folder_errors_are_one_line_naming_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        let e = DatasetDescriptor::open(&empty).unwrap_err().to_string();
        assert!(
            e.starts_with(&empty.display().to_string()) && e.contains("empty folder"),
            "{e}"
        );

        let no_images = dir.path().join("docs");
        std::fs::create_dir_all(&no_images).unwrap();
        std::fs::write(no_images.join("readme.txt"), b"x").unwrap();
        let e = DatasetDescriptor::open(&no_images).unwrap_err().to_string();
        assert!(
            e.contains("no images in this folder") && e.contains(".jpg"),
            "{e}"
        );

        let bare_class = dir.path().join("classes");
        std::fs::create_dir_all(bare_class.join("dog")).unwrap();
        std::fs::create_dir_all(bare_class.join("cat")).unwrap();
        std::fs::write(bare_class.join("dog/1.jpg"), b"x").unwrap();
        std::fs::write(bare_class.join("cat/notes.txt"), b"x").unwrap();
        let e = DatasetDescriptor::open(&bare_class)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&bare_class.join("cat").display().to_string())
                && e.contains("class folder `cat` has no images"),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
    }
}
