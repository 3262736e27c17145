//! Compiles the small C++ shim that reads TorchScript archives (parameters and buffers), against
//! the same libtorch that `torch-sys` links, and embeds an rpath to libtorch's real location so the
//! binaries, tests and benches run in a new shell without `LD_LIBRARY_PATH`.
use std::path::PathBuf;

fn main() {
    // The commit typoclip was built from, for run provenance.
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=TYPOCLIP_GIT_COMMIT={commit}");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    println!("cargo:rerun-if-changed=csrc/jit_shim.cpp");
    println!("cargo:rerun-if-changed=csrc/onednn_shim.cpp");
    println!("cargo:rerun-if-changed=csrc/shim_common.h");
    println!("cargo:rerun-if-changed=csrc/quick_gelu_avx2.c");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let lib_dir = std::env::var("DEP_TCH_LIBTORCH_LIB")
        .expect("torch-sys did not export its libtorch lib dir (DEP_TCH_LIBTORCH_LIB)");
    // Resolve symlinks (the `.libtorch` link made by scripts/setup.sh): libtorch's own RPATH
    // ($ORIGIN/../../nvidia/...) must be resolved from the real site-packages location.
    let lib_dir = std::fs::canonicalize(&lib_dir).unwrap_or_else(|_| PathBuf::from(&lib_dir));
    let root = lib_dir.parent().expect("libtorch lib dir has a parent");
    let include = root.join("include");
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .flag("-DGLOG_USE_GLOG_EXPORT")
        // `at::parallel_for` is an OpenMP loop in the header: without -fopenmp it runs on one
        // thread. The runtime is libtorch's own libgomp (linked below), not a second one.
        .flag("-fopenmp")
        .file("csrc/jit_shim.cpp")
        .file("csrc/onednn_shim.cpp")
        .compile("typoclip_jit_shim");
    // Built alone with AVX2 and FMA, and called only on CPUs that have them (checked at run time).
    cc::Build::new()
        .warnings(false)
        .flag("-mavx2")
        .flag("-mfma")
        .flag("-O3")
        .file("csrc/quick_gelu_avx2.c")
        .compile("typoclip_avx2");
    println!("cargo:rustc-link-search=native={}", lib_dir.display());
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
    println!("cargo:rustc-link-lib=dylib:+verbatim=libgomp.so.1");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib_dir.display());
}
