//! Compiles bpf/turnkey_xdp.c with clang (`-target bpf`, headers from libbpf-dev) into OUT_DIR.
//! Without clang (or when it fails) the crate still builds: the fast path is then unavailable and
//! `turnkey_fastpath::UNAVAILABLE` says why (the relay logs it once).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(turnkey_fastpath_bpf)");
    println!("cargo::rerun-if-changed=bpf/turnkey_xdp.c");
    println!("cargo::rerun-if-env-changed=TURNKEY_CLANG");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let obj = out.join("turnkey_xdp.o");
    let clang = std::env::var("TURNKEY_CLANG").unwrap_or_else(|_| "clang".to_string());
    let arch = match std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("x86_64") => "x86_64-linux-gnu",
        Ok("aarch64") => "aarch64-linux-gnu",
        _ => "",
    };
    let mut cmd = Command::new(&clang);
    cmd.args(["-O2", "-g", "-target", "bpf", "-mcpu=v3", "-Wall", "-Werror"]);
    if !arch.is_empty() {
        cmd.arg(format!("-I/usr/include/{arch}"));
    }
    cmd.arg("-c").arg("bpf/turnkey_xdp.c").arg("-o").arg(&obj);
    let reason = match cmd.output() {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "{clang} failed to compile bpf/turnkey_xdp.c (is libbpf-dev installed?): {}",
            String::from_utf8_lossy(&o.stderr).lines().next().unwrap_or("").trim()
        )),
        Err(e) => Some(format!("{clang} not found at build time ({e}); install clang and libbpf-dev")),
    };
    match reason {
        None => {
            println!("cargo::rustc-cfg=turnkey_fastpath_bpf");
            println!("cargo::rustc-env=TURNKEY_FASTPATH_UNAVAILABLE=");
        }
        Some(r) => {
            println!("cargo::warning=turnkey-fastpath: {r}; the kernel fast path is unavailable");
            println!("cargo::rustc-env=TURNKEY_FASTPATH_UNAVAILABLE={}", r.replace('\n', " "));
        }
    }
}
