//! The route table: method + path → route and operation, with no path prefix needed.
//!
//! Built once from the configured routes. Send endpoints are matched first, then API
//! roots (which pass through undecided), most specific first. Matching compares path
//! segments and allocates nothing; `{}` segments are captured for the preset.

use hyper::Method;

use crate::config::Route;
use crate::providers::Op;

/// What a matched request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A send or verify operation: decide it.
    Op(Op),
    /// Another request under a provider's API root: forward it undecided.
    Passthrough,
}

#[derive(Debug, Clone)]
struct Entry {
    route: usize,
    method: Option<Method>,
    /// Route prefix segments followed by pattern segments; `None` = capture.
    segments: Vec<Option<String>>,
    /// How many of `segments` are the route's prefix.
    prefix: usize,
    /// Ends in `/**`: any remainder matches.
    tail: bool,
    target: Target,
}

/// A match: which route, what to do, and where the captures are in the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match {
    /// Index into the route list.
    pub route: usize,
    /// Decide or pass through.
    pub target: Target,
    /// Byte ranges of captured segments in the path.
    pub captures: Vec<(usize, usize)>,
    /// Where the route's prefix ends in the path (0 without a prefix): what follows is
    /// the provider's own path, whatever empty segments the prefix was written with.
    pub prefix_end: usize,
}

/// The compiled table.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    entries: Vec<Entry>,
}

fn split(pattern: &str) -> impl Iterator<Item = &str> {
    pattern.split('/').filter(|s| !s.is_empty())
}

impl RouteTable {
    /// Builds the table for the given routes.
    pub fn new(routes: &[Route]) -> RouteTable {
        let mut ops = Vec::new();
        let mut roots = Vec::new();
        for (i, r) in routes.iter().enumerate() {
            let prefix: Vec<Option<String>> =
                split(&r.path_prefix).map(|s| Some(s.to_owned())).collect();
            let compile = |pattern: &str| -> (Vec<Option<String>>, bool) {
                let mut segs = prefix.clone();
                let mut tail = false;
                for s in split(pattern) {
                    match s {
                        "**" => tail = true,
                        "{}" => segs.push(None),
                        lit => segs.push(Some(lit.to_owned())),
                    }
                }
                (segs, tail)
            };
            let endpoints: Vec<(&str, &str, Op)> = match &r.generic {
                Some(g) => g
                    .methods
                    .iter()
                    .map(|m| (m.as_str(), g.path.as_str(), Op::Generic))
                    .collect(),
                None => r
                    .preset
                    .endpoints()
                    .iter()
                    .map(|e| (e.method, e.pattern, e.op))
                    .collect(),
            };
            for (method, pattern, op) in endpoints {
                let (segments, tail) = compile(pattern);
                ops.push(Entry {
                    route: i,
                    method: Method::from_bytes(method.as_bytes()).ok(),
                    segments,
                    prefix: prefix.len(),
                    tail,
                    target: Target::Op(op),
                });
            }
            let root_patterns: Vec<&str> = match &r.generic {
                Some(g) => g.roots.iter().map(String::as_str).collect(),
                None => r.preset.roots().to_vec(),
            };
            for root in root_patterns {
                let (segments, tail) = compile(root);
                roots.push(Entry {
                    route: i,
                    method: None,
                    segments,
                    prefix: prefix.len(),
                    tail,
                    target: Target::Passthrough,
                });
            }
        }
        // Most literal segments first, so `/sms/3/**` wins over `/sms/**`.
        roots.sort_by_key(|e| std::cmp::Reverse(e.segments.iter().filter(|s| s.is_some()).count()));
        ops.sort_by_key(|e| std::cmp::Reverse(e.segments.iter().filter(|s| s.is_some()).count()));
        ops.extend(roots);
        RouteTable { entries: ops }
    }

