//! AWS's side: `AssumeRoleWithWebIdentity` ([`sts`]), the credentials
//! cache in front of it ([`cache`]), and the `[aws]` section.

use std::time::Duration;

pub mod cache;
pub mod sts;

/// `[aws]`: how STS is called.
#[derive(Debug, Clone)]
pub struct AwsConfig {
    /// STS region.
    pub region: String,
    /// Endpoint override (VPC endpoint, local emulator).
    pub sts_endpoint: Option<String>,
    /// Time limit of one `AssumeRoleWithWebIdentity`, retries and fallback
    /// regions included.
    pub sts_timeout: Duration,
    /// Regions tried in order when the primary fails with a retryable error.
    pub fallback_regions: Vec<FallbackRegion>,
}

/// A region STS calls fall back to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FallbackRegion {
    /// The region.
    pub region: String,
    /// Endpoint override; `None`: the region's STS endpoint.
    pub sts_endpoint: Option<String>,
}
