//! Build script: links GCC's unwinder (libgcc_eh.a) into the binaries on
//! GNU/Linux instead of loading libgcc_s.so.1 at every start.
//!
//! `decide` runs once per task from a dispatcher and must start almost as
//! fast as /bin/true. Rust's std links libgcc_s dynamically only for its
//! unwinder; mapping and relocating that one extra library costs about as
//! much as the rest of the dynamic loading (measured with the benchmark in
//! tests/bench/: `decide` went from 2.2x to 1.8x of /bin/true on a busy
//! machine). With the archive linked whole ahead of std, the linker's
//! `--as-needed` drops libgcc_s; it is what `-C target-feature=+crt-static`
//! does for the unwinder, without making libc static. Anywhere else, or
//! when the C compiler has no libgcc_eh.a, nothing changes.

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=src/build.rs");
    println!("cargo:rerun-if-env-changed=CC");
    println!("cargo:rerun-if-env-changed=RUSTC_LINKER");
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    let gnu_linux = var("CARGO_CFG_TARGET_OS") == "linux" && var("CARGO_CFG_TARGET_ENV") == "gnu";
    // With crt-static, std links the static unwinder itself.
    let crt_static = var("CARGO_CFG_TARGET_FEATURE")
        .split(',')
        .any(|f| f == "crt-static");
    if !gnu_linux || crt_static || !compiler_has_libgcc_eh() {
        return;
    }
    println!("cargo:rustc-link-lib=static:+whole-archive,-bundle=gcc_eh");
}

/// Whether the C compiler rustc links with finds libgcc_eh.a.
fn compiler_has_libgcc_eh() -> bool {
    let cc = ["RUSTC_LINKER", "CC"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "cc".to_string());
    Command::new(cc)
        .arg("-print-file-name=libgcc_eh.a")
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .is_some_and(|p| {
            let p = Path::new(p.trim());
            p.is_absolute() && p.is_file()
        })
}