    /// Finds the route for a request.
    pub fn find(&self, method: &Method, path: &str) -> Option<Match> {
        // Methods compared ignoring case (`post` is an extension method to `http`): the
        // request's upper-cased once, when it has lower-case letters at all.
        let upper;
        let method = if method.as_str().bytes().any(|b| b.is_ascii_lowercase()) {
            upper = Method::from_bytes(method.as_str().to_ascii_uppercase().as_bytes()).ok();
            upper.as_ref().unwrap_or(method)
        } else {
            method
        };
        'entries: for e in &self.entries {
            // A HEAD is a GET to most servers (they run its handler and drop the body):
            // on a GET send endpoint it is decided as one.
            let other = |m: &Method| m != method && !(*m == Method::GET && method == Method::HEAD);
            if e.method.as_ref().is_some_and(other) {
                continue;
            }
            let mut captures = Vec::new();
            let mut prefix_end = 0;
            let mut segs = path_segments(path);
            for (i, want) in e.segments.iter().enumerate() {
                let Some((start, end)) = segs.next() else {
                    continue 'entries;
                };
                if i + 1 == e.prefix {
                    prefix_end = end;
                }
                match want {
                    Some(lit) if !same_segment(lit, &path[start..end]) => continue 'entries,
                    Some(_) => {}
                    None => captures.push((start, end)),
                }
            }
            if !e.tail && segs.next().is_some() {
                continue;
            }
            return Some(Match {
                route: e.route,
                target: e.target,
                captures,
                prefix_end,
            });
        }
        None
    }
}

/// Whether a path segment names the pattern's literal segment as a provider's server may
/// read it: percent-decoded, ignoring ASCII case and any `;parameters`. A send endpoint
/// written `Messages%2Ejson`, `messages.json` or `Messages.json;v=1` is still decided.
fn same_segment(lit: &str, seg: &str) -> bool {
    // Encoding and parameters only lengthen a segment.
    if seg.len() <= lit.len() {
        return seg.eq_ignore_ascii_case(lit);
    }
    if !seg.bytes().any(|b| b == b'%' || b == b';') {
        return false;
    }
    let seg = seg.split(';').next().unwrap_or(seg);
    if seg.contains('%') {
        percent_encoding::percent_decode_str(seg)
            .decode_utf8_lossy()
            .eq_ignore_ascii_case(lit)
    } else {
        seg.eq_ignore_ascii_case(lit)
    }
}

/// Whether a path reads differently before and after a server normalizes it: a `.` or
/// `..` segment (also percent-encoded), or an encoded `/` or `\` inside a segment. Such a
/// path could match no send endpoint here yet reach one upstream, so it is refused.
pub fn ambiguous_path(path: &str) -> bool {
    // A dot segment starts after a `/`; anything encoded has a `%`. Most paths have neither.
    if !path.contains('%') && !path.contains("/.") {
        return false;
    }
    path.split('/').any(|s| {
        let decoded = percent_encoding::percent_decode_str(s).decode_utf8_lossy();
        let decoded = decoded.split(';').next().unwrap_or("");
        decoded == "." || decoded == ".." || decoded.contains(['/', '\\'])
    })
}

