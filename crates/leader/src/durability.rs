//! Durability modes: what a write waits for before it is acknowledged.
//!
//! | mode | acknowledged when | a learner counts |
//! |---|---|---|
//! | `semi-sync` (default) | a majority of voters has the record durably (Raft commit) | no |
//! | `sync` | every other member, voters and learners, has applied it | yes |
//! | `replicas:K` | K other members have applied it | yes |
//!
//! Every mode first waits for the Raft commit and the leader's own apply; `sync` and
//! `replicas:K` then wait on [`crate::progress::Progress`] for the followers' reports.

use std::fmt;
use std::str::FromStr;

/// What a write waits for before it is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// A majority of voters has the record durably (Raft commit).
    #[default]
    SemiSync,
    /// Every other member (voters and learners) has applied the record.
    Sync,
    /// This many other members (voters or learners) have applied the record.
    Replicas(usize),
}

impl FromStr for Durability {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim().to_ascii_lowercase();
        match s.as_str() {
            "semi-sync" | "semisync" | "quorum" => Ok(Durability::SemiSync),
            "sync" | "all" => Ok(Durability::Sync),
            _ => match s.strip_prefix("replicas:").map(str::parse::<usize>) {
                Some(Ok(k)) if k > 0 => Ok(Durability::Replicas(k)),
                Some(_) => Err(format!("'{s}': replicas:K needs a whole number K of at least 1")),
                None => {
                    Err(format!("unknown durability '{s}' (use semi-sync, sync or replicas:K)"))
                }
            },
        }
    }
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Durability::SemiSync => write!(f, "semi-sync"),
            Durability::Sync => write!(f, "sync"),
            Durability::Replicas(k) => write!(f, "replicas:{k}"),
        }
    }
}

impl Durability {
    /// How many of `others` (members other than the leader) must have applied the record;
    /// `Err` when the mode can never be met with that many members.
    pub fn needed(&self, others: usize) -> Result<usize, String> {
        match *self {
            Durability::SemiSync => Ok(0),
            Durability::Sync => Ok(others),
            Durability::Replicas(k) if k <= others => Ok(k),
            Durability::Replicas(k) => Err(format!(
                "durability replicas:{k} cannot be met: the cluster has {others} other members"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use test_case::test_case;

    use super::*;

    #[test_case("semi-sync" => Ok(Durability::SemiSync))]
    #[test_case("SYNC" => Ok(Durability::Sync))]
    #[test_case("replicas:2" => Ok(Durability::Replicas(2)))]
    #[test_case("replicas:0" => matches Err(_))]
    #[test_case("replicas:x" => matches Err(_))]
    #[test_case("bogus" => matches Err(_))]
    fn parse(s: &str) -> Result<Durability, String> {
        s.parse()
    }

    #[test_case(Durability::SemiSync, 3 => Ok(0))]
    #[test_case(Durability::Sync, 3 => Ok(3))]
    #[test_case(Durability::Sync, 0 => Ok(0))]
    #[test_case(Durability::Replicas(2), 3 => Ok(2))]
    #[test_case(Durability::Replicas(4), 3 => matches Err(_))]
    fn needed(d: Durability, others: usize) -> Result<usize, String> {
        d.needed(others)
    }

    #[test]
    fn display_round_trips() {
        for d in [Durability::SemiSync, Durability::Sync, Durability::Replicas(3)] {
            assert_eq!(d.to_string().parse::<Durability>(), Ok(d));
        }
    }
}
