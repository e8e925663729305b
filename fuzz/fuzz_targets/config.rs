//! The server's config file (`Config::from_toml_str`), on any UTF-8 text
//! (the server reads the file as UTF-8 first).
//!
//! Invariants:
//! - a refusal has at least one problem, each naming the file, with a reason
//!   and a line inside the text;
//! - one more comment line at the top changes nothing but the lines, each
//!   one further down (but for a missing key, which stays on line 1);
//! - an accepted config keeps every value inside its documented range:
//!   distinct non-blank audiences and issuers, at least one of each; a
//!   region of `a-z 0-9 -`; upstream URLs that are https, or http only to a
//!   loopback host; time limits and cache sizes within their bounds.

#![no_main]

use std::{net::IpAddr, path::Path, time::Duration};

use libfuzzer_sys::fuzz_target;
use tokenbridge_fuzz::{check_problems, check_shifted};
use tokenbridge_server::Config;

const PATH: &str = "/etc/tokenbridge/config.toml";

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new(PATH);
    let result = Config::from_toml_str(src, path);
    let shifted = (!src.starts_with('\u{feff}'))
        .then(|| Config::from_toml_str(&format!("# fuzz\n{src}"), path));
    match result {
        Err(problems) => {
            check_problems(&problems, path, src);
            if let Some(shifted) = shifted {
                let again = shifted.expect_err("a comment line made a bad config good");
                check_shifted(&problems, &again);
            }
        }
        Ok(config) => {
            if let Some(shifted) = shifted {
                assert!(shifted.is_ok(), "a comment line made a good config bad");
            }
            check_config(&config);
        }
    }
});

fn distinct_non_blank(values: &[String]) -> bool {
    !values.is_empty()
        && values.iter().all(|v| !v.trim().is_empty())
        && values
            .iter()
            .enumerate()
            .all(|(i, v)| !values[..i].contains(v))
}

fn upstream_ok(value: &str) -> bool {
    let Ok(url) = url::Url::parse(value) else {
        return false;
    };
    let loopback = match url.host() {
        Some(url::Host::Domain(name)) => name == "localhost",
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    };
    url.scheme() == "https" || (url.scheme() == "http" && loopback)
}

fn check_config(config: &Config) {
    let g = &config.google;
    assert!(distinct_non_blank(&g.audiences), "{:?}", g.audiences);
    assert!(distinct_non_blank(&g.issuers), "{:?}", g.issuers);
    assert!(upstream_ok(&g.jwks_uri), "jwks_uri {:?}", g.jwks_uri);
    assert!((1..=86_400).contains(&g.jwks_refetch_cooldown.as_secs()));
    assert!((100..=60_000).contains(&g.jwks_timeout.as_millis()));
    assert!(g.verified_token_cache_entries <= 10_000_000);

    let a = &config.aws;
    assert!(
        !a.region.is_empty()
            && a.region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
        "region {:?}",
        a.region
    );
    if let Some(endpoint) = &a.sts_endpoint {
        assert!(upstream_ok(endpoint), "sts_endpoint {endpoint:?}");
    }
    assert!((100..=60_000).contains(&a.sts_timeout.as_millis()));

    assert!(config.server.drain_timeout <= Duration::from_secs(3600));
    assert!((1..=10_000_000).contains(&config.cache.max_entries));
    assert!(config.cache.margin <= Duration::from_secs(11 * 3600));
    assert!(config.cache.refresh_window <= Duration::from_secs(11 * 3600));

    // Exactly one policy source; paths relative to the config file's folder.
    assert!(
        config.policy_file.is_some() != config.store.is_some(),
        "policy file {:?}, store {:?}",
        config.policy_file,
        config.store
    );
    if let Some(file) = &config.policy_file {
        assert!(file.is_absolute(), "{file:?}");
    }
    if let Some(admin) = &config.policy_admin {
        assert!(!admin.audiences.is_empty() && !admin.principals.is_empty());
        assert!(
            admin
                .audiences
                .iter()
                .all(|a| !config.google.audiences.contains(a)),
            "an admin audience is also an exchange audience"
        );
    }
}
