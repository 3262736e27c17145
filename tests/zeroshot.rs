//! Zero-shot classification against open_clip's `build_zero_shot_classifier`, the fast
//! (length-sorted, unpadded) text encoding against the padded one, and the text cache.

mod common;

use common::{fixtures, max_abs_diff, read_tensors};
use tch::Device;
use typoclip::model::load::load_checkpoint;
use typoclip::tokenizer::ClipTokenizer;
use typoclip::zeroshot::{
    encode_prompts, encode_prompts_padded, CacheOutcome, LabelSet, TemplateSet, TextCache,
    ZeroShotClassifier,
};

fn ten_classes() -> LabelSet {
    let inet = LabelSet::imagenet();
    let names: Vec<&str> = (0..1000)
        .step_by(100)
        .map(|i| inet.classes[i].name.as_str())
        .collect();
    LabelSet::parse_list("imagenet/10", &names.join(",")).unwrap()
}

#[test]
fn classifier_matches_open_clip_with_80_templates() {
    let _g = tch::no_grad_guard();
    for name in ["tiny-vit", "tiny-rn"] {
        let io = read_tensors(&fixtures().join(format!("{name}.io.safetensors")));
        let m = load_checkpoint(
            &fixtures().join(format!("{name}.state_dict.pt")),
            None,
            Device::Cpu,
        )
        .unwrap()
        .model;
        let tok = ClipTokenizer::new();
        let clf = ZeroShotClassifier::build(
            &m,
            &tok,
            ten_classes(),
            TemplateSet::builtin("imagenet80").unwrap(),
        )
        .unwrap();
        let dw = max_abs_diff(&clf.weights, &io["zs_weights"]);
        let logits = clf.logits(&m.encode_image(&io["images"]));
        let dl = max_abs_diff(&logits, &io["zs_logits"]);
        eprintln!("{name}: classifier weights {dw:.2e}, logits {dl:.2e}");
        assert!(dw <= 1e-4, "{name}: class embeddings differ by {dw}");
        assert!(dl <= 1e-3, "{name}: logits differ by {dl}");
        assert!(logits
            .argmax(-1, false)
            .equal(&io["zs_logits"].argmax(-1, false)));
    }
}

#[test]
fn length_sorted_encoding_equals_padded() {
    let _g = tch::no_grad_guard();
    let m = load_checkpoint(
        &fixtures().join("tiny-vit.open_clip.safetensors"),
        None,
        Device::Cpu,
    )
    .unwrap()
    .model;
    let tok = ClipTokenizer::new();
    let prompts: Vec<String> = TemplateSet::builtin("imagenet80")
        .unwrap()
        .fill("great white shark")
        .into_iter()
        .chain(["iPod".to_string(), "x ".repeat(120)])
        .collect();
    let fast = encode_prompts(&m, &tok, &prompts, 16).unwrap();
    let padded = encode_prompts_padded(&m, &tok, &prompts, 16).unwrap();
    let d = max_abs_diff(&fast, &padded);
    assert!(d <= 1e-4, "differ by {d}");
}

#[test]
fn text_cache_hit_miss_and_corruption() {
    let _g = tch::no_grad_guard();
    let dir = tempfile::tempdir().unwrap();
    let cache = TextCache::new(dir.path());
    let m = load_checkpoint(
        &fixtures().join("tiny-rn.open_clip.safetensors"),
        None,
        Device::Cpu,
    )
    .unwrap()
    .model;
    let tok = ClipTokenizer::new();
    let labels = LabelSet::parse_list("l", "apple,iPod,piggy bank").unwrap();
    let templates = TemplateSet::builtin("openai7").unwrap();
    let (a, o1) = cache
        .load_or_build("model-a", &m, &tok, labels.clone(), templates.clone())
        .unwrap();
    assert_eq!(o1, CacheOutcome::Miss);
    let (b, o2) = cache
        .load_or_build("model-a", &m, &tok, labels.clone(), templates.clone())
        .unwrap();
    assert_eq!(o2, CacheOutcome::Hit);
    assert!(a.weights.equal(&b.weights));
    // Another model id is another entry.
    let (_, o3) = cache
        .load_or_build("model-b", &m, &tok, labels.clone(), templates.clone())
        .unwrap();
    assert_eq!(o3, CacheOutcome::Miss);
    // Corrupt the stored tensor: detected and rebuilt.
    let key = TextCache::key("model-a", &templates, &labels);
    let data = dir.path().join(format!("{key}.safetensors"));
    let mut bytes = std::fs::read(&data).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0x55;
    std::fs::write(&data, &bytes).unwrap();
    let (c, o4) = cache
        .load_or_build("model-a", &m, &tok, labels.clone(), templates.clone())
        .unwrap();
    assert_eq!(o4, CacheOutcome::Rebuilt);
    assert!(c.weights.equal(&a.weights));
    // Truncated file: rebuilt too.
    std::fs::write(&data, &bytes[..n / 2]).unwrap();
    let (_, o5) = cache
        .load_or_build("model-a", &m, &tok, labels, templates)
        .unwrap();
    assert_eq!(o5, CacheOutcome::Rebuilt);
}

#[test]
fn imagenet_sample_wnids_map_to_classes() {
    let Some(data) = common::shared_data() else {
        eprintln!("SKIP: ../shared/data is absent");
        return;
    };
    let inet = LabelSet::imagenet();
    let mut wnids: Vec<String> = std::fs::read_dir(data.join("imagenet-sample"))
        .unwrap()
        .filter_map(|e| {
            e.ok()?
                .file_name()
                .to_str()?
                .split('_')
                .next()
                .map(str::to_string)
        })
        .collect();
    wnids.sort();
    wnids.dedup();
    assert_eq!(wnids.len(), 200);
    let det = typoclip::zeroshot::LabelSet::resolve(
        common::repo()
            .join("datasets/labels/ilsvrc-det200.tsv")
            .to_str()
            .unwrap(),
    )
    .unwrap();
    let mut in_cls = 0;
    for w in &wnids {
        assert!(
            det.index_of_wnid(w).is_some(),
            "{w} has no class in ilsvrc-det200"
        );
        in_cls += inet.index_of_wnid(w).is_some() as usize;
    }
    eprintln!("{in_cls} of 200 sample wnids are ImageNet-1k classes");
    assert!(in_cls >= 100);
}

/// A model with a logit bias scores with a sigmoid per class (SigLIP's zero-shot formula):
/// `sigmoid(exp(logit_scale) · cos + bias)` equals open_clip's logits through a sigmoid.
#[test]
fn sigmoid_scoring_follows_the_logit_bias() {
    let _g = tch::no_grad_guard();
    let io = read_tensors(&fixtures().join("tiny-options.io.safetensors"));
    let m = load_checkpoint(
        &fixtures().join("tiny-options.open_clip.safetensors"),
        None,
        Device::Cpu,
    )
    .unwrap()
    .model;
    let d = common::sigmoid_scores_match(&m, &io);
    assert!(d <= 1e-5, "sigmoid probabilities differ by {d}");
}
