//! nftables as data: the table [`TABLE`] of a router namespace as typed
//! chains (hook, priority, policy), named sets (interval sets with their
//! elements) and rules (match, verdict, comment), rendered to one `nft -f`
//! script by [`Ruleset::render`] and compared by [`delta`]. Pure: no I/O.
//!
//! The isolated-network planner ([`crate::planner`]) and the VPC model
//! ([`crate::vpc::model`]) lay out the skeleton (the hooked base chains);
//! NAT, firewall, ACL ([`crate::vpc::acl`]), UDP load balancing
//! ([`crate::services::nftlb`]) and IPv6 ([`crate::vpc::ipv6`]) add their
//! rules and chains to it by name. `src/nft/golden/` holds the rendered
//! tables of an isolated network and a VPC using every contributor.
//!
//! Loading: the script starts with `table inet nb {}` + `delete table inet
//! nb` so the first load works and every load replaces the table in one
//! transaction. When the new ruleset only appends rules to the chains of
//! the installed one, [`delta`] yields `add rule` lines instead, which
//! avoids the kernel's grace-period wait on deletions; an unchanged ruleset
//! loads nothing.

use std::fmt::{self, Display, Write as _};

/// The nftables table owned by the executor in each namespace.
pub const TABLE: &str = "inet nb";

/// Where a base chain hooks in, with its type, priority and policy: NAT
/// chains accept what they do not translate, filter chains drop what they
/// do not accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Prerouting,
    Postrouting,
    Input,
    Forward,
}

impl Hook {
    /// The chain's name: the hook's.
    pub fn name(self) -> &'static str {
        match self {
            Hook::Prerouting => "prerouting",
            Hook::Postrouting => "postrouting",
            Hook::Input => "input",
            Hook::Forward => "forward",
        }
    }

    fn declaration(self) -> &'static str {
        match self {
            Hook::Prerouting => "type nat hook prerouting priority dstnat; policy accept;",
            Hook::Postrouting => "type nat hook postrouting priority srcnat; policy accept;",
            Hook::Input => "type filter hook input priority filter; policy drop;",
            Hook::Forward => "type filter hook forward priority filter; policy drop;",
        }
    }
}

/// What a rule does when its matches hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Drop,
    Return,
    Jump(String),
    /// `dnat ip to <target>`.
    Dnat(String),
    /// `snat ip to <target>`.
    Snat(String),
    /// `vmap { <key> : jump <chain>, … }` (the rule's matches name the
    /// looked-up expression).
    JumpMap(Vec<(String, String)>),
}

/// One rule: its matches (nft expressions, space separated; empty for an
/// unconditional verdict), its verdict and an optional comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub matches: String,
    pub verdict: Verdict,
    pub comment: Option<String>,
}

impl Rule {
    pub fn new(matches: impl Into<String>, verdict: Verdict) -> Rule {
        Rule {
            matches: matches.into(),
            verdict,
            comment: None,
        }
    }

    /// An unconditional verdict.
    pub fn always(verdict: Verdict) -> Rule {
        Rule::new(String::new(), verdict)
    }

    pub fn comment(mut self, comment: impl Into<String>) -> Rule {
        self.comment = Some(comment.into());
        self
    }
}

/// A named set: `type <key>`, `flags interval` when `interval`, elements
/// as nft writes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    pub name: String,
    pub key: &'static str,
    pub interval: bool,
    pub elements: Vec<String>,
}

/// A chain: a base chain when `hook` is set, else a regular one (reached
/// by `jump`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub name: String,
    pub hook: Option<Hook>,
    pub rules: Vec<Rule>,
}

impl Chain {
    /// A regular chain.
    pub fn new(name: impl Into<String>) -> Chain {
        Chain {
            name: name.into(),
            hook: None,
            rules: Vec::new(),
        }
    }

    /// A base chain, named after its hook.
    pub fn base(hook: Hook) -> Chain {
        Chain {
            hook: Some(hook),
            ..Chain::new(hook.name())
        }
    }
}

/// A table object, in declaration order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    Set(Set),
    Chain(Chain),
}

/// The whole table [`TABLE`]: its sets and chains in declaration order
/// (sets before the chains that use them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    pub objects: Vec<Object>,
}

