//! Reruns the eBPF build when bpf-linker changes (a new LLVM can change the object).
fn main() {
    match which::which("bpf-linker") {
        Ok(p) => println!("cargo:rerun-if-changed={}", p.display()),
        Err(e) => println!("cargo:warning=bpf-linker not found ({e}): run `cargo xtask setup`"),
    }
}
