//! The operator's word on where a target's routes may go (`[targets.X.routes]`). A plugin
//! names a route; the host decides whether to use it. Everything is checked before a request
//! is sent: the URL's scheme and host (IP literals here, host names again after DNS in the
//! target's resolver, so a name cannot lead to an address the policy refuses), the headers,
//! and the model name, which becomes exactly one path segment.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use ipnet::IpNet;
use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{HOST, HeaderMap, HeaderName, HeaderValue};

use crate::config::Routes;

/// A route the policy refuses. The reason names what was refused and, where the operator can
/// allow it, the config key that would.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("target {target}: route refused: {reason}")]
pub struct Denial {
    pub target: String,
    pub reason: String,
}

/// Addresses no route may reach, whatever the config says. The unspecified address reaches
/// this machine when connected to; link-local is where cloud instance metadata (and the
/// machine's credentials) answer; the others are metadata or platform services outside
/// link-local. The first match names the reason.
const NEVER: &[(&str, &str)] = &[
    ("169.254.169.254/32", "the cloud instance metadata address"),
    ("169.254.0.0/16", "link-local"),
    ("0.0.0.0/8", "the unspecified address"),
    (
        "100.100.100.200/32",
        "a cloud metadata address (Alibaba Cloud)",
    ),
    ("168.63.129.16/32", "a cloud platform address (Azure)"),
    ("224.0.0.0/4", "multicast"),
    ("255.255.255.255/32", "broadcast"),
    ("::/128", "the unspecified address"),
    ("fe80::/10", "link-local"),
    (
        "fd00:ec2::254/128",
        "a cloud metadata address (AWS, over IPv6)",
    ),
    ("ff00::/8", "multicast"),
];

static NEVER_NETS: LazyLock<Vec<(IpNet, &'static str)>> = LazyLock::new(|| {
    NEVER
        .iter()
        .map(|(net, why)| (net.parse().expect("a valid built-in range"), *why))
        .collect()
});

/// The address a connection to `ip` really reaches, for the checks: IPv4-mapped IPv6
/// (`::ffff:a.b.c.d`) is IPv4, and so is the IPv4 address inside a NAT64 address
/// (`64:ff9b::/96`), which a NAT64 gateway forwards to.
fn effective(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let o = v6.octets();
                IpAddr::V4(Ipv4Addr::new(o[12], o[13], o[14], o[15]))
            } else {
                IpAddr::V6(v6)
            }
        }
        v4 => v4,
    }
}

/// Why `ip` can never be reached, if it cannot.
pub fn never_allowed(ip: IpAddr) -> Option<&'static str> {
    let ip = effective(ip);
    NEVER_NETS
        .iter()
        .find(|(net, _)| net.contains(&ip))
        .map(|(_, why)| *why)
}