impl Ruleset {
    /// Appends a chain; returns it for its rules.
    pub fn chain(&mut self, chain: Chain) -> &mut Chain {
        self.objects.push(Object::Chain(chain));
        match self.objects.last_mut() {
            Some(Object::Chain(c)) => c,
            _ => unreachable!("just pushed a chain"),
        }
    }

    pub fn set(&mut self, set: Set) {
        self.objects.push(Object::Set(set));
    }

    /// The chain called `name`, if declared.
    pub fn chain_mut(&mut self, name: &str) -> Option<&mut Chain> {
        self.objects.iter_mut().find_map(|o| match o {
            Object::Chain(c) if c.name == name => Some(c),
            _ => None,
        })
    }

    /// Appends `rules` to chain `name` (a contributor's named place); a
    /// chain that is not declared takes nothing.
    pub fn extend(&mut self, name: &str, rules: impl IntoIterator<Item = Rule>) {
        if let Some(c) = self.chain_mut(name) {
            c.rules.extend(rules);
        }
    }

    /// The `nft -f` script: creates the table if missing, deletes it and
    /// re-creates it complete, all in one transaction.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let _ = writeln!(
            out,
            "table {TABLE} {{}}\ndelete table {TABLE}\ntable {TABLE} {{"
        );
        for o in &self.objects {
            match o {
                Object::Set(s) => {
                    let _ = writeln!(out, "  set {} {{\n    type {}", s.name, s.key);
                    if s.interval {
                        out.push_str("    flags interval\n");
                    }
                    if !s.elements.is_empty() {
                        out.push_str("    elements = { ");
                        for (i, e) in s.elements.iter().enumerate() {
                            if i > 0 {
                                out.push_str(", ");
                            }
                            out.push_str(e);
                        }
                        out.push_str(" }\n");
                    }
                    out.push_str("  }\n");
                }
                Object::Chain(c) => {
                    let _ = writeln!(out, "  chain {} {{", c.name);
                    if let Some(h) = c.hook {
                        let _ = writeln!(out, "    {}", h.declaration());
                    }
                    for r in &c.rules {
                        let _ = writeln!(out, "    {r}");
                    }
                    out.push_str("  }\n");
                }
            }
        }
        out.push_str("}\n");
        out
    }
}

impl Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Accept => f.write_str("accept"),
            Verdict::Drop => f.write_str("drop"),
            Verdict::Return => f.write_str("return"),
            Verdict::Jump(c) => write!(f, "jump {c}"),
            Verdict::Dnat(t) => write!(f, "dnat ip to {t}"),
            Verdict::Snat(t) => write!(f, "snat ip to {t}"),
            Verdict::JumpMap(m) => {
                f.write_str("vmap { ")?;
                for (i, (k, c)) in m.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{k} : jump {c}")?;
                }
                f.write_str(" }")
            }
        }
    }
}

impl Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.matches.is_empty() {
            write!(f, "{} ", self.matches)?;
        }
        write!(f, "{}", self.verdict)?;
        if let Some(c) = &self.comment {
            write!(f, " comment \"{c}\"")?;
        }
        Ok(())
    }
}

/// A rule equals its nft text.
impl PartialEq<str> for Rule {
    fn eq(&self, other: &str) -> bool {
        let text = self.to_string();
        text == other
    }
}

impl PartialEq<&str> for Rule {
    fn eq(&self, other: &&str) -> bool {
        self == *other
    }
}

impl PartialEq<String> for Rule {
    fn eq(&self, other: &String) -> bool {
        self == other.as_str()
    }
}

