//! The built eBPF object against the ABI in `palisade_common::maps`: every map
//! the programs declare is in `SPECS` with the same type, key and value sizes,
//! capacity and flags, and every spec is declared. The counterpart of checking
//! BTF against the user-space types; needs no privileges.

use std::collections::BTreeSet;

use palisade_agent::datapath::EBPF_OBJECT;
use palisade_common::maps::SPECS;

#[test]
fn every_map_of_the_object_matches_its_spec_in_common() {
    let obj = aya_obj::Object::parse(EBPF_OBJECT).expect("the built eBPF object parses");
    // Sections such as .rodata become maps too; only ours are named PAL_*.
    let declared: BTreeSet<&str> = obj
        .maps
        .keys()
        .map(String::as_str)
        .filter(|n| n.starts_with("PAL_"))
        .collect();
    let specified: BTreeSet<&str> = SPECS.iter().map(|s| s.name).collect();
    assert_eq!(declared, specified, "maps in the object vs. maps in common");
    for spec in &SPECS {
        let m = &obj.maps[spec.name];
        let got = (
            m.map_type(),
            m.key_size(),
            m.value_size(),
            m.max_entries(),
            m.map_flags(),
        );
        let want = (
            spec.kind as u32,
            spec.key_size,
            spec.value_size,
            spec.max_entries,
            spec.flags,
        );
        assert_eq!(
            got, want,
            "{}: (type, key size, value size, capacity, flags)",
            spec.name
        );
        let pinned = matches!(m.pinning(), aya_obj::maps::PinningType::ByName);
        assert_eq!(pinned, spec.pinned, "{}: pinned", spec.name);
    }
}
