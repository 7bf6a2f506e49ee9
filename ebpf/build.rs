//! Compiles `bpf/lanrage_xdp.c` into BPF objects in `OUT_DIR`, only when the
//! `xdp` feature is on; the default build needs no clang.
//!
//! Two objects come out of the one source: `lanrage_xdp.o` (private maps) and
//! `lanrage_xdp_pinned.o` (maps pinned by name, for the loader's `pin_path`).
//! `LANRAGE_BPF_CLANG` overrides the compiler (default `clang`).

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if env::var_os("CARGO_FEATURE_XDP").is_none() {
        return;
    }
    println!("cargo:rerun-if-changed=bpf/lanrage_xdp.c");
    println!("cargo:rerun-if-changed=bpf/lanrage_xdp.h");
    println!("cargo:rerun-if-env-changed=LANRAGE_BPF_CLANG");

    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    let clang = env::var("LANRAGE_BPF_CLANG").unwrap_or_else(|_| "clang".to_owned());
    let source = manifest.join("bpf/lanrage_xdp.c");
    compile(&clang, &source, &out.join("lanrage_xdp.o"), &[]);
    compile(
        &clang,
        &source,
        &out.join("lanrage_xdp_pinned.o"),
        &["-DLRG_PIN_MAPS"],
    );
}

fn compile(clang: &str, source: &Path, object: &Path, defines: &[&str]) {
    let mut cmd = Command::new(clang);
    cmd.args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"]);
    // <linux/*.h> includes <asm/*.h>, which Debian keeps under the host's
    // multiarch directory; `-target bpf` doesn't search it on its own.
    if let Some(dir) = multiarch_include() {
        cmd.arg(format!("-I{}", dir.display()));
    }
    cmd.args(defines)
        .arg("-c")
        .arg(source)
        .arg("-o")
        .arg(object);
    let status = match cmd.status() {
        Ok(status) => status,
        Err(e) => panic!(
            "the `xdp` feature compiles {} with `{clang}`, which could not run ({e}); \
             install it (Debian: apt-get install clang libbpf-dev) or set LANRAGE_BPF_CLANG",
            source.display()
        ),
    };
    if !status.success() {
        panic!(
            "`{cmd:?}` failed ({status}); the XDP program needs clang and libbpf-dev's \
             <bpf/bpf_helpers.h> (Debian: apt-get install clang libbpf-dev)"
        );
    }
}

fn multiarch_include() -> Option<PathBuf> {
    let arch = env::var("CARGO_CFG_TARGET_ARCH").ok()?;
    let triple = match arch.as_str() {
        "x86_64" => "x86_64-linux-gnu",
        "aarch64" => "aarch64-linux-gnu",
        "x86" => "i386-linux-gnu",
        "arm" => "arm-linux-gnueabihf",
        "riscv64" => "riscv64-linux-gnu",
        _ => return None,
    };
    let dir = Path::new("/usr/include").join(triple);
    dir.is_dir().then_some(dir)
}
