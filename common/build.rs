//! `PALISADE_TEST_LAYOUT=1` builds the ABI with another map layout (a longer
//! endpoint record, a smaller confirmed conntrack table): the agent the
//! map-layout upgrade test starts first, as an agent of another version.
//! Never set for a build that is deployed.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(palisade_test_layout)");
    println!("cargo:rerun-if-env-changed=PALISADE_TEST_LAYOUT");
    if std::env::var_os("PALISADE_TEST_LAYOUT").is_some_and(|v| !v.is_empty() && v != "0") {
        println!("cargo:rustc-cfg=palisade_test_layout");
    }
}
