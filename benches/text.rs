//! Text-encoder throughput for building zero-shot classifiers: typoclip's length-sorted,
//! unpadded batches vs the padded-to-77 computation, on random ViT-B/32 weights, over the
//! 80 ImageNet templates × N classes. Prints JSON lines; `scripts/bench_text.sh` adds Python
//! open_clip and the ratio. `TYPOCLIP_BENCH_CLASSES` sets N (default 10).

use std::time::Instant;

use tch::Device;
use typoclip::model::{ClipConfig, ClipModel};
use typoclip::tokenizer::ClipTokenizer;
use typoclip::zeroshot::{encode_prompts, encode_prompts_padded, LabelSet, TemplateSet};

fn main() {
    typoclip::model::kernels::retain_freed_memory();
    let classes: usize = std::env::var("TYPOCLIP_BENCH_CLASSES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let _guard = tch::no_grad_guard();
    let model = ClipModel::random(
        &ClipConfig::preset("ViT-B-32-quickgelu").unwrap(),
        0,
        Device::Cpu,
    )
    .unwrap();
    let tok = ClipTokenizer::new();
    let templates = TemplateSet::builtin("imagenet80").unwrap();
    let labels = LabelSet::imagenet();
    let prompts: Vec<String> = labels
        .classes
        .iter()
        .take(classes)
        .flat_map(|c| templates.fill(&c.name))
        .collect();
    let _ = encode_prompts(&model, &tok, &prompts[..32], 256).unwrap();
    let start = Instant::now();
    let fast = encode_prompts(&model, &tok, &prompts, 256).unwrap();
    let secs = start.elapsed().as_secs_f64();
    println!("{{\"impl\": \"typoclip\", \"mode\": \"sorted\", \"prompts\": {}, \"prompts_per_s\": {:.2}}}", prompts.len(), prompts.len() as f64 / secs);
    let check = 64.min(prompts.len());
    let start = Instant::now();
    let padded = encode_prompts_padded(&model, &tok, &prompts[..check], 64).unwrap();
    let secs = start.elapsed().as_secs_f64();
    let diff = f64::try_from((fast.narrow(0, 0, check as i64) - &padded).abs().max()).unwrap();
    println!("{{\"impl\": \"typoclip\", \"mode\": \"padded\", \"prompts\": {check}, \"prompts_per_s\": {:.2}, \"max_abs_diff_vs_sorted\": {diff:.3e}}}", check as f64 / secs);
}
