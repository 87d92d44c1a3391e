//! Credential headers (API key, Basic, Bearer): any header names and values give credentials
//! or a refusal, never a panic; what is read back is what was sent.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    headers: Vec<(Name, Vec<u8>)>,
}

#[derive(Arbitrary, Debug)]
enum Name {
    Authorization,
    ApiKey,
    Other(String),
}

fuzz_target!(|input: Input| {
    let mut map = http::HeaderMap::new();
    let api_key = http::HeaderName::from_static("x-api-key");
    for (name, value) in input.headers {
        let name = match name {
            Name::Authorization => http::header::AUTHORIZATION,
            Name::ApiKey => api_key.clone(),
            Name::Other(n) => match http::HeaderName::from_bytes(n.as_bytes()) {
                Ok(n) => n,
                Err(_) => continue,
            },
        };
        if let Ok(v) = http::HeaderValue::from_bytes(&value) {
            map.append(name, v);
        }
    }
    let Ok(p) = portcullis::auth::presented(&map, &api_key) else {
        return;
    };
    if let Some(key) = &p.api_key {
        let sent = map.get(&api_key).and_then(|v| v.to_str().ok()).unwrap_or_default();
        assert_eq!(key, sent.trim());
    }
    if let Some((user, _password)) = &p.basic {
        assert!(!user.contains(':'), "the user name ends at the first colon: {user:?}");
    }
});
