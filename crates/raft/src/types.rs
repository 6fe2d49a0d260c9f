//! The openraft type configuration: what a log entry carries and how nodes are named.
//!
//! Keel uses classic Raft leader ids (one leader per term, `leader_id_std`), so a log id is
//! `(term, index)` and the WAL frame header can carry both as plain numbers.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A node's identity in Raft: the number `keel serve --id` gives, or for a name, a number
/// derived from it ([`NodeName`]).
pub type NodeId = u64;

/// The longest node name `--id` accepts.
pub const MAX_NAME_LEN: usize = 64;

/// A node as the operator names it (`keel serve --id`, `keel admin remove …`): a positive
/// number, which is its Raft [`NodeId`] as it has always been, or a name such as `keel-0` (up
/// to [`MAX_NAME_LEN`] characters of `A-Z a-z 0-9 . _ -`, starting with a letter or digit),
/// whose Raft id is derived from it ([`NodeName::id_of_name`]: the first 63 bits of its
/// SHA-256 with the top bit set, so it never equals a numeric id below 2^63). The same name always maps to the same id, so any node, and
/// any version that knows the rule, finds a member by its name without asking; the name itself
/// is kept in the membership ([`MemberAddr::name`]) to be shown.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeName {
    id: NodeId,
    name: Option<String>,
}

impl NodeName {
    /// A numeric id as it is.
    pub fn numeric(id: NodeId) -> NodeName {
        NodeName { id, name: None }
    }

    /// Reads an id as the operator gives it: digits are a number (positive, at most
    /// `u64::MAX`), anything else a name (see the type's docs; it must start with a letter or a
    /// digit). The error says what is wrong.
    pub fn parse(s: &str) -> Result<NodeName, String> {
        if s.is_empty() {
            return Err("a node id must not be empty".into());
        }
        if s.bytes().all(|b| b.is_ascii_digit()) {
            return match s.parse::<NodeId>() {
                Ok(0) => Err("node id 0 is not allowed: a numeric node id must be positive".into()),
                Ok(id) => Ok(NodeName::numeric(id)),
                Err(_) => Err(format!(
                    "node id {s} is too large: a numeric node id is at most {}",
                    NodeId::MAX
                )),
            };
        }
        if s.len() > MAX_NAME_LEN {
            return Err(format!(
                "node name '{s}' is {} characters long: at most {MAX_NAME_LEN} are allowed",
                s.len()
            ));
        }
        if let Some(bad) = s.chars().find(|c| !(c.is_ascii_alphanumeric() || ".-_".contains(*c))) {
            return Err(format!(
                "node name '{s}' has the character {bad:?}: a node id is a positive number or a name of letters, digits, '.', '_' and '-'"
            ));
        }
        if !s.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            return Err(format!("node name '{s}' must start with a letter or a digit"));
        }
        Ok(NodeName { id: NodeName::id_of_name(s), name: Some(s.to_string()) })
    }

    /// The Raft id of the name `name` (not checked): the first 8 bytes of its SHA-256, big
    /// endian, with the top bit set. Part of the on-disk and wire formats: never change it.
    pub fn id_of_name(name: &str) -> NodeId {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(name.as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        NodeId::from_be_bytes(first) | (1 << 63)
    }

    /// The Raft id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The name, for a node named by one (`None` for a numeric id).
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The name, owned (`None` for a numeric id).
    pub fn into_name(self) -> Option<String> {
        self.name
    }

    /// The node named by member `id` with addresses `node`: its name if it has one.
    pub fn of_member(id: NodeId, node: &MemberAddr) -> NodeName {
        NodeName { id, name: node.name.clone() }
    }
}

impl std::str::FromStr for NodeName {
    type Err = String;
    fn from_str(s: &str) -> Result<NodeName, String> {
        NodeName::parse(s)
    }
}

/// The name, or the number.
impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(name) => f.write_str(name),
            None => write!(f, "{}", self.id),
        }
    }
}

/// A Raft term.
pub type Term = wal::Term;

/// A log index: the position of an entry in the Raft log, which is also its LSN.
pub type Lsn = wal::Lsn;

