//! Image-encoder throughput of typoclip (random weights at the real shapes), printed as one
//! JSON line per (architecture, batch size). Run through `scripts/bench_encode.sh`, which runs
//! the same measurement in Python open_clip and prints the ratio.
//!
//! `cargo bench --bench encode [-- ARCH...]` (open_clip names: `ViT-B-32` means OpenAI's
//! QuickGELU `ViT-B-32-quickgelu`; names without such a variant, `ViT-B-16-SigLIP` or
//! `convnext_base`, are built as open_clip builds them); `TYPOCLIP_BENCH_SECONDS` sets the time
//! per cell.

use std::time::Instant;

use tch::{Device, Kind, Tensor};
use typoclip::model::{ClipConfig, ClipModel};

fn main() {
    typoclip::model::kernels::retain_freed_memory();
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let archs: Vec<String> = if args.is_empty() {
        vec!["ViT-B-32".into(), "RN50".into()]
    } else {
        args
    };
    let seconds: f64 = std::env::var("TYPOCLIP_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4.0);
    let batches: Vec<i64> = std::env::var("TYPOCLIP_BENCH_BATCHES")
        .ok()
        .map(|s| s.split(',').filter_map(|b| b.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 8, 32]);
    let _guard = tch::no_grad_guard();
    for arch in &archs {
        // OpenAI's architecture (QuickGELU) where open_clip has one, else open_clip's own
        // (SigLIP, ConvNeXt), as the Python side builds it.
        let config = ClipConfig::preset(&format!("{arch}-quickgelu"))
            .or_else(|| ClipConfig::preset(arch))
            .unwrap_or_else(|| panic!("unknown architecture {arch}"));
        let model = ClipModel::random(&config, 0, Device::Cpu).expect("model");
        let r = model.image_resolution();
        for &batch in &batches {
            let images = Tensor::randn([batch, 3, r, r], (Kind::Float, Device::Cpu));
            for _ in 0..2 {
                let _ = model.encode_image(&images);
            }
            let start = Instant::now();
            let mut n = 0i64;
            while start.elapsed().as_secs_f64() < seconds || n < 3 {
                let _ = model.encode_image(&images);
                n += 1;
            }
            let ips = (n * batch) as f64 / start.elapsed().as_secs_f64();
            println!(
                "{{\"impl\": \"typoclip\", \"arch\": \"{arch}\", \"batch\": {batch}, \"images_per_s\": {ips:.2}, \"threads\": {}}}",
                tch::get_num_threads()
            );
        }
    }
}
