//! Embeds the libtorch library directory as an rpath so the binaries, tests and benches of this
//! crate run without LD_LIBRARY_PATH. torch-sys exports the directory it linked against as
//! DEP_TCH_LIBTORCH_LIB (its `links = "tch"` key) to crates that depend on it directly.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