/// Byte ranges of the non-empty segments of a path.
fn path_segments(path: &str) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut pos = 0;
    path.split('/').filter_map(move |s| {
        let start = pos;
        pos += s.len() + 1;
        (!s.is_empty()).then_some((start, start + s.len()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::default_routes;
    use crate::providers::twilio;

    #[test]
    fn every_preset_on_one_listener() {
        let routes = default_routes();
        let t = RouteTable::new(&routes);
        let m = t
            .find(&Method::POST, "/2010-04-01/Accounts/AC123/Messages.json")
            .unwrap();
        assert_eq!(m.target, Target::Op(Op::Twilio(twilio::Op::Message)));
        assert_eq!(routes[m.route].name, "twilio");
        let path = "/2010-04-01/Accounts/AC123/Messages.json";
        assert_eq!(&path[m.captures[0].0..m.captures[0].1], "AC123");
        // A status look-up under the same root passes through.
        let m = t
            .find(&Method::GET, "/2010-04-01/Accounts/AC123/Messages/SM1.json")
            .unwrap();
        assert_eq!(m.target, Target::Passthrough);
        // GET on a send path is not a send.
        assert_eq!(
            t.find(&Method::GET, "/2010-04-01/Accounts/AC123/Messages.json")
                .unwrap()
                .target,
            Target::Passthrough
        );
        assert!(t.find(&Method::POST, "/nothing/here").is_none());
        for (path, preset) in [
            ("/sms/json", "vonage"),
            ("/v2/verify", "vonage"),
            ("/v2/messages", "telnyx"),
            ("/v1/Account/MA1/Message/", "plivo"),
            ("/xms/v1/plan1/batches", "sinch"),
            ("/sms/3/messages", "infobip"),
            ("/sms/2/text/advanced", "infobip"),
            ("/v2/Services/VA1/Verifications", "twilio"),
        ] {
            let m = t
                .find(&Method::POST, path)
                .unwrap_or_else(|| panic!("{path}"));
            assert!(matches!(m.target, Target::Op(_)), "{path}");
            assert_eq!(routes[m.route].name, preset, "{path}");
        }
        // An Infobip report look-up goes to Infobip, not to Vonage's /sms/ root.
        let m = t.find(&Method::GET, "/sms/1/reports").unwrap();
        assert_eq!(routes[m.route].name, "infobip");
    }

    #[test]
    fn a_plivo_caller_id_check_is_told_from_a_caller_id() {
        use crate::providers::plivo;
        let t = RouteTable::new(&default_routes());
        let target = |method: Method, path: &str| {
            t.find(&method, path)
                .unwrap_or_else(|| panic!("{method} {path}"))
                .target
        };
        let check =
            "/v1/Account/MA1/VerifiedCallerId/Verification/f87836bd-f3c0-41bb-9498-125e6faaa4d4/";
        assert_eq!(
            target(Method::POST, check),
            Target::Op(Op::Plivo(plivo::Op::VerifyCallerIdCheck))
        );
        assert_eq!(
            target(Method::POST, "/v1/Account/MA1/VerifiedCallerId/"),
            Target::Op(Op::Plivo(plivo::Op::VerifyCallerId))
        );
        // A caller id's update, look-up and removal, and any other method on a
        // verification, pass through as before.
        let caller_id = "/v1/Account/MA1/VerifiedCallerId/+447400123456/";
        for (method, path) in [
            (Method::POST, caller_id),
            (Method::GET, caller_id),
            (Method::DELETE, caller_id),
            (Method::GET, "/v1/Account/MA1/VerifiedCallerId/"),
            (Method::GET, check),
            (Method::DELETE, check),
            (
                Method::POST,
                "/v1/Account/MA1/VerifiedCallerId/Verification/",
            ),
        ] {
            assert_eq!(
                target(method.clone(), path),
                Target::Passthrough,
                "{method} {path}"
            );
        }
    }

    #[test]
    fn path_prefix_is_part_of_the_match() {
        let mut routes = default_routes();
        routes.truncate(1);
        routes[0].path_prefix = "/eu".into();
        let t = RouteTable::new(&routes);
        assert!(t
            .find(&Method::POST, "/eu/2010-04-01/Accounts/A/Messages.json")
            .is_some());
        assert!(t
            .find(&Method::POST, "/2010-04-01/Accounts/A/Messages.json")
            .is_none());
        // The prefix ends where its last segment does, however it was written.
        for (path, end) in [
            ("/eu/2010-04-01/Accounts/A/Messages.json", 3),
            ("//eu/2010-04-01/Accounts/A/Messages.json", 4),
            ("/eu//2010-04-01/Accounts/A/Messages.json", 3),
        ] {
            let m = t.find(&Method::POST, path).unwrap();
            assert_eq!(m.prefix_end, end, "{path}");
        }
    }
}
