//! Text-detector throughput: PP-OCRv4's detector network (and the whole `detect`: resize,
//! network, DB post-processing) on real photos — Distill's 322×322 labelled photos and SCAM's
//! 384×384 post-it photos, as the detector prepares them. criterion measures it;
//! `scripts/bench_detect.sh` runs this and onnxruntime on the same prepared inputs with the
//! same thread count (`TYPOCLIP_BENCH_THREADS`, default 1) and prints the ratio.
//! Skips with a message when the model or the photos are absent.

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use typoclip::ocr::{DetectorSettings, TextDetector};

/// The benchmark photos (also what scripts/bench_detect.sh hands onnxruntime).
pub fn photos() -> Vec<PathBuf> {
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data");
    [
        "distill-in-the-wild/in-the-wild-2/apple-ipod.jpg",
        "distill-in-the-wild/in-the-wild-2/mug-dollars.jpg",
        "scam-preview/SCAM/SCAM_img_0001.webp",
        "scam-preview/SCAM/SCAM_img_0002.webp",
    ]
    .iter()
    .map(|p| data.join(p))
    .collect()
}

fn bench(c: &mut Criterion) {
    let model = typoclip::ocr::model_path();
    let photos = photos();
    if !model.is_file() || !photos.iter().all(|p| p.is_file()) {
        eprintln!("skipped: the detector model or ../shared/data is absent");
        return;
    }
    let threads: i32 = std::env::var("TYPOCLIP_BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    typoclip::model::kernels::retain_freed_memory();
    tch::set_num_threads(threads);
    let _guard = tch::no_grad_guard();
    let det = TextDetector::load(&model, DetectorSettings::default(), tch::Device::Cpu).unwrap();
    let images: Vec<_> = photos
        .iter()
        .map(|p| typoclip::dataset::load_rgb(p).unwrap())
        .collect();
    let inputs: Vec<_> = images.iter().map(|i| det.input(i)).collect();
    if let Ok(dir) = std::env::var("TYPOCLIP_BENCH_INPUTS") {
        // Hand the prepared inputs to the onnxruntime side.
        for (k, x) in inputs.iter().enumerate() {
            std::fs::write(
                PathBuf::from(&dir).join(format!("in{k}.npy")),
                typoclip::npy::tensor_npy_bytes(x),
            )
            .unwrap();
        }
    }
    let mut group = c.benchmark_group("detect");
    group.throughput(Throughput::Elements(inputs.len() as u64));
    group.sample_size(20);
    group.bench_function(format!("network_{threads}t"), |b| {
        b.iter(|| {
            for x in &inputs {
                let _ = std::hint::black_box(det.probability(x));
            }
        })
    });
    group.bench_function(format!("detect_{threads}t"), |b| {
        b.iter(|| {
            for img in &images {
                std::hint::black_box(det.detect(img));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
