//! Holding off abusive callers cheaply: keyed rate limits (the `governor`
//! crate), a global concurrency limit with load shedding (tower), a request
//! deadline, and bounds on message and header sizes.
//!
//! | key | default | meaning |
//! | --- | --- | --- |
//! | `limits.max_concurrent_requests` | `1024` | `GetCredentials` calls in flight; more are shed at once |
//! | `limits.request_timeout_ms` | `5000` | one `GetCredentials`, from its headers to its answer, the message included (a call whose message has not arrived by then ends with DEADLINE_EXCEEDED and frees its place) |
//! | `limits.max_request_bytes` | `4096` | one decoded request message |
//! | `limits.max_header_list_bytes` | `65536` | the HTTP/2 header block of a request (the token travels there) |
//! | `limits.max_concurrent_streams` | `100` | HTTP/2 streams one connection may have open (advertised in SETTINGS); more are refused by HTTP/2 |
//! | `limits.per_peer_requests_per_second` | `200` | per peer address (IPv6: per /64), before the token is verified; 0: off |
//! | `limits.per_peer_burst` | `400` | requests a peer may make at once |
//! | `limits.per_peer_exempt_loopback` | `true` | loopback peers (a local TLS-terminating proxy, a node agent) are not limited per address |
//! | `limits.per_subject_requests_per_second` | `100` | per verified `sub`; 0: off |
//! | `limits.per_subject_burst` | `1000` | requests one identity may make at once |
//!
//! Every refusal is an [`Error`] mapped in `grpc.rs`: RESOURCE_EXHAUSTED for
//! the rate and concurrency limits (with a `google.rpc.RetryInfo` saying
//! when to come back), UNAVAILABLE for the deadline. The size bounds are the
//! transport's: an over-long message gets tonic's own RESOURCE_EXHAUSTED, an
//! over-long header block is refused by the HTTP/2 layer.
//!
//! The keyed limiters keep one small state per key seen recently;
//! [`RateLimits::retain_recent`] (run every [`JANITOR_INTERVAL`] by the app)
//! forgets the keys that are back to a full burst, so memory stays bounded
//! by the number of callers active within a burst period.

use std::{
    net::{IpAddr, Ipv6Addr},
    num::NonZeroU32,
    time::Duration,
};

use governor::{
    DefaultKeyedRateLimiter, Quota, RateLimiter,
    clock::{Clock as _, DefaultClock},
};

use crate::error::{Error, Limit};

/// How often the keyed limiters forget idle keys.
pub const JANITOR_INTERVAL: Duration = Duration::from_secs(60);

/// A rate: `per_second` sustained, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Requests per second, sustained.
    pub per_second: NonZeroU32,
    /// Requests allowed at once.
    pub burst: NonZeroU32,
}

impl Rate {
    /// `per_second` sustained with bursts of `burst`; `None` if either is 0.
    pub fn new(per_second: u32, burst: u32) -> Option<Rate> {
        Some(Rate {
            per_second: NonZeroU32::new(per_second)?,
            burst: NonZeroU32::new(burst)?,
        })
    }

    fn quota(self) -> Quota {
        Quota::per_second(self.per_second).allow_burst(self.burst)
    }
}

/// `[limits]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitsConfig {
    /// Most `GetCredentials` calls in flight; the rest are shed at once.
    pub max_concurrent_requests: usize,
    /// Time limit of one `GetCredentials`.
    pub request_timeout: Duration,
    /// Largest decoded request message.
    pub max_request_bytes: usize,
    /// Largest HTTP/2 header block of a request.
    pub max_header_list_bytes: u32,
    /// HTTP/2 streams per connection at most.
    pub max_concurrent_streams: u32,
    /// Per peer address, before verification; `None`: off.
    pub per_peer: Option<Rate>,
    /// Whether loopback peers are exempt from the per-peer limit (behind a
    /// local proxy every caller has the proxy's address).
    pub per_peer_exempt_loopback: bool,
    /// Per verified `sub`; `None`: off.
    pub per_subject: Option<Rate>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_concurrent_requests: 1024,
            request_timeout: Duration::from_millis(5000),
            max_request_bytes: 4096,
            max_header_list_bytes: 64 * 1024,
            max_concurrent_streams: 100,
            per_peer: Rate::new(200, 400),
            per_peer_exempt_loopback: true,
            per_subject: Rate::new(100, 1000),
        }
    }
}

impl LimitsConfig {
    /// No rate limits, and generous bounds: for load tests and for tests
    /// that are not about limits.
    pub fn unlimited() -> Self {
        Self {
            max_concurrent_requests: 1 << 20,
            per_peer: None,
            per_subject: None,
            ..Self::default()
        }
    }
}

