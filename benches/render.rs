//! Rendering throughput: "iPod" on a white paper label plus 20 "$" marks onto a real
//! 500×375 photo (`../shared/data/imagenet-sample`), with the changed-pixel mask. criterion
//! measures it; `scripts/bench_render.sh` runs this and the same drawing with Python PIL
//! `ImageDraw` (`scripts/bench_render.py`, same font file) and prints the ratio.
//! Skips with a message when the photo is absent.

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use typoclip::attack::{render, AttackSpec, FontBook};

/// The drawing, shared with scripts/bench_render.py: label font 40 px, marks 18–30 px.
const SPEC: &str = r##"
description = "benchmark: iPod label + 20 dollar marks"
target = "iPod"

[[layers]]
kind = "label"
text = "iPod"
font = "sans-bold"
size_px = 40
padding = 0.3
color = "black"
paper_color = "white"

[[layers]]
kind = "scatter"
text = "$"
font = "sans-bold"
count = 20
size_px = 24
size_jitter = 0.25
color = "#1b5e20"
"##;

fn photo() -> Option<(PathBuf, image::RgbImage)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/imagenet-sample");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    files.into_iter().find_map(|p| {
        let img = typoclip::dataset::load_rgb(&p).ok()?;
        (img.dimensions() == (500, 375)).then_some((p, img))
    })
}

fn bench(c: &mut Criterion) {
    let Some((path, img)) = photo() else {
        eprintln!(
            "skipped: no 500x375 photo in ../shared/data/imagenet-sample (shared data absent)"
        );
        return;
    };
    eprintln!("photo: {}", path.display());
    let spec =
        AttackSpec::parse(SPEC, std::path::Path::new("bench.toml"), FontBook::global()).unwrap();
    let v = &spec.variants[0];
    let mut group = c.benchmark_group("render");
    group.throughput(Throughput::Elements(1));
    let mut seed = 0u64;
    group.bench_function("ipod_label_20_dollars_500x375", |b| {
        b.iter(|| {
            seed += 1;
            render(&img, v, seed, None)
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
