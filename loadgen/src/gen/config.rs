//! configuration: payload format, framing, the operation mix and the
//! generator's settings, as the command line gives them.

use super::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Json,
    Csv,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Framing {
    /// newline-terminated (RFC 6587 non-transparent framing)
    Lf,
    /// `LEN SP MSG` (RFC 6587 octet counting)
    Octet,
}

/// The event mix, in weights.
#[derive(Clone, Debug, PartialEq)]
pub struct Mix {
    /// one weight per entry of [`OPS`]
    pub weights: Vec<u32>,
    /// share of fs operations that fail with `fs_access_denied_error`, per million
    pub denied_ppm: u32,
    /// share of operations that fail with another error, per million
    pub error_ppm: u32,
    /// share of clients with an IPv6 address, per million
    pub ipv6_ppm: u32,
    /// protocol names and weights
    pub protocols: Vec<(String, u32)>,
}

impl Default for Mix {
    fn default() -> Self {
        Mix {
            weights: OPS.iter().map(|o| o.weight).collect(),
            denied_ppm: 20_000,
            error_ppm: 20_000,
            ipv6_ppm: 150_000,
            protocols: [("smb2", 60), ("nfs3", 20), ("nfs4", 10), ("api", 10)]
                .into_iter()
                .map(|(p, w)| (p.to_string(), w))
                .collect(),
        }
    }
}

pub(super) fn parse_weight_list(spec: &str) -> anyhow::Result<Vec<(String, u32)>> {
    let mut out = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, w) = item
            .split_once('=')
            .with_context(|| format!("`{item}`: expected NAME=WEIGHT"))?;
        let w: u32 = w
            .trim()
            .parse()
            .with_context(|| format!("`{item}`: weight is not a whole number"))?;
        out.push((name.trim().to_string(), w));
    }
    Ok(out)
}

impl Mix {
    /// Overrides op weights from `op=weight,op=weight`; ops not named keep
    /// their default weight (name one with weight 0 to drop it).
    pub fn set_op_weights(&mut self, spec: &str) -> anyhow::Result<()> {
        for (name, w) in parse_weight_list(spec)? {
            let Some(i) = op_index(&name) else {
                let known: Vec<_> = OPS.iter().map(|o| o.name).collect();
                bail!("unknown operation `{name}`; known: {}", known.join(", "));
            };
            self.weights[i] = w;
        }
        Ok(())
    }

    /// Replaces the protocol weights from `smb2=60,nfs3=20,...`.
    pub fn set_protocols(&mut self, spec: &str) -> anyhow::Result<()> {
        let list = parse_weight_list(spec)?;
        if list.iter().all(|(_, w)| *w == 0) {
            bail!("protocols: at least one weight must be positive");
        }
        for (p, _) in &list {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.') {
                bail!("protocol `{p}`: use letters, digits and dots");
            }
        }
        self.protocols = list;
        Ok(())
    }
}

/// Everything that decides event content (the sink needs the same).
#[derive(Clone, Debug, PartialEq)]
pub struct GenConfig {
    pub seed: u64,
    pub format: Format,
    pub mix: Mix,
    /// cluster 0, node 1 runs the ransomware-like burst profile instead of the mix
    pub burst: bool,
    /// cluster names are `<prefix><index:03>`
    pub cluster_prefix: String,
    /// share of slots that are metadata changes on the namespace objects of
    /// [`crate::acl`] (ACL, protection, owner), per million; JSON only
    pub acl_ppm: u32,
}

impl Default for GenConfig {
    fn default() -> Self {
        GenConfig {
            seed: 1,
            format: Format::Json,
            mix: Mix::default(),
            burst: false,
            cluster_prefix: "qlg-c".to_string(),
            acl_ppm: 0,
        }
    }
}

/// The node that runs the burst profile when [`GenConfig::burst`] is set.
pub const BURST_NODE: (u16, u16) = (0, 1);
