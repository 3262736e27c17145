//! The two CPU kernel families for linear layers (oneDNN, the default, and libtorch's `at::linear`,
//! what Python runs) give the same embeddings at the real ViT-B/32 and RN50 shapes, so the parity
//! proven against open_clip in `tests/parity.rs` (on the default) holds for both. One test in its
//! own binary, because the choice is process-wide.

mod common;

use common::max_abs_diff;
use tch::{Device, Kind, Tensor};
use typoclip::model::config::ClipConfig;
use typoclip::model::kernels::{cpu_linear, set_cpu_linear, CpuLinear};
use typoclip::model::ClipModel;

#[test]
fn onednn_and_aten_give_the_same_embeddings() {
    let _g = tch::no_grad_guard();
    for arch in ["ViT-B-32", "RN50"] {
        let config = ClipConfig::preset(arch).expect("preset");
        let model = ClipModel::random(&config, 7, Device::Cpu).expect("model");
        let r = model.image_resolution();
        tch::manual_seed(11);
        let images = Tensor::randn([3, 3, r, r], (Kind::Float, Device::Cpu));
        let tokens = Tensor::randint(1000, [4, 77], (Kind::Int64, Device::Cpu));
        set_cpu_linear(CpuLinear::OneDnn);
        assert_eq!(
            cpu_linear(),
            CpuLinear::OneDnn,
            "this libtorch lacks oneDNN linear"
        );
        let (img_dnn, txt_dnn) = (model.encode_image(&images), model.encode_text(&tokens));
        set_cpu_linear(CpuLinear::Aten);
        let (img_aten, txt_aten) = (model.encode_image(&images), model.encode_text(&tokens));
        let d_img = max_abs_diff(&img_dnn, &img_aten);
        let d_txt = max_abs_diff(&txt_dnn, &txt_aten);
        eprintln!("{arch}: image {d_img:.2e} text {d_txt:.2e}");
        assert!(d_img <= 1e-4, "{arch}: image embeddings differ by {d_img}");
        assert!(d_txt <= 1e-4, "{arch}: text embeddings differ by {d_txt}");
        // Not vacuous: the embeddings are not all zero and differ between images.
        assert!(img_dnn.abs().max().double_value(&[]) > 1e-3);
        assert!(max_abs_diff(&img_dnn.get(0), &img_dnn.get(1)) > 1e-3);
    }
}

/// On a machine whose libtorch sees a CUDA device, the towers give the CPU's embeddings there
/// too (the CUDA path runs libtorch's own kernels). Skips, saying so, where there is none.
#[test]
fn cuda_matches_cpu_where_available() {
    if !tch::Cuda::is_available() {
        eprintln!("SKIP cuda_matches_cpu_where_available: no CUDA device visible to libtorch");
        return;
    }
    let _g = tch::no_grad_guard();
    for arch in ["ViT-B-32", "RN50"] {
        let config = ClipConfig::preset(arch).expect("preset");
        let cpu = ClipModel::random(&config, 5, Device::Cpu).expect("model");
        let mut gpu = ClipModel::random(&config, 5, Device::Cpu).expect("model");
        gpu.var_store_mut().set_device(Device::Cuda(0));
        let r = cpu.image_resolution();
        tch::manual_seed(2);
        let images = Tensor::randn([2, 3, r, r], (Kind::Float, Device::Cpu));
        let tokens = Tensor::randint(1000, [2, 77], (Kind::Int64, Device::Cpu));
        let d_img = max_abs_diff(
            &cpu.encode_image(&images),
            &gpu.encode_image(&images.to_device(Device::Cuda(0)))
                .to_device(Device::Cpu),
        );
        let d_txt = max_abs_diff(
            &cpu.encode_text(&tokens),
            &gpu.encode_text(&tokens.to_device(Device::Cuda(0)))
                .to_device(Device::Cpu),
        );
        eprintln!("{arch} cuda vs cpu: image {d_img:.2e} text {d_txt:.2e}");
        assert!(
            d_img <= 1e-3 && d_txt <= 1e-3,
            "{arch}: CUDA differs by {d_img} / {d_txt}"
        );
    }
}

/// `--precision bf16` (autocast: bf16 products from fp32 weights, LayerNorm, attention softmax
/// and the residual stream in fp32) runs every image-tower family at its real shapes, returns
/// fp32 features within bf16's error of fp32, and for the ViT is closer to fp32 than the whole
/// tower in bf16.
#[test]
fn bf16_autocast_runs_every_tower_family_close_to_fp32() {
    use typoclip::sweep::Precision;
    let _g = tch::no_grad_guard();
    let rel = |f: &Tensor, r: &Tensor| {
        ((f - r).norm_scalaropt_dim(2.0, [1], false) / r.norm_scalaropt_dim(2.0, [1], false))
            .max()
            .double_value(&[])
    };
    for arch in [
        "ViT-B-32",
        "RN50",
        "convnext_base",
        "EVA02-B-16",
        "ViT-B-16-SigLIP",
        "MobileCLIP-S1",
        "PE-Core-B-16",
        "ViTamin-S",
    ] {
        let config = ClipConfig::preset(arch).expect("preset");
        let model = ClipModel::random(&config, 3, Device::Cpu).expect("model");
        let r = model.image_resolution();
        tch::manual_seed(12);
        let images = Tensor::rand([2, 3, r, r], (Kind::Float, Device::Cpu)) * 4.0 - 2.0;
        let fp32 = Precision::Fp32.encode_image(&model, &images);
        let bf16 = Precision::Bf16.encode_image(&model, &images);
        assert_eq!(bf16.kind(), Kind::Float, "{arch}");
        assert!(
            !typoclip::model::kernels::Autocast::is_open(Device::Cpu),
            "{arch}: the region is closed after the forward"
        );
        let e = rel(&bf16, &fp32);
        assert!(e > 0.0 && e < 3e-2, "{arch}: bf16 relative error {e:.2e}");
        if arch == "ViT-B-32" {
            let mut pure = ClipModel::random(&config, 3, Device::Cpu).expect("model");
            pure.var_store_mut().bfloat16();
            let all_bf16 = pure
                .encode_image_as(&images, Kind::BFloat16)
                .to_kind(Kind::Float);
            let e_pure = rel(&all_bf16, &fp32);
            assert!(
                e < e_pure,
                "{arch}: autocast {e:.2e} vs all-bf16 {e_pure:.2e}"
            );
        }
    }
}
