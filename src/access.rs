//! Who may use which route, and who gains or loses access between two configurations: the
//! report `portcullis diff` prints and every reload logs, so that a policy change can be
//! reviewed like code and audited after the fact.
//!
//! A route's audience is the principals that hold one of the roles it allows, or, for routes
//! that name no role, a class of caller: `anyone`, `any authenticated caller`, or any caller
//! presenting the route's factors. Factors and `when` conditions narrow a route further; a
//! change to them is reported as a change of requirements, since it can shut out (or let in)
//! callers that no principal name describes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::config::{Allow, Config, RouteSettings};

/// A class of caller, for routes that name no role.
const ANYONE: &str = "(anyone)";
const AUTHENTICATED: &str = "(any authenticated caller)";

/// What one route lets in: who, and on which further requirements.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Audience {
    who: BTreeSet<String>,
    requires: String,
}

/// How access to one route changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteChange {
    /// The route's name.
    pub route: String,
    /// Whether the route is new, gone, or in both configurations.
    pub kind: ChangeKind,
    /// Principals (or classes of caller) that can reach it now and could not before.
    pub gained: Vec<String>,
    /// Those that could reach it before and cannot now.
    pub lost: Vec<String>,
    /// The factors and conditions before and after, when they differ.
    pub requirements: Option<(String, String)>,
}

/// Whether a changed route exists in the old configuration, the new one, or both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    /// Only in the new configuration.
    Added,
    /// Only in the old one.
    Removed,
    /// In both.
    Changed,
}

impl ChangeKind {
    /// The word for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Added => "added",
            ChangeKind::Removed => "removed",
            ChangeKind::Changed => "changed",
        }
    }
}

/// Each route's audience, by route name.
fn audiences(config: &Config) -> BTreeMap<String, Audience> {
    config
        .routes
        .iter()
        .map(|r| (r.name.to_string(), audience(config, r)))
        .collect()
}

fn audience(config: &Config, route: &RouteSettings) -> Audience {
    let (who, requires) = match &route.allow {
        Allow::Anyone => (BTreeSet::from([ANYONE.to_owned()]), String::new()),
        Allow::Authenticated => (BTreeSet::from([AUTHENTICATED.to_owned()]), String::new()),
        Allow::Rules(rules) => {
            let who = if rules.roles.is_empty() {
                let class = if rules.factors.is_empty() {
                    ANYONE.to_owned()
                } else {
                    let f: Vec<&str> = rules.factors.iter().map(|f| f.as_str()).collect();
                    format!("(any caller presenting {})", f.join(" and "))
                };
                BTreeSet::from([class])
            } else {
                config
                    .principals
                    .iter()
                    .filter(|p| p.roles.iter().any(|r| rules.roles.contains(r)))
                    .map(|p| p.name.clone())
                    .collect()
            };
            let mut requires = Vec::new();
            if !rules.factors.is_empty() {
                let f: Vec<&str> = rules.factors.iter().map(|f| f.as_str()).collect();
                requires.push(format!("factors [{}]", f.join(", ")));
            }
            if !rules.when.is_empty() {
                requires.push(format!("when {:?}", rules.when));
            }
            (who, requires.join("; "))
        }
    };
    Audience { who, requires }
}

/// Who gains or loses access to each route from `old` to `new`, in route-name order; routes
/// whose audience and requirements are unchanged are left out.
pub fn diff(old: &Config, new: &Config) -> Vec<RouteChange> {
    let (before, after) = (audiences(old), audiences(new));
    let names: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    let empty = Audience {
        who: BTreeSet::new(),
        requires: String::new(),
    };
    names
        .into_iter()
        .filter_map(|name| {
            let (b, a) = (before.get(name), after.get(name));
            let kind = match (b, a) {
                (None, _) => ChangeKind::Added,
                (_, None) => ChangeKind::Removed,
                _ => ChangeKind::Changed,
            };
            let (b, a) = (b.unwrap_or(&empty), a.unwrap_or(&empty));
            let gained: Vec<String> = a.who.difference(&b.who).cloned().collect();
            let lost: Vec<String> = b.who.difference(&a.who).cloned().collect();
            let requirements = (kind == ChangeKind::Changed && a.requires != b.requires)
                .then(|| (b.requires.clone(), a.requires.clone()));
            (!gained.is_empty() || !lost.is_empty() || requirements.is_some()).then(|| {
                RouteChange {
                    route: name.clone(),
                    kind,
                    gained,
                    lost,
                    requirements,
                }
            })
        })
        .collect()
}