/// Where to reach a member of the cluster: its Raft (node-to-node) address and its client
/// HTTP address, as it advertises them. openraft keeps one per member in every membership
/// config (its `Node` type), so this is part of the Raft log and of snapshots on disk: its
/// serialized form (`{"raft_addr": …, "http_addr": …}`) must not change. A node named by a
/// name rather than a number carries it too (`"name": …`), omitted for numeric ids, so their
/// members serialize, and hash into the apply hash, exactly as before names existed.
///
/// Binary formats (postcard: the replication stream) are not self-describing,
/// so they cannot leave a field out: there the form stays the two strings it always was, and a
/// name rides in the second, `<http_addr>\n<name>` (neither an address nor a name holds a
/// newline). Numeric members encode byte for byte as before in both kinds of format.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberAddr {
    /// `host:port` of the node's Raft RPC listener.
    pub raft_addr: String,
    /// `host:port` of the node's client HTTP API.
    pub http_addr: String,
    /// The node's name (`--id keel-0`); `None` for a numeric id. Its Raft id is
    /// [`NodeName::id_of_name`] of it.
    pub name: Option<String>,
}

/// Where a binary format puts a name: after the HTTP address and this separator.
const NAME_SEPARATOR: char = '\n';

impl Serialize for MemberAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let named = s.is_human_readable() && self.name.is_some();
        let mut out = s.serialize_struct("MemberAddr", if named { 3 } else { 2 })?;
        out.serialize_field("raft_addr", &self.raft_addr)?;
        match &self.name {
            Some(name) if named => {
                out.serialize_field("http_addr", &self.http_addr)?;
                out.serialize_field("name", name)?;
            }
            Some(name) => out.serialize_field(
                "http_addr",
                &format!("{}{NAME_SEPARATOR}{name}", self.http_addr),
            )?,
            None => out.serialize_field("http_addr", &self.http_addr)?,
        }
        out.end()
    }
}

impl<'de> Deserialize<'de> for MemberAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<MemberAddr, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename = "MemberAddr")]
        struct Text {
            raft_addr: String,
            http_addr: String,
            #[serde(default)]
            name: Option<String>,
        }
        #[derive(Deserialize)]
        #[serde(rename = "MemberAddr")]
        struct Binary {
            raft_addr: String,
            http_addr: String,
        }
        if d.is_human_readable() {
            let t = Text::deserialize(d)?;
            return Ok(MemberAddr { raft_addr: t.raft_addr, http_addr: t.http_addr, name: t.name });
        }
        let b = Binary::deserialize(d)?;
        Ok(match b.http_addr.split_once(NAME_SEPARATOR) {
            Some((http, name)) => MemberAddr {
                raft_addr: b.raft_addr,
                http_addr: http.to_string(),
                name: Some(name.to_string()),
            },
            None => MemberAddr { raft_addr: b.raft_addr, http_addr: b.http_addr, name: None },
        })
    }
}

impl MemberAddr {
    /// The addresses of a node without a name.
    pub fn new(raft_addr: impl Into<String>, http_addr: impl Into<String>) -> MemberAddr {
        MemberAddr { raft_addr: raft_addr.into(), http_addr: http_addr.into(), name: None }
    }

    /// How member `id` with these addresses is shown: its name, or its number.
    pub fn label(&self, id: NodeId) -> String {
        self.name.clone().unwrap_or_else(|| id.to_string())
    }
}

impl fmt::Display for MemberAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{raft: {}, http: {}}}", self.raft_addr, self.http_addr)
    }
}

openraft::declare_raft_types!(
    /// Keel's Raft types: entries carry a [`wal::Record`]; applying answers nothing, because the
    /// leader computed every statement's result when it executed the request speculatively.
    pub TypeConfig:
        D = wal::Record,
        R = (),
        NodeId = NodeId,
        Node = MemberAddr,
        Term = Term,
        LeaderId = openraft::impls::leader_id_std::LeaderId<Term, NodeId>,
);

/// A log id: `(term of the leader that wrote it, index)`.
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
/// A log entry as openraft sees it.
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
/// A vote as openraft persists it.
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
/// A membership config together with the log id that introduced it.
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;

#[cfg(test)]
mod tests {
    use super::*;

