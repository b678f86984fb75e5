//! Finds the system DPDK with pkg-config, generates the bindings with bindgen (including C
//! wrappers for DPDK's static-inline functions) and compiles those wrappers with `cc`.
//!
//! This is the one place that knows which DPDK versions are accepted (SPEC §2).

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// DPDK releases these bindings are written and tested against.
const ACCEPTED_SERIES: &str = "22.11";

fn pkg_config(args: &[&str]) -> Result<String, String> {
    let out = Command::new("pkg-config")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run pkg-config ({e}): install pkg-config and libdpdk-dev (run ci/setup)"))?;
    if !out.status.success() {
        return Err(format!(
            "pkg-config cannot find libdpdk: install libdpdk-dev (run ci/setup)\n{}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn fail(msg: &str) -> ! {
    // A panic message from a build script is shown to the user as the error.
    eprintln!("error: {msg}");
    panic!("{msg}");
}

fn main() {
    println!("cargo:rerun-if-changed=wrapper.h");
    println!("cargo:rerun-if-changed=shim.h");
    println!("cargo:rerun-if-changed=shim.c");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");

    let version = pkg_config(&["--modversion", "libdpdk"]).unwrap_or_else(|e| fail(&e));
    if !(version == ACCEPTED_SERIES || version.starts_with(&format!("{ACCEPTED_SERIES}."))) {
        fail(&format!(
            "found DPDK {version}, but colo-dataplane needs DPDK {ACCEPTED_SERIES}.x: install libdpdk-dev (run ci/setup)"
        ));
    }
    println!("cargo:version={version}");
    println!("cargo:rustc-env=DPDK_BINDINGS_VERSION={version}");

    // The raw tokens matter: pkg-config's cflags carry `-march=corei7` and `-include rte_config.h`,
    // without which the SSE intrinsics in rte_thash.h fail to inline (DPDK-NOTES "Bindings").
    let cflags: Vec<String> = pkg_config(&["--cflags", "libdpdk"])
        .unwrap_or_else(|e| fail(&e))
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let libs = pkg_config(&["--libs", "libdpdk"]).unwrap_or_else(|e| fail(&e));

    let crate_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("set by cargo"));
    let wrappers = out_dir.join("static_fns");

    let builder = bindings_builder(&crate_dir, &out_dir, &wrappers, &cflags);
    let bindings = builder.generate().unwrap_or_else(|e| fail(&format!("bindgen failed on the DPDK headers: {e}")));
    bindings
        .write_to_file(out_dir.join("bindings.rs"))
        .unwrap_or_else(|e| fail(&format!("cannot write bindings: {e}")));

    // The generated wrappers include wrapper.h by a relative name, hence the crate dir include.
    let mut cc = cc::Build::new();
    cc.file(wrappers.with_extension("c")).file(crate_dir.join("shim.c")).include(&crate_dir).warnings(false);
    for flag in &cflags {
        cc.flag(flag);
    }
    cc.compile("colo_dpdk_wrappers");

    link(&libs);
}

/// Integer macros of the flag families (`RTE_ETH_RSS_*`, offload flags, mbuf flags) are bit
/// masks that end up in `u64` fields; bindgen would otherwise pick `u32` from the value.
#[derive(Debug)]
struct FlagFamiliesAreU64;

impl bindgen::callbacks::ParseCallbacks for FlagFamiliesAreU64 {
    fn int_macro(&self, name: &str, _value: i64) -> Option<bindgen::callbacks::IntKind> {
        const U64_FAMILIES: [&str; 5] =
            ["RTE_ETH_RSS_", "RTE_ETH_RX_OFFLOAD_", "RTE_ETH_TX_OFFLOAD_", "RTE_MBUF_F_", "RTE_ETH_LINK_SPEED_"];
        if U64_FAMILIES.iter().any(|p| name.starts_with(p)) {
            Some(bindgen::callbacks::IntKind::U64)
        } else {
            None
        }
    }
}

/// The bindgen configuration: DPDK's headers through `wrapper.h`, with pkg-config's `cflags`,
/// static inline functions wrapped in C, and only the API this crate uses allowlisted.
fn bindings_builder(crate_dir: &Path, out_dir: &Path, wrappers: &Path, cflags: &[String]) -> bindgen::Builder {
    let mut builder = bindgen::Builder::default()
        .header(crate_dir.join("wrapper.h").to_string_lossy())
        .clang_args(cflags)
        .clang_arg(format!("-I{}", crate_dir.display()))
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
        .parse_callbacks(Box::new(FlagFamiliesAreU64))
        .wrap_static_fns(true)
        .wrap_static_fns_path(wrappers)
        .clang_macro_fallback()
        .clang_macro_fallback_build_dir(out_dir)
        .prepend_enum_name(false)
        .derive_debug(false)
        .derive_default(true)
        .layout_tests(true)
        .generate_comments(false)
        // Packed structs containing aligned ones (E0588) once rte_arp.h is pulled in.
        .opaque_type("rte_arp_ipv4")
        .opaque_type("rte_arp_hdr")
        .opaque_type("rte_l2tpv2_combined_msg_hdr")
        .opaque_type("rte_gtp_psc_.*")
        .opaque_type("rte_flow_item_gtp_psc");
    for f in [
        "rte_eal_.*",
        "rte_eth_.*",
        "rte_pktmbuf_.*",
        "rte_mbuf_.*",
        "rte_mempool_.*",
        "rte_lcore_.*",
        "rte_get_.*lcore.*",
        "rte_socket_id",
        "rte_thread_.*",
        "rte_ring_.*",
        "rte_rdtsc.*",
        "rte_get_tsc_.*",
        "rte_get_timer_.*",
        "rte_delay_.*",
        "rte_pause",
        "rte_softrss.*",
        "rte_convert_rss_key",
        "rte_strerror",
        "rte_vdev_.*",
        "rte_telemetry_.*",
        "rte_tel_data_.*",
        "colo_.*",
    ] {
        builder = builder.allowlist_function(f);
    }
    for t in [
        "rte_eth_.*",
        "rte_mbuf.*",
        "rte_mempool.*",
        "rte_ring.*",
        "rte_ipv[46]_tuple.*",
        "rte_thash_tuple",
        "rte_tel_data",
    ] {
        builder = builder.allowlist_type(t);
    }
    for v in [
        "RTE_ETH_.*",
        "RTE_MBUF_.*",
        "RTE_PKTMBUF_.*",
        "RTE_MAX_.*",
        "RTE_THASH_.*",
        "RTE_MEMPOOL_.*",
        "RTE_ETHER_.*",
        "RING_F_.*",
        "LCORE_ID_ANY",
        "SOCKET_ID_ANY",
        "RTE_LCORE_.*",
        "E[A-Z]+",
    ] {
        builder = builder.allowlist_var(v);
    }

    builder
}

/// Links the DPDK libraries dynamically. Debian's shared DPDK loads its PMDs from the driver
/// directory at rte_eal_init, so --vdev drivers need no link flag; the ring PMD and the vdev bus
/// are linked because their own APIs (rte_eth_from_rings, rte_vdev_init) are called.
fn link(libs: &str) {
    for token in libs.split_whitespace() {
        if let Some(dir) = token.strip_prefix("-L") {
            println!("cargo:rustc-link-search=native={dir}");
        } else if let Some(lib) = token.strip_prefix("-l") {
            println!("cargo:rustc-link-lib=dylib={lib}");
        }
    }
    println!("cargo:rustc-link-lib=dylib=rte_net_ring");
    println!("cargo:rustc-link-lib=dylib=rte_bus_vdev");
}
