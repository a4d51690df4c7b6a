//! Make the built library find libtorch at run time without LD_LIBRARY_PATH.
//!
//! torch-sys links against the libtorch inside the PyPI `torch` package but only gives its own
//! C++ shim an rpath. We add two: `$ORIGIN/../torch/lib`, which is where libtorch sits relative to
//! an installed `site-packages/liteclip/_liteclip*.so`, and the absolute folder of the build venv,
//! so that cargo's test binaries run as they are.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN/../torch/lib");
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}/lib");
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