/// What a header is to the policy.
enum HeaderClass {
    /// Can never come from a plugin.
    Never(&'static str),
    Host,
    /// Allowed only when the operator names it.
    Sensitive(&'static str),
    Plain,
}

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];
/// The gateway frames the body it sends; a second length or type would make the request
/// ambiguous to whoever parses it.
const FRAMING: &[&str] = &["content-length", "content-type"];
const CREDENTIALS: &[&str] = &[
    "authorization",
    "cookie",
    "api-key",
    "x-api-key",
    "x-auth-token",
    "x-access-token",
    "x-csrf-token",
    "x-xsrf-token",
    "x-goog-api-key",
    "x-functions-key",
    "ocp-apim-subscription-key",
];
/// Headers proxies and servers take as the request's real host, URL or client.
const OVERRIDING: &[&str] = &[
    "forwarded",
    "x-real-ip",
    "x-host",
    "x-original-host",
    "x-original-url",
    "x-rewrite-url",
];

fn classify(name: &HeaderName) -> HeaderClass {
    let n = name.as_str();
    if HOP_BY_HOP.contains(&n) || n.starts_with("proxy-") {
        HeaderClass::Never("a hop-by-hop header")
    } else if FRAMING.contains(&n) {
        HeaderClass::Never("set by the gateway")
    } else if name == HOST {
        HeaderClass::Host
    } else if CREDENTIALS.contains(&n) || n.starts_with("x-amz-") {
        HeaderClass::Sensitive("a credential header")
    } else if OVERRIDING.contains(&n) || n.starts_with("x-forwarded-") {
        HeaderClass::Sensitive("a Host- or client-overriding header")
    } else {
        HeaderClass::Plain
    }
}

#[derive(Debug)]
enum HostPattern {
    Exact(String),
    /// `*.example.com`, kept as `.example.com`: names below it, not the name itself.
    Below(String),
}

impl HostPattern {
    fn matches(&self, host: &str) -> bool {
        match self {
            Self::Exact(h) => h == host,
            Self::Below(suffix) => host.len() > suffix.len() && host.ends_with(suffix.as_str()),
        }
    }
}

/// Lowercase, without the root's trailing dot: how names are compared.
fn normal_name(host: &str) -> String {
    host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase()
}

fn parse_host_pattern(entry: &str) -> Result<HostPattern, String> {
    let e = normal_name(entry.trim());
    let name = e.strip_prefix("*.").unwrap_or(&e);
    if e.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .is_ok()
    {
        return Err(format!("{entry:?} is an address; list it in cidrs"));
    }
    let valid = !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    if !valid {
        return Err(format!(
            "{entry:?} is not a host name or \"*.\" followed by one (ASCII; give \
             internationalised names in their xn-- form)"
        ));
    }
    Ok(if e.starts_with("*.") {
        HostPattern::Below(format!(".{name}"))
    } else {
        HostPattern::Exact(name.to_string())
    })
}

fn parse_cidr(entry: &str) -> Result<IpNet, String> {
    let e = entry.trim();
    let net = e
        .parse::<IpNet>()
        .or_else(|_| e.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{entry:?} is not an address range such as 10.0.0.0/8"))?
        .trunc();
    if let Some((_, why)) = NEVER_NETS.iter().find(|(never, _)| never.contains(&net)) {
        return Err(format!("{entry:?} is {why}, which is never allowed"));
    }
    Ok(net)
}

/// One target's compiled route policy.
#[derive(Debug)]
pub struct RoutePolicy {
    target: String,
    schemes: Vec<String>,
    hosts: Vec<HostPattern>,
    cidrs: Vec<IpNet>,
    /// Sensitive headers the operator allowed by name.
    headers: HashSet<HeaderName>,
    allow_host_header: bool,
    pub max_response_bytes: u64,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub probe_timeout: Duration,
}

/// The parts of a route the data plane may use.
#[derive(Debug)]
pub struct Allowed {
    pub url: Url,
    pub headers: HeaderMap,
    /// The model name percent-encoded as one path segment.
    pub model_segment: String,
}

impl RoutePolicy {
    /// Compiles `[targets.<target>.routes]`; an error names the offending key.
    pub fn new(target: &str, cfg: &Routes, loopback_default: bool) -> Result<Self, String> {
        let key = |k: &str| format!("targets.{target}.routes.{k}");
        let (hosts, cidrs) = cfg.allowed(loopback_default);
        let mut schemes = Vec::new();
        for s in &cfg.schemes {
            let s = s.to_ascii_lowercase();
            if s != "http" && s != "https" {
                return Err(format!("{}: {s:?} is not http or https", key("schemes")));
            }
            schemes.push(s);
        }
        let hosts = hosts
            .iter()
            .map(|h| parse_host_pattern(h).map_err(|e| format!("{}: {e}", key("hosts"))))
            .collect::<Result<_, _>>()?;
        let cidrs = cidrs
            .iter()
            .map(|c| parse_cidr(c).map_err(|e| format!("{}: {e}", key("cidrs"))))
            .collect::<Result<_, _>>()?;
        let mut headers = HashSet::new();
        for h in &cfg.headers {
            let name = HeaderName::from_bytes(h.as_bytes())
                .map_err(|_| format!("{}: {h:?} is not a header name", key("headers")))?;
            match classify(&name) {
                HeaderClass::Never(why) => {
                    return Err(format!(
                        "{}: {h} is {why} and can never be set by a plugin",
                        key("headers")
                    ));
                }
                HeaderClass::Host => {
                    return Err(format!(
                        "{}: allow Host with {} = true",
                        key("headers"),
                        key("allow_host_header")
                    ));
                }
                HeaderClass::Sensitive(_) | HeaderClass::Plain => {
                    headers.insert(name);
                }
            }
        }
        for (k, v) in [
            ("max_response_bytes", cfg.max_response_bytes),
            ("connect_timeout_ms", cfg.connect_timeout_ms),
            ("request_timeout_ms", cfg.request_timeout_ms),
            ("probe_timeout_ms", cfg.probe_timeout_ms),
        ] {
            if v == 0 {
                return Err(format!("{}: must be positive", key(k)));
            }
        }
        Ok(Self {
            target: target.to_string(),
            schemes,
            hosts,
            cidrs,
            headers,
            allow_host_header: cfg.allow_host_header,
            max_response_bytes: cfg.max_response_bytes,
            connect_timeout: Duration::from_millis(cfg.connect_timeout_ms),
            request_timeout: Duration::from_millis(cfg.request_timeout_ms),
            probe_timeout: Duration::from_millis(cfg.probe_timeout_ms),
        })
    }

    pub fn target(&self) -> &str {
        &self.target
    }

    /// The config key `k` of this target's policy, for messages.
    pub fn key(&self, k: &str) -> String {
        format!("targets.{}.routes.{k}", self.target)
    }

    fn deny(&self, reason: String) -> Denial {
        Denial {
            target: self.target.clone(),
            reason,
        }
    }

    /// Checks a route as a plugin gave it.
    pub fn check(
        &self,
        url: &str,
        model_name: &str,
        headers: &[(String, String)],
    ) -> Result<Allowed, Denial> {
        Ok(Allowed {
            url: self.check_url(url)?,
            headers: self.check_headers(headers)?,
            model_segment: self.model_segment(model_name)?,
        })
    }

    pub fn check_url(&self, raw: &str) -> Result<Url, Denial> {
        let url =
            Url::parse(raw).map_err(|e| self.deny(format!("url {raw:?} is not a URL ({e})")))?;
        // Checked before anything echoes the URL: it would carry the credentials along.
        if !url.username().is_empty() || url.password().is_some() {
            return Err(self.deny(format!(
                "the url for host {} carries user info; routes may not carry credentials",
                url.host_str().unwrap_or("?")
            )));
        }
        if !self.schemes.iter().any(|s| s == url.scheme()) {
            return Err(self.deny(format!(
                "scheme {} of url {url} is not allowed (allowed: [{}]; {})",
                url.scheme(),
                self.schemes.join(", "),
                self.key("schemes")
            )));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(self.deny(format!(
                "url {url} has a query or fragment; a route's url is a base the gateway extends"
            )));
        }
        // The parser has already normalised the host: IPv4 in dotted decimal (whatever
        // spelling the plugin used), IPv6 in brackets.
        let Some(host) = url.host_str().filter(|h| !h.is_empty()) else {
            return Err(self.deny(format!("url {url} has no host")));
        };
        let literal = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(v6) => v6.parse::<IpAddr>().ok(),
            None => host.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
        };
        match literal {
            Some(ip) => self.check_addr(ip).map(|()| url.clone()),
            None => {
                let name = host;
                // An unlisted name may still resolve into the allowed ranges; the resolver
                // decides when it connects.
                if self.name_listed(name) || !self.cidrs.is_empty() {
                    Ok(url.clone())
                } else {
                    Err(self.deny(format!(
                        "host {name} is not allowed (list it in {})",
                        self.key("hosts")
                    )))
                }
            }
        }
    }

    /// An address named in a URL: literals bypass DNS, so they are checked here.
    fn check_addr(&self, ip: IpAddr) -> Result<(), Denial> {
        if let Some(why) = never_allowed(ip) {
            return Err(self.deny(format!("address {ip} is {why}, which is never allowed")));
        }
        if !self.in_cidrs(ip) {
            return Err(self.deny(format!(
                "address {ip} is not in an allowed range (add it to {})",
                self.key("cidrs")
            )));
        }
        Ok(())
    }

    fn in_cidrs(&self, ip: IpAddr) -> bool {
        let ip = effective(ip);
        self.cidrs.iter().any(|n| n.contains(&ip))
    }

    fn name_listed(&self, host: &str) -> bool {
        let host = normal_name(host);
        self.hosts.iter().any(|p| p.matches(&host))
    }

    /// The addresses `name` resolved to that a connection may use: never the never-allowed
    /// ones, and for a name the operator did not list, only those in the allowed ranges.
    pub fn admit_resolved(
        &self,
        name: &str,
        found: &[SocketAddr],
    ) -> Result<Vec<SocketAddr>, Denial> {
        let listed = self.name_listed(name);
        let admitted: Vec<SocketAddr> = found
            .iter()
            .filter(|a| never_allowed(a.ip()).is_none() && (listed || self.in_cidrs(a.ip())))
            .copied()
            .collect();
        if !admitted.is_empty() || found.is_empty() {
            return Ok(admitted);
        }
        let ips: Vec<String> = found.iter().map(|a| a.ip().to_string()).collect();
        let ips = ips.join(", ");
        Err(
            self.deny(match found.iter().find_map(|a| never_allowed(a.ip())) {
                Some(why) if listed || found.iter().all(|a| never_allowed(a.ip()).is_some()) => {
                    format!("host {name} resolves to {ips}: {why}, which is never allowed")
                }
                _ => format!(
                    "host {name} resolves to {ips}, outside the allowed ranges (list the name \
                     in {} or its addresses in {})",
                    self.key("hosts"),
                    self.key("cidrs")
                ),
            }),
        )
    }

    pub fn check_headers(&self, headers: &[(String, String)]) -> Result<HeaderMap, Denial> {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| self.deny(format!("header name {k:?} is not a valid header name")))?;
            let mut value = HeaderValue::from_str(v).map_err(|_| {
                self.deny(format!(
                    "header {name}: the value is not a valid header value (control characters \
                     or non-ASCII)"
                ))
            })?;
            match classify(&name) {
                HeaderClass::Never(why) => {
                    return Err(
                        self.deny(format!("header {name} is {why}; plugins can never set it"))
                    );
                }
                HeaderClass::Host if !self.allow_host_header => {
                    return Err(self.deny(format!(
                        "header host is not allowed (set {} = true)",
                        self.key("allow_host_header")
                    )));
                }
                HeaderClass::Host if map.contains_key(HOST) => {
                    return Err(self.deny("header host is given twice".into()));
                }
                HeaderClass::Sensitive(why) if !self.headers.contains(&name) => {
                    return Err(self.deny(format!(
                        "header {name} is {why} (allow it by name in {})",
                        self.key("headers")
                    )));
                }
                HeaderClass::Sensitive(_) => value.set_sensitive(true),
                HeaderClass::Host | HeaderClass::Plain => {}
            }
            map.append(name, value);
        }
        Ok(map)
    }

    /// The model name as one percent-encoded path segment: `/`, `?`, `#` and `%` cannot change
    /// the path or add a query.
    pub fn model_segment(&self, model: &str) -> Result<String, Denial> {
        // Every URL parser collapses these segments, whatever the encoding of the rest.
        if model.is_empty() || model == "." || model == ".." {
            return Err(self.deny(format!("model name {model:?} cannot be a path segment")));
        }
        Ok(escape_segment(model))
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub fn escape_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The DNS resolver of one target's HTTP client: resolves as the system does, then keeps
/// only the addresses the target's policy admits, so the connection can only go there.
pub struct PolicyResolver(pub Arc<RoutePolicy>);

impl Resolve for PolicyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.0.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let admitted = policy.admit_resolved(&host, &found)?;
            Ok(Box::new(admitted.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(toml: &str) -> RoutePolicy {
        let cfg: Routes = toml::from_str(toml).unwrap();
        RoutePolicy::new("t", &cfg, false).unwrap()
    }

    fn config_error(toml: &str) -> String {
        let cfg: Routes = toml::from_str(toml).unwrap();
        RoutePolicy::new("t", &cfg, false).unwrap_err()
    }

    fn reason(r: Result<impl std::fmt::Debug, Denial>) -> String {
        r.unwrap_err().reason
    }

    fn addr(s: &str) -> SocketAddr {
        SocketAddr::new(s.parse().unwrap(), 80)
    }

    #[test]
    fn never_allowed_covers_metadata_link_local_and_unspecified_in_every_spelling() {
        for ip in [
            "169.254.169.254",
            "169.254.170.2",
            "0.0.0.0",
            "100.100.100.200",
            "168.63.129.16",
            "::",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(
                never_allowed(ip.parse().unwrap()).is_some(),
                "{ip} must be refused"
            );
        }
        for ip in [
            "127.0.0.1",
            "::1",
            "10.1.2.3",
            "fd00:ec2::253",
            "2001:db8::1",
        ] {
            assert_eq!(never_allowed(ip.parse().unwrap()), None, "{ip}");
        }
    }

    #[test]
    fn literals_are_checked_against_the_never_list_before_the_operators_ranges() {
        let open = policy(r#"cidrs = ["0.0.0.0/0", "::/0"]"#);
        for url in [
            "http://169.254.169.254/latest/meta-data",
            "http://[::ffff:169.254.169.254]/",
            "http://[fe80::1]:8080/",
            "http://0.0.0.0:8080/",
            // The URL parser reads this as 169.254.169.254.
            "http://2852039166/",
            "http://[fd00:ec2::254]/",
        ] {
            let r = reason(open.check_url(url));
            assert!(r.contains("never allowed"), "{url}: {r}");
        }
        assert!(open.check_url("http://10.0.0.1:8080").is_ok());
        assert!(open.check_url("http://[2001:db8::1]/").is_ok());
    }

    #[test]
    fn literals_must_be_in_the_allowed_ranges() {
        let p = policy(r#"cidrs = ["10.0.0.0/8", "192.168.1.7"]"#);
        assert!(p.check_url("http://10.200.0.1:9000/").is_ok());
        assert!(p.check_url("http://192.168.1.7/").is_ok());
        let r = reason(p.check_url("http://192.168.1.8/"));
        assert!(
            r.contains("192.168.1.8") && r.contains("targets.t.routes.cidrs"),
            "{r}"
        );
        let r = reason(p.check_url("http://127.0.0.1/"));
        assert!(r.contains("targets.t.routes.cidrs"), "{r}");
    }

    #[test]
    fn the_local_plugin_defaults_to_loopback_and_others_to_nothing() {
        let local = RoutePolicy::new("local", &Routes::default(), true).unwrap();
        assert!(local.check_url("http://127.0.0.1:9000").is_ok());
        assert!(local.check_url("http://[::1]:9000").is_ok());
        assert!(local.check_url("http://10.0.0.1:9000").is_err());
        let other = RoutePolicy::new("kserve", &Routes::default(), false).unwrap();
        let r = reason(other.check_url("http://127.0.0.1:9000"));
        assert!(r.contains("targets.kserve.routes.cidrs"), "{r}");
        let r = reason(other.check_url("http://ingress.example.com"));
        assert!(r.contains("targets.kserve.routes.hosts"), "{r}");
        // Naming hosts replaces the loopback default, even for the local plugin.
        let cfg: Routes = toml::from_str(r#"hosts = ["example.com"]"#).unwrap();
        let listed = RoutePolicy::new("local", &cfg, true).unwrap();
        assert!(listed.check_url("http://127.0.0.1:9000").is_err());
    }

    #[test]
    fn host_names_match_exactly_or_below_a_wildcard_suffix() {
        let p = policy(r#"hosts = ["Ingress.Example.com", "*.svc.cluster.local"]"#);
        for ok in [
            "http://ingress.example.com/",
            "http://INGRESS.example.com./",
            "https://m.team-a.svc.cluster.local:8443/",
            "http://a.b.svc.cluster.local/",
        ] {
            assert!(p.check_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://svc.cluster.local/",
            "http://evil-svc.cluster.local/",
            "http://ingress.example.com.evil.net/",
            "http://xingress.example.com/",
        ] {
            let r = reason(p.check_url(bad));
            assert!(r.contains("targets.t.routes.hosts"), "{bad}: {r}");
        }
    }

    #[test]
    fn schemes_user_info_queries_and_fragments_are_refused() {
        let p = policy(r#"hosts = ["h"]"#);
        let r = reason(p.check_url("ftp://h/"));
        assert!(r.contains("targets.t.routes.schemes"), "{r}");
        let r = reason(p.check_url("file:///etc/passwd"));
        assert!(r.contains("scheme file"), "{r}");
        let r = reason(p.check_url("http://user:secret@h/"));
        assert!(r.contains("user info") && !r.contains("secret"), "{r}");
        assert!(reason(p.check_url("http://h/?x=1")).contains("query"));
        assert!(reason(p.check_url("http://h/#f")).contains("fragment"));
        assert!(reason(p.check_url("not a url")).contains("not a URL"));
        let https_only = policy("hosts = [\"h\"]\nschemes = [\"https\"]");
        assert!(https_only.check_url("http://h/").is_err());
        assert!(https_only.check_url("https://h/").is_ok());
    }

    #[test]
    fn resolved_addresses_are_filtered_by_the_policy() {
        let p = policy("hosts = [\"ingress.example.com\"]\ncidrs = [\"10.0.0.0/8\"]");
        // A listed name may resolve anywhere except the never-allowed addresses, which are
        // dropped rather than tried.
        assert_eq!(
            p.admit_resolved(
                "ingress.example.com",
                &[addr("169.254.169.254"), addr("203.0.113.5")]
            )
            .unwrap(),
            vec![addr("203.0.113.5")]
        );
        let r = reason(p.admit_resolved("ingress.example.com", &[addr("169.254.169.254")]));
        assert!(
            r.contains("169.254.169.254") && r.contains("never allowed"),
            "{r}"
        );
        // An unlisted name only reaches the allowed ranges.
        assert_eq!(
            p.admit_resolved("svc.internal", &[addr("127.0.0.1"), addr("10.1.1.1")])
                .unwrap(),
            vec![addr("10.1.1.1")]
        );
        let r = reason(p.admit_resolved("svc.internal", &[addr("127.0.0.1")]));
        assert!(
            r.contains("targets.t.routes.hosts") && r.contains("targets.t.routes.cidrs"),
            "{r}"
        );
        let r = reason(p.admit_resolved("metadata.google.internal", &[addr("169.254.169.254")]));
        assert!(r.contains("never allowed"), "{r}");
    }

    #[test]
    fn headers_are_refused_by_class_unless_allowed() {
        let p = policy(r#"hosts = ["h"]"#);
        let h = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        for (k, key) in [
            ("Connection", "can never"),
            ("Keep-Alive", "can never"),
            ("Proxy-Authorization", "can never"),
            ("TE", "can never"),
            ("Trailer", "can never"),
            ("Transfer-Encoding", "can never"),
            ("Upgrade", "can never"),
            ("Content-Length", "can never"),
            ("Host", "targets.t.routes.allow_host_header"),
            ("Authorization", "targets.t.routes.headers"),
            ("Cookie", "targets.t.routes.headers"),
            ("X-Amz-Security-Token", "targets.t.routes.headers"),
            ("X-Api-Key", "targets.t.routes.headers"),
            ("X-Forwarded-Host", "targets.t.routes.headers"),
            ("Forwarded", "targets.t.routes.headers"),
        ] {
            let r = reason(p.check_headers(&h(k, "v")));
            assert!(r.contains(key), "{k}: {r}");
        }
        assert!(p.check_headers(&h("X-Request-Source", "mlgw")).is_ok());
        assert!(reason(p.check_headers(&h("Bad Name", "v"))).contains("not a valid header name"));
        let r = reason(p.check_headers(&h("X-Ok", "a\r\nInjected: 1")));
        assert!(r.contains("not a valid header value"), "{r}");

        let allowing = policy(
            "hosts = [\"h\"]\nheaders = [\"x-api-key\", \"X-Forwarded-Host\"]\nallow_host_header = true",
        );
        let m = allowing
            .check_headers(&[
                ("X-API-Key".into(), "k".into()),
                ("X-Forwarded-Host".into(), "m".into()),
                ("Host".into(), "m.example.com".into()),
            ])
            .unwrap();
        assert_eq!(m["host"], "m.example.com");
        assert!(m["x-api-key"].is_sensitive());
        assert!(
            reason(allowing.check_headers(&h("Authorization", "Bearer x"))).contains("credential")
        );
        let twice = [("Host".into(), "a".into()), ("host".into(), "b".into())];
        assert!(reason(allowing.check_headers(&twice)).contains("twice"));
    }

    #[test]
    fn the_model_name_is_one_segment() {
        let p = policy(r#"hosts = ["h"]"#);
        assert_eq!(p.model_segment("iris").unwrap(), "iris");
        assert_eq!(
            p.model_segment("../../admin?x=1#f").unwrap(),
            "..%2F..%2Fadmin%3Fx%3D1%23f"
        );
        assert_eq!(p.model_segment("a/b").unwrap(), "a%2Fb");
        assert_eq!(p.model_segment("%2e%2e").unwrap(), "%252e%252e");
        assert_eq!(p.model_segment("ünï code").unwrap(), "%C3%BCn%C3%AF%20code");
        for bad in ["", ".", ".."] {
            assert!(p.model_segment(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn config_mistakes_name_their_key() {
        let e = config_error(r#"cidrs = ["169.254.0.0/16"]"#);
        assert!(
            e.starts_with("targets.t.routes.cidrs:") && e.contains("never"),
            "{e}"
        );
        let e = config_error(r#"cidrs = ["169.254.169.254"]"#);
        assert!(e.starts_with("targets.t.routes.cidrs:"), "{e}");
        let e = config_error(r#"cidrs = ["10.0.0.0/33"]"#);
        assert!(e.starts_with("targets.t.routes.cidrs:"), "{e}");
        let e = config_error(r#"hosts = ["10.0.0.1"]"#);
        assert!(
            e.starts_with("targets.t.routes.hosts:") && e.contains("cidrs"),
            "{e}"
        );
        let e = config_error(r#"hosts = ["*"]"#);
        assert!(e.starts_with("targets.t.routes.hosts:"), "{e}");
        let e = config_error(r#"hosts = ["a.*.com"]"#);
        assert!(e.starts_with("targets.t.routes.hosts:"), "{e}");
        let e = config_error(r#"headers = ["Connection"]"#);
        assert!(
            e.starts_with("targets.t.routes.headers:") && e.contains("never"),
            "{e}"
        );
        let e = config_error(r#"headers = ["Host"]"#);
        assert!(e.contains("allow_host_header"), "{e}");
        let e = config_error(r#"schemes = ["ftp"]"#);
        assert!(e.starts_with("targets.t.routes.schemes:"), "{e}");
        let e = config_error("max_response_bytes = 0");
        assert!(e.starts_with("targets.t.routes.max_response_bytes:"), "{e}");
    }
}