/// When `new` only appends rules to chains of `old` (same objects in the
/// same order, same hooks, equal sets, every old chain a prefix of its new
/// self), the `nft` script that turns `old` into `new` with `add rule`
/// alone; `None` otherwise (load `new` whole). A transaction without
/// deletions avoids the kernel's grace-period wait, and the result is rule
/// for rule what loading `new` whole would give. An empty script means
/// nothing changed.
pub fn delta(old: &Ruleset, new: &Ruleset) -> Option<String> {
    if old.objects.len() != new.objects.len() {
        return None;
    }
    let mut script = String::new();
    for pair in old.objects.iter().zip(&new.objects) {
        match pair {
            (Object::Set(a), Object::Set(b)) if a == b => {}
            (Object::Chain(a), Object::Chain(b))
                if a.name == b.name && a.hook == b.hook && b.rules.starts_with(&a.rules) =>
            {
                for rule in &b.rules[a.rules.len()..] {
                    let _ = writeln!(script, "add rule {TABLE} {} {rule}", b.name);
                }
            }
            _ => return None,
        }
    }
    Some(script)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Ruleset {
        let mut rs = Ruleset::default();
        rs.set(Set {
            name: "s".into(),
            key: "ipv4_addr . inet_service",
            interval: true,
            elements: vec!["10.0.0.0/8 . 22".into(), "192.0.2.1 . 80-90".into()],
        });
        let c = rs.chain(Chain::base(Hook::Input));
        c.rules.push(Rule::new("iif \"lo\"", Verdict::Accept));
        c.rules.push(Rule::new(
            "ct original ip daddr",
            Verdict::JumpMap(vec![("203.0.113.10".into(), "in_a".into())]),
        ));
        rs.chain(Chain::new("in_a"))
            .rules
            .push(Rule::always(Verdict::Drop).comment("final"));
        rs
    }

    #[test]
    fn renders_one_transaction_in_declaration_order() {
        assert_eq!(
            sample().render(),
            "table inet nb {}\ndelete table inet nb\ntable inet nb {\n  set s {\n    type ipv4_addr . inet_service\n    flags interval\n    elements = { 10.0.0.0/8 . 22, 192.0.2.1 . 80-90 }\n  }\n  chain input {\n    type filter hook input priority filter; policy drop;\n    iif \"lo\" accept\n    ct original ip daddr vmap { 203.0.113.10 : jump in_a }\n  }\n  chain in_a {\n    drop comment \"final\"\n  }\n}\n"
        );
        let empty = Set {
            name: "e".into(),
            key: "ipv4_addr",
            interval: false,
            elements: vec![],
        };
        let mut rs = Ruleset::default();
        rs.set(empty);
        assert!(rs.render().contains("  set e {\n    type ipv4_addr\n  }\n"));
    }

    #[test]
    fn verdicts_render_as_nft_writes_them() {
        let r = |v| Rule::new("ip daddr 192.0.2.1", v).to_string();
        assert_eq!(r(Verdict::Return), "ip daddr 192.0.2.1 return");
        assert_eq!(r(Verdict::Jump("c".into())), "ip daddr 192.0.2.1 jump c");
        assert_eq!(
            r(Verdict::Dnat("10.0.0.1:22".into())),
            "ip daddr 192.0.2.1 dnat ip to 10.0.0.1:22"
        );
        assert_eq!(
            r(Verdict::Snat("192.0.2.9".into())),
            "ip daddr 192.0.2.1 snat ip to 192.0.2.9"
        );
        assert!(Rule::always(Verdict::Accept) == "accept");
        let accept = String::from("accept");
        assert!(Rule::always(Verdict::Accept) == accept);
    }

    #[test]
    fn delta_appends_rules_and_nothing_else() {
        let old = sample();
        assert_eq!(delta(&old, &old).unwrap(), "", "unchanged: nothing to load");
        let mut new = old.clone();
        new.extend("in_a", [Rule::new("ip saddr 10.0.0.1", Verdict::Accept)]);
        new.extend("missing", [Rule::always(Verdict::Accept)]);
        assert_eq!(
            delta(&old, &new).unwrap(),
            "add rule inet nb in_a ip saddr 10.0.0.1 accept\n"
        );
        // A removed or changed rule, a changed hook, a changed set or a new
        // object needs the full replace.
        assert_eq!(delta(&new, &old), None);
        let mut hooked = old.clone();
        if let Some(c) = hooked.chain_mut("input") {
            c.hook = Some(Hook::Forward);
        }
        assert_eq!(delta(&old, &hooked), None);
        let mut grown = old.clone();
        if let Some(Object::Set(s)) = grown.objects.first_mut() {
            s.elements.push("10.1.0.0/16 . 23".into());
        }
        assert_eq!(delta(&old, &grown), None, "a set is compared whole");
        let mut more = old.clone();
        more.chain(Chain::new("extra"));
        assert_eq!(delta(&old, &more), None);
        let mut renamed = old.clone();
        if let Some(c) = renamed.chain_mut("in_a") {
            c.name = "in_b".into();
        }
        assert_eq!(delta(&old, &renamed), None);
    }
}
