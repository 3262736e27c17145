//! Bare image-encoder throughput, the physical limit of a sweep on this machine: random weights
//! of a real architecture, random input batches, no decoding or scoring. Used by
//! `scripts/bench_sweep.sh`; prints one JSON line.
//!
//! `cargo run --release --example forward_throughput -- ViT-B-32 32 320 [cpu|cuda]`
//! (on CUDA the timing synchronises the device after the last batch)

use std::time::Instant;

use tch::{Device, Kind, Tensor};
use typoclip::model::config::ClipConfig;
use typoclip::model::ClipModel;

fn main() {
    typoclip::model::kernels::retain_freed_memory();
    let args: Vec<String> = std::env::args().collect();
    let arch = args.get(1).map(String::as_str).unwrap_or("ViT-B-32");
    let batch: i64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(32);
    let images: i64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(320);
    let device = match args.get(4).map(String::as_str) {
        None | Some("cpu") => Device::Cpu,
        Some("cuda") => Device::Cuda(0),
        Some(other) => panic!("device `{other}` is not cpu or cuda"),
    };
    let config = // OpenAI's architecture (QuickGELU), as the Python side builds it.
        ClipConfig::preset(&format!("{arch}-quickgelu"))
            .unwrap_or_else(|| panic!("unknown architecture {arch}"));
    let model = ClipModel::random(&config, 0, device).expect("model");
    let n_px = model.image_resolution();
    let _guard = tch::no_grad_guard();
    let x = Tensor::randn([batch, 3, n_px, n_px], (Kind::Float, device));
    let sync = || {
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
    };
    let _ = model.encode_image(&x); // warm-up
    sync();
    let batches = (images + batch - 1) / batch;
    let t = Instant::now();
    for _ in 0..batches {
        let _ = model.encode_image(&x);
    }
    sync();
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{{\"arch\":\"{arch}\",\"batch\":{batch},\"images\":{},\"seconds\":{secs:.3},\"images_per_s\":{:.3},\"threads\":{},\"device\":\"{device:?}\"}}",
        batches * batch,
        (batches * batch) as f64 / secs,
        tch::get_num_threads()
    );
}
