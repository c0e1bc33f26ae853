//! The one test config builder (`Cfg`), its usual shapes (`config`, `blue_green`), and
//! `config_error` for configs that must be refused.

use std::net::SocketAddr;
use std::path::Path;

/// A config with one listener on port 0, one service `shop` with the given groups, and a
/// catch-all route. `extra` is appended to the service table (before its groups).
pub(crate) fn config(groups: &[(&str, &[SocketAddr])], service_extra: &str) -> String {
    let mut c = Cfg::new().service(service_extra);
    for (name, targets) in groups {
        c = c.group(name, targets);
    }
    c.build()
}

/// The usual `shop` service with groups `blue` and `green`, `blue` active.
pub(crate) fn blue_green(blue: SocketAddr, green: SocketAddr) -> Cfg {
    Cfg::new()
        .active("blue")
        .group("blue", &[blue])
        .group("green", &[green])
}

/// The test config builder: `[admin]` on port 0 with token `t0ken`, one listener `web` on
/// port 0, a catch-all route `all` to service `shop`, and the groups added. Each option
/// appends raw TOML at its place: `admin` to the admin table, `route` to the route, `top`
/// after the route (top-level tables such as `[[analysis]]` or `[store]`), `service` to the
/// service table before its groups.
#[derive(Clone, Default)]
pub(crate) struct Cfg {
    admin: String,
    route: String,
    top: String,
    service: String,
    listener: String,
    active: Option<String>,
    /// Where the listener and the admin API bind (port 0 unless set).
    binds: Option<(SocketAddr, SocketAddr)>,
    /// Name, targets, and raw TOML appended to the group's table.
    groups: Vec<(String, Vec<SocketAddr>, String)>,
}

fn push_line(to: &mut String, extra: &str) {
    to.push_str(extra);
    if !extra.is_empty() && !extra.ends_with('\n') {
        to.push('\n');
    }
}

impl Cfg {
    pub(crate) fn new() -> Cfg {
        Cfg::default()
    }

    pub(crate) fn admin(self, extra: &str) -> Cfg {
        self.append(|c| &mut c.admin, extra)
    }

    pub(crate) fn route(self, extra: &str) -> Cfg {
        self.append(|c| &mut c.route, extra)
    }

    pub(crate) fn top(self, extra: &str) -> Cfg {
        self.append(|c| &mut c.top, extra)
    }

    pub(crate) fn service(self, extra: &str) -> Cfg {
        self.append(|c| &mut c.service, extra)
    }

    pub(crate) fn active(mut self, group: &str) -> Cfg {
        self.active = Some(group.to_string());
        self
    }

    pub(crate) fn group(self, name: &str, targets: &[SocketAddr]) -> Cfg {
        self.group_with(name, targets, "")
    }

    /// A group with `extra` appended to its table (e.g. `protocol = "http2"`).
    pub(crate) fn group_with(mut self, name: &str, targets: &[SocketAddr], extra: &str) -> Cfg {
        self.groups
            .push((name.to_string(), targets.to_vec(), extra.to_string()));
        self
    }

    /// Binds the listener `web` and the admin API to these addresses instead of port 0 (for
    /// a process started from a file, whose ports the test must know beforehand).
    pub(crate) fn bound_to(mut self, web: SocketAddr, admin: SocketAddr) -> Cfg {
        self.binds = Some((web, admin));
        self
    }

    /// Appends `extra` to the listener's table (e.g. its certificates).
    pub(crate) fn listener(self, extra: &str) -> Cfg {
        self.append(|c| &mut c.listener, extra)
    }

    /// Appends `extra` as whole lines to the part `part` picks.
    fn append(mut self, part: impl FnOnce(&mut Cfg) -> &mut String, extra: &str) -> Cfg {
        push_line(part(&mut self), extra);
        self
    }

    /// The `[admin]` table and the listener `web`: the start of every test config, also of
    /// those whose routes and services a test writes by hand.
    pub(crate) fn head(&self) -> String {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let (web, admin) = self.binds.unwrap_or((any, any));
        let mut s = format!("[admin]\nbind = \"{admin}\"\ntoken = \"t0ken\"\n");
        s.push_str(&self.admin);
        s.push_str(&format!(
            "\n[[listener]]\nname = \"web\"\nbind = \"{web}\"\n"
        ));
        s.push_str(&self.listener);
        s.push('\n');
        s
    }

    pub(crate) fn build(&self) -> String {
        let mut s = self.head();
        s.push_str("[[route]]\nname = \"all\"\npriority = 1\nforward = \"shop\"\n");
        s.push_str(&self.route);
        s.push('\n');
        s.push_str(&self.top);
        s.push_str("\n[[service]]\nname = \"shop\"\n");
        if let Some(active) = &self.active {
            s.push_str(&format!("active = \"{active}\"\n"));
        }
        s.push_str(&self.service);
        s.push('\n');
        for (name, targets, extra) in &self.groups {
            let t: Vec<String> = targets.iter().map(|a| format!("\"{a}\"")).collect();
            s.push_str(&format!(
                "[[service.group]]\nname = \"{name}\"\ntargets = [{}]\n",
                t.join(", ")
            ));
            push_line(&mut s, extra);
        }
        s
    }
}

impl std::fmt::Display for Cfg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.build())
    }
}

/// Why a config text is invalid (paths relative to the working directory); panics if it is valid.
pub(crate) fn config_error(toml: &str) -> String {
    config_error_in(toml, Path::new("."))
}

/// Why a config text is invalid, its paths relative to `dir`; panics if it is valid.
pub(crate) fn config_error_in(toml: &str, dir: &Path) -> String {
    match switchyard::config::parse(toml, "t.toml", dir) {
        Ok(_) => panic!("the config was accepted:\n{toml}"),
        Err(e) => e.to_string(),
    }
}

/// Analysis `name` from `top` (its `[[analysis]]` tables) in `blue_green`'s configuration,
/// parsed as a file is: for tests that call the analysis functions themselves.
pub(crate) fn analysis_of(top: &str, name: &str) -> switchyard::analysis::AnalysisConfig {
    let at = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let text = blue_green(at(9001), at(9002)).top(top).build();
    let config = switchyard::config::parse(&text, "sy.toml", std::path::Path::new("."))
        .unwrap_or_else(|e| panic!("{e}"));
    config.analysis(name).expect("the analysis").clone()
}
