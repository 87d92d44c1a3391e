//! Path normalization: a normalized path normalizes to itself, starts with `/`, and has no
//! dot segment, empty segment, backslash or encoded slash or backslash left in it: what the
//! policy matches is what the upstream gets, whatever the client wrote.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|raw: &str| {
    let Ok(path) = portcullis::policy::normalize_path(raw) else {
        return;
    };
    assert!(path.starts_with('/'), "{raw:?} -> {path:?}");
    assert!(!path.contains("//"), "{raw:?} -> {path:?}");
    assert!(!path.contains('\\'), "{raw:?} -> {path:?}");
    let lower = path.to_ascii_lowercase();
    assert!(!lower.contains("%2f") && !lower.contains("%5c"), "{raw:?} -> {path:?}");
    for segment in path.split('/').skip(1) {
        // `;` parameters are kept for the upstream; their segment must not be a dot segment.
        let name = segment.split(';').next().unwrap_or("");
        assert!(name != "." && name != "..", "{raw:?} -> {path:?}");
        let decoded = name.to_ascii_lowercase();
        assert!(decoded != "%2e" && decoded != "%2e%2e" && decoded != ".%2e" && decoded != "%2e.", "{raw:?} -> {path:?}");
    }
    assert_eq!(
        portcullis::policy::normalize_path(&path).as_deref(),
        Ok(path.as_str()),
        "not idempotent for {raw:?}"
    );
    // The form routes match has its `;` parameters removed: still no dot segment.
    let matched = portcullis::policy::match_form(&path);
    for segment in matched.split('/') {
        assert!(segment != "." && segment != "..", "{raw:?} -> {matched:?}");
    }
});
