//! The shipped dataset descriptors read the real data in `../shared/data` (skipped when absent).

mod common;

use typoclip::dataset::descriptor::{file_list_hash, DatasetDescriptor};

fn load(name: &str) -> Option<Vec<typoclip::dataset::descriptor::Sample>> {
    if common::shared_data().is_none() {
        eprintln!("SKIP: ../shared/data is absent");
        return None;
    }
    let (d, root) = DatasetDescriptor::load(&common::repo().join("datasets").join(name)).unwrap();
    Some(d.samples(&root).unwrap())
}

#[test]
fn imagenet_sample_lists_1000_labelled_photos() {
    let Some(s) = load("imagenet-sample.toml") else {
        return;
    };
    assert_eq!(s.len(), 1000);
    assert!(s.iter().all(|x| x.wnid.is_some() && x.label.is_some()));
    assert_eq!(
        file_list_hash(&s),
        file_list_hash(&load("imagenet-sample.toml").unwrap())
    );
}

#[test]
fn distill_in_the_wild_pairs_blank_controls() {
    let Some(s) = load("distill-in-the-wild.toml") else {
        return;
    };
    assert_eq!(s.len(), 171 + 56);
    let blanks = s.iter().filter(|x| x.attack_text.is_none()).count();
    assert!(blanks >= 9, "{blanks} blank controls");
    let apple_ipod = s
        .iter()
        .find(|x| x.id.ends_with("apple-ipod.jpg"))
        .expect("apple-ipod.jpg");
    assert_eq!(apple_ipod.label.as_deref(), Some("apple"));
}

#[test]
fn scam_has_three_conditions_per_image() {
    let Some(s) = load("scam.toml") else { return };
    assert_eq!(s.len(), 3 * 1162);
    for cond in ["NoSCAM", "SCAM", "SynthSCAM"] {
        assert_eq!(
            s.iter()
                .filter(|x| x.condition.as_deref() == Some(cond))
                .count(),
            1162
        );
    }
    assert!(s
        .iter()
        .filter(|x| x.condition.as_deref() == Some("NoSCAM"))
        .all(|x| x.attack_text.is_none()));
}

#[test]
fn missing_root_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("d.toml");
    std::fs::write(
        &p,
        "name = \"gone\"\nkind = \"image_folder\"\npath = \"nowhere\"\n",
    )
    .unwrap();
    let (d, root) = DatasetDescriptor::load(&p).unwrap();
    let e = d.samples(&root).unwrap_err().to_string();
    assert!(e.contains("nowhere") && e.contains("gone"), "{e}");
}
