//! The config parser and resolver: any text gives a configuration or errors, never a panic,
//! and every error names a position inside the text.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Err(e) = portcullis::config::from_str(text, std::path::Path::new("fuzz.yaml")) {
        // YAML breaks lines at \n, \r\n and a lone \r.
        let breaks = text.matches('\n').count() + text.replace("\r\n", "\n").matches('\r').count();
        let lines = breaks as u32 + 1;
        for err in &e.errors {
            assert!(err.pos.line <= lines, "{err} points past the end ({lines} lines)");
            assert!(!err.message.is_empty());
        }
    }
});