impl fmt::Display for RouteChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "route {:?}", self.route)?;
        match self.kind {
            ChangeKind::Added => f.write_str(" (new)")?,
            ChangeKind::Removed => f.write_str(" (removed)")?,
            ChangeKind::Changed => {}
        }
        f.write_str(":")?;
        let mut sep = " ";
        if !self.gained.is_empty() {
            write!(f, "{sep}gained {}", self.gained.join(", "))?;
            sep = "; ";
        }
        if !self.lost.is_empty() {
            write!(f, "{sep}lost {}", self.lost.join(", "))?;
            sep = "; ";
        }
        if let Some((before, after)) = &self.requirements {
            let show = |s: &str| {
                if s.is_empty() {
                    "none".to_owned()
                } else {
                    s.to_owned()
                }
            };
            write!(f, "{sep}requirements {} -> {}", show(before), show(after))?;
        }
        Ok(())
    }
}

/// Logs a reload's changes, one line per route, at info (each with `route`, `change`,
/// `gained` and `lost` fields for JSON logs).
pub fn log(changes: &[RouteChange]) {
    for c in changes {
        let requirements = c
            .requirements
            .as_ref()
            .map(|(b, a)| format!("{b} -> {a}"))
            .unwrap_or_default();
        tracing::info!(
            route = %c.route,
            change = c.kind.as_str(),
            gained = %c.gained.join(","),
            lost = %c.lost.join(","),
            requirements = %requirements,
            "access changed: {c}"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const BASE: &str = "tls:\n  cert: s.crt\n  key: s.key\n  client_ca: ca.crt\nupstreams:\n  app: { url: \"http://127.0.0.1:8080\" }\nprincipals:\n  - { name: ops, cert: { cn: \"ops-*\" }, roles: [admin, reader] }\n  - { name: readers, cert: { cn: \"reader-*\" }, roles: [reader] }\n";

    fn config(routes: &str) -> Config {
        crate::config::from_str(&format!("{BASE}routes:\n{routes}"), Path::new("g.yaml"))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    const ADMIN: &str = "  - { name: admin, match: { prefix: /admin/ }, upstream: app, allow: { roles: [admin] } }\n";
    const READER: &str =
        "  - { name: reader, match: { prefix: / }, upstream: app, allow: { roles: [reader] } }\n";

    #[test]
    fn nothing_changes_nothing_is_reported() {
        let c = config(&format!("{ADMIN}{READER}"));
        assert!(diff(&c, &c).is_empty());
    }

    #[test]
    fn widened_narrowed_added_and_removed_routes_are_reported() {
        let old = config(&format!("{ADMIN}{READER}"));
        let new = config(&format!(
            "{}  - {{ name: open, match: {{ exact: /ping }}, upstream: app, allow: anyone }}\n",
            ADMIN.replace("roles: [admin]", "roles: [reader]")
        ));
        let lines: Vec<String> = diff(&old, &new).iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "route \"admin\": gained readers",
                "route \"open\" (new): gained (anyone)",
                "route \"reader\" (removed): lost ops, readers",
            ]
        );
    }

    #[test]
    fn a_new_factor_is_a_change_of_requirements() {
        let old = config(ADMIN);
        let new = config(&ADMIN.replace(
            "roles: [admin]",
            "roles: [admin], factors: [certificate, api_key]",
        ));
        let changes = diff(&old, &new);
        assert_eq!(changes.len(), 1);
        assert_eq!(
            changes[0].to_string(),
            "route \"admin\": requirements none -> factors [certificate, api_key]"
        );
    }
}
