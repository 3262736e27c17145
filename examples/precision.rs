//! Image-encoder speed and error at reduced precision, against fp32 in the same run: random
//! weights of a real architecture, one batch of real photos (or noise), three arithmetics —
//! fp32, `--precision bf16` (autocast: products in bf16 from fp32 weights, LayerNorm, softmax
//! and the residual stream in fp32) and the whole tower in bf16 (weights converted, every
//! operation in bf16). Prints one JSON line: images/s of each, and each one's feature error
//! against fp32 (relative L2 per image, mean and max; cosine, min). Used by
//! `scripts/bench_precision.sh`.
//!
//! `cargo run --release --example precision -- ViT-B-32 32 128 [PHOTO_DIR]`

use std::time::Instant;

use tch::{Device, Kind, Tensor};
use typoclip::model::config::ClipConfig;
use typoclip::model::ClipModel;
use typoclip::sweep::Precision;

fn main() {
    typoclip::model::kernels::retain_freed_memory();
    let args: Vec<String> = std::env::args().collect();
    let arch = args.get(1).map(String::as_str).unwrap_or("ViT-B-32");
    let batch: i64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(32);
    let images: i64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(128);
    let photos = args.get(4);
    let config = ClipConfig::preset(&format!("{arch}-quickgelu"))
        .or_else(|| ClipConfig::preset(arch))
        .unwrap_or_else(|| panic!("unknown architecture {arch}"));
    let model = ClipModel::random(&config, 0, Device::Cpu).expect("model");
    let n_px = model.image_resolution() as u32;
    let _guard = tch::no_grad_guard();
    let x = match photos {
        Some(dir) => {
            let mut paths: Vec<_> = std::fs::read_dir(dir)
                .expect("photo folder")
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "JPEG" || e == "jpg"))
                .collect();
            paths.sort();
            let t: Vec<Tensor> = paths
                .iter()
                .take(batch as usize)
                .map(|p| {
                    let img = image::open(p).expect("photo").to_rgb8();
                    typoclip::preprocess::preprocess(&img, n_px)
                })
                .collect();
            assert_eq!(
                t.len() as i64,
                batch,
                "fewer photos than the batch in {dir}"
            );
            Tensor::stack(&t, 0)
        }
        None => Tensor::randn(
            [batch, 3, n_px as i64, n_px as i64],
            (Kind::Float, Device::Cpu),
        ),
    };
    let batches = (images + batch - 1) / batch;
    let time = |f: &dyn Fn() -> Tensor| {
        let out = f(); // warm-up, and the features compared
        let t = Instant::now();
        for _ in 0..batches {
            let _ = f();
        }
        ((batches * batch) as f64 / t.elapsed().as_secs_f64(), out)
    };
    let (fp32_rate, reference) = time(&|| Precision::Fp32.encode_image(&model, &x));
    let (auto_rate, auto) = time(&|| Precision::Bf16.encode_image(&model, &x));
    let mut pure_model = ClipModel::random(&config, 0, Device::Cpu).expect("model");
    pure_model.var_store_mut().bfloat16();
    let (pure_rate, pure) = time(&|| {
        pure_model
            .encode_image_as(&x, Kind::BFloat16)
            .to_kind(Kind::Float)
    });
    let error = |f: &Tensor| {
        let rel = (f - &reference).norm_scalaropt_dim(2.0, [1], false)
            / reference.norm_scalaropt_dim(2.0, [1], false);
        let cos = Tensor::cosine_similarity(f, &reference, 1, 1e-12);
        format!(
            "{{\"rel_l2_mean\":{:.3e},\"rel_l2_max\":{:.3e},\"cosine_min\":{:.6}}}",
            rel.mean(Kind::Float).double_value(&[]),
            rel.max().double_value(&[]),
            cos.min().double_value(&[])
        )
    };
    println!(
        "{{\"arch\":\"{arch}\",\"batch\":{batch},\"images\":{},\"threads\":{},\"input\":\"{}\",\
         \"fp32_images_per_s\":{fp32_rate:.3},\"bf16_autocast_images_per_s\":{auto_rate:.3},\
         \"bf16_pure_images_per_s\":{pure_rate:.3},\"bf16_autocast_error\":{},\"bf16_pure_error\":{}}}",
        batches * batch,
        tch::get_num_threads(),
        if photos.is_some() { "photos" } else { "noise" },
        error(&auto),
        error(&pure)
    );
}