/// The keyed rate limiters.
pub struct RateLimits {
    peer: Option<DefaultKeyedRateLimiter<IpAddr>>,
    exempt_loopback: bool,
    subject: Option<DefaultKeyedRateLimiter<String>>,
    clock: DefaultClock,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimits")
            .field("peers_tracked", &self.peer.as_ref().map(|l| l.len()))
            .field("subjects_tracked", &self.subject.as_ref().map(|l| l.len()))
            .finish()
    }
}

impl RateLimits {
    /// Limiters for `config`'s rates.
    pub fn new(config: &LimitsConfig) -> Self {
        Self {
            peer: config.per_peer.map(|r| RateLimiter::keyed(r.quota())),
            exempt_loopback: config.per_peer_exempt_loopback,
            subject: config.per_subject.map(|r| RateLimiter::keyed(r.quota())),
            clock: DefaultClock::default(),
        }
    }

    /// Counts a request from `peer` (unknown peers, and loopback ones when
    /// exempt, are not limited).
    pub fn check_peer(&self, peer: Option<IpAddr>) -> Result<(), Error> {
        let (Some(limiter), Some(ip)) = (&self.peer, peer) else {
            return Ok(());
        };
        let key = peer_key(ip);
        if self.exempt_loopback && key.is_loopback() {
            return Ok(());
        }
        limiter
            .check_key(&key)
            .map_err(|not_until| Error::RateLimited {
                limit: Limit::Peer,
                retry_after: not_until.wait_time_from(self.clock.now()),
            })
    }

    /// Counts a request of the verified identity `sub`.
    pub fn check_subject(&self, sub: &str) -> Result<(), Error> {
        let Some(limiter) = &self.subject else {
            return Ok(());
        };
        limiter
            .check_key(&sub.to_owned())
            .map_err(|not_until| Error::RateLimited {
                limit: Limit::Subject,
                retry_after: not_until.wait_time_from(self.clock.now()),
            })
    }

    /// Forgets keys whose state is back to a full burst, and gives the
    /// memory back.
    pub fn retain_recent(&self) {
        if let Some(l) = &self.peer {
            l.retain_recent();
            l.shrink_to_fit();
        }
        if let Some(l) = &self.subject {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }

    /// How many peer and subject keys are tracked now.
    pub fn tracked(&self) -> (usize, usize) {
        (
            self.peer.as_ref().map_or(0, |l| l.len()),
            self.subject.as_ref().map_or(0, |l| l.len()),
        )
    }
}

/// The key for a peer: its IPv4 address, or its IPv6 /64 (one host usually
/// owns a whole /64, so per-address keys would be free to multiply).
fn peer_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(bits))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_peers_are_keyed_by_their_slash_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(peer_key(a), peer_key(b));
        assert_ne!(peer_key(a), peer_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(peer_key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn a_burst_is_allowed_then_refused_with_a_retry_hint() {
        let limits = RateLimits::new(&LimitsConfig {
            per_peer: Rate::new(1, 3),
            per_subject: Rate::new(1, 2),
            ..LimitsConfig::default()
        });
        // Loopback is exempt by default.
        for _ in 0..10 {
            limits
                .check_peer(Some("127.0.0.1".parse().unwrap()))
                .unwrap();
            limits
                .check_peer(Some("::ffff:127.0.0.1".parse().unwrap()))
                .unwrap();
        }
        let ip = Some("192.0.2.1".parse().unwrap());
        for _ in 0..3 {
            limits.check_peer(ip).unwrap();
        }
        match limits.check_peer(ip) {
            Err(Error::RateLimited {
                limit: Limit::Peer,
                retry_after,
            }) => assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(1)),
            other => panic!("{other:?}"),
        }
        // Another peer has its own budget; unknown peers are not limited.
        limits
            .check_peer(Some("192.0.2.2".parse().unwrap()))
            .unwrap();
        limits.check_peer(None).unwrap();

        limits.check_subject("1").unwrap();
        limits.check_subject("1").unwrap();
        assert!(matches!(
            limits.check_subject("1"),
            Err(Error::RateLimited {
                limit: Limit::Subject,
                ..
            })
        ));
        limits.check_subject("2").unwrap();
        assert_eq!(limits.tracked(), (2, 2));
    }

    #[test]
    fn loopback_is_limited_when_not_exempt() {
        let limits = RateLimits::new(&LimitsConfig {
            per_peer: Rate::new(1, 1),
            per_peer_exempt_loopback: false,
            ..LimitsConfig::default()
        });
        let ip = Some("127.0.0.1".parse().unwrap());
        limits.check_peer(ip).unwrap();
        assert!(limits.check_peer(ip).is_err());
    }

    #[test]
    fn off_means_off() {
        let limits = RateLimits::new(&LimitsConfig::unlimited());
        for _ in 0..10_000 {
            limits
                .check_peer(Some("192.0.2.1".parse().unwrap()))
                .unwrap();
            limits.check_subject("1").unwrap();
        }
        assert_eq!(limits.tracked(), (0, 0));
        assert_eq!(Rate::new(0, 5), None);
        assert_eq!(Rate::new(5, 0), None);
    }
}