    /// Membership configs in the Raft log and in snapshots hold this form; a change would
    /// make existing data directories unreadable.
    #[test]
    fn serialized_form_is_stable() {
        let addr = MemberAddr::new("10.0.0.1:4002", "10.0.0.1:4001");
        let json = r#"{"raft_addr":"10.0.0.1:4002","http_addr":"10.0.0.1:4001"}"#;
        assert_eq!(serde_json::to_string(&addr).unwrap(), json);
        assert_eq!(serde_json::from_str::<MemberAddr>(json).unwrap(), addr);
    }

    /// In postcard (the replication stream) a numeric member is the two strings it
    /// always was, and a named one reads back with its name.
    #[test]
    fn binary_form_is_stable() {
        #[derive(Serialize)]
        struct Before {
            raft_addr: String,
            http_addr: String,
        }
        let addr = MemberAddr::new("10.0.0.1:4002", "10.0.0.1:4001");
        let before =
            Before { raft_addr: addr.raft_addr.clone(), http_addr: addr.http_addr.clone() };
        let bytes = postcard::to_allocvec(&addr).unwrap();
        assert_eq!(bytes, postcard::to_allocvec(&before).unwrap());
        assert_eq!(postcard::from_bytes::<MemberAddr>(&bytes).unwrap(), addr);
        let named = MemberAddr { name: Some("keel-0".into()), ..addr };
        let bytes = postcard::to_allocvec(&named).unwrap();
        assert_eq!(postcard::from_bytes::<MemberAddr>(&bytes).unwrap(), named);
    }

    /// A named member adds its name, and reads back; the form without it is unchanged.
    #[test]
    fn a_name_is_an_optional_field() {
        let mut addr = MemberAddr::new("10.0.0.1:4002", "10.0.0.1:4001");
        addr.name = Some("keel-0".into());
        let json = r#"{"raft_addr":"10.0.0.1:4002","http_addr":"10.0.0.1:4001","name":"keel-0"}"#;
        assert_eq!(serde_json::to_string(&addr).unwrap(), json);
        assert_eq!(serde_json::from_str::<MemberAddr>(json).unwrap(), addr);
        assert_eq!(addr.label(7), "keel-0");
        assert_eq!(MemberAddr::new("a", "b").label(7), "7");
    }

    #[test]
    fn numeric_ids_mean_what_they_always_did() {
        for (text, id) in [("1", 1), ("42", 42), ("007", 7), ("18446744073709551615", u64::MAX)] {
            let n = NodeName::parse(text).unwrap();
            assert_eq!((n.id(), n.name()), (id, None), "{text}");
            assert_eq!(n.to_string(), id.to_string());
        }
    }

    #[test]
    fn names_map_to_stable_ids_with_the_top_bit_set() {
        let n = NodeName::parse("keel-0").unwrap();
        assert_eq!(n.name(), Some("keel-0"));
        assert_eq!(n.to_string(), "keel-0");
        // Pinned: the id is in every membership entry and snapshot of a named node.
        assert_eq!(n.id(), 0xabeb_dbce_232f_8d8a_u64, "{:#x}", n.id());
        assert_eq!(NodeName::parse("keel-0").unwrap(), n);
        assert_ne!(NodeName::parse("keel-1").unwrap().id(), n.id());
        for name in
            ["a", "keel-0", "node.1", "A_b-c.D", "x1", "1a", "1.5", &"n".repeat(MAX_NAME_LEN)]
        {
            let id = NodeName::parse(name).unwrap().id();
            assert!(id >= 1 << 63, "{name}: {id:#x}");
            assert_eq!(id, NodeName::id_of_name(name));
        }
    }

    #[test]
    fn bad_ids_are_refused_with_the_reason() {
        let err = |s: &str| NodeName::parse(s).unwrap_err();
        assert!(err("").contains("empty"), "{}", err(""));
        assert!(err("0").contains("positive"), "{}", err("0"));
        assert!(err("18446744073709551616").contains("too large"));
        assert!(err(&"n".repeat(MAX_NAME_LEN + 1)).contains("at most 64"));
        for bad in ["keel 0", "a/b", "é", "pod:1", "+5", "-5x!"] {
            assert!(err(bad).contains("has the character"), "{bad}: {}", err(bad));
        }
        for bad in ["-", "-1", ".", "..", "_a"] {
            assert!(err(bad).contains("must start with"), "{bad}: {}", err(bad));
        }
    }
}
