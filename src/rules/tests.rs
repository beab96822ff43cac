//! Rule-file tests: the schema, validation messages with file and line, merging.

use super::*;

fn errors(text: &str) -> Vec<String> {
    match RuleSet::compile([("r.toml", text)]) {
        Ok(_) => Vec::new(),
        Err(e) => e.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn shipped_rules_compile() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    let set = RuleSet::load_dir(&dir).unwrap_or_else(|e| panic!("{e:?}"));
    assert!(!set.limits.is_empty());
    assert!(!set.shadow_all);
    let embedded = RuleSet::embedded().unwrap();
    assert_eq!(
        embedded.summaries.len(),
        set.summaries.len(),
        "EMBEDDED lists every file in rules/"
    );
}

#[test]
fn unknown_field_is_reported_with_line_and_rule() {
    let text = "[[limit]]\nname = \"ok\"\nkey = \"number\"\nrate = \"1/60s\"\nburst = 1\n\n[[limit]]\nname = \"typo\"\nkey = \"number\"\nrat = \"1/60s\"\nburst = 1\n";
    let e = errors(text);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with("r.toml:10: typo: unknown field `rat`"),
        "{e:?}"
    );
}

#[test]
fn semantic_errors_are_all_reported() {
    let text = r#"
[[limit]]
name = "bad-rate"
key = "number"
rate = "fast"
burst = 1

[[limit]]
name = "bad-key"
key = "planet"
rate = "1/60s"
burst = 1

[[list]]
name = "bad-list"
action = "deny"
prefixes = ["4477", "+44x"]
countries = ["Britain", "UK"]

[[policy]]
name = "bad-type"
deny_types = ["premium"]

[[limit]]
name = "bad-rate"
key = "number"
rate = "1/60s"
burst = 1
"#;
    let e = errors(text);
    let joined = e.join("\n");
    assert!(
        joined.contains("r.toml:2: bad-rate: rate \"fast\""),
        "{joined}"
    );
    assert!(
        joined.contains("r.toml:8: bad-key: unknown key \"planet\""),
        "{joined}"
    );
    assert!(
        joined.contains("r.toml:14: bad-list: prefixes: \"4477\""),
        "{joined}"
    );
    assert!(
        joined.contains("r.toml:14: bad-list: prefixes: \"+44x\""),
        "{joined}"
    );
    assert!(
        joined.contains("r.toml:14: bad-list: countries: \"Britain\""),
        "{joined}"
    );
    // Two letters, but no country's: it would match no number, silently.
    assert!(
        joined.contains("r.toml:14: bad-list: countries: \"UK\" is not a country code (ISO 3166-1 alpha-2 with a numbering plan, e.g. GB, not UK)"),
        "{joined}"
    );
    assert!(
        joined.contains("r.toml:20: bad-type: deny_types: unknown number type \"premium\""),
        "{joined}"
    );
    assert!(
        joined.contains("r.toml:24: bad-rate: duplicate rule name (first defined at r.toml:2)"),
        "{joined}"
    );
}

#[test]
fn names_are_unique_across_files() {
    let a = "[[limit]]\nname = \"x\"\nkey = \"number\"\nrate = \"1/60s\"\nburst = 1\n";
    let e = RuleSet::compile([("a.toml", a), ("b.toml", a)]).unwrap_err();
    assert_eq!(
        e[0].to_string(),
        "b.toml:1: x: duplicate rule name (first defined at a.toml:1)"
    );
}

#[test]
fn toml_syntax_error_has_a_line() {
    let e = errors("[[limit]]\nname = \"x\"\nkey = number\n");
    assert_eq!(e.len(), 1);
    assert!(e[0].starts_with("r.toml:3: x: "), "{e:?}");
}

#[test]
fn rates_parse() {
    assert_eq!(parse_rate("1/60s").unwrap(), Duration::from_secs(60));
    assert_eq!(parse_rate("5/10m").unwrap(), Duration::from_secs(120));
    assert_eq!(parse_rate("100/hour").unwrap(), Duration::from_secs(36));
    assert_eq!(parse_rate("10/day").unwrap(), Duration::from_secs(8640));
    assert!(parse_rate("0/60s").is_err());
    assert!(parse_rate("1/0s").is_err());
    assert!(parse_rate("one/hour").is_err());
    assert!(parse_rate("1/fortnight").is_err());
    // Microseconds are the finest interval both stores keep.
    assert_eq!(parse_rate("1000000/1s").unwrap(), Duration::from_micros(1));
    assert_eq!(parse_rate("2000000/1s").unwrap(), Duration::from_micros(1));
    assert_eq!(
        parse_rate("4000000000/1s").unwrap(),
        Duration::from_micros(1)
    );
}

#[test]
fn off_rules_are_listed_but_not_compiled_in() {
    let set = RuleSet::compile([(
        "r.toml",
        "[[limit]]\nname = \"x\"\nmode = \"off\"\nkey = \"number\"\nrate = \"1/60s\"\nburst = 1\n",
    )])
    .unwrap();
    assert!(set.limits.is_empty());
    assert_eq!(set.summaries[0].mode, "off");
}

#[test]
fn stable_ids_survive_unrelated_changes() {
    let a = RuleSet::compile([(
        "r.toml",
        "[[limit]]\nname = \"x\"\nkey = \"number\"\nrate = \"1/60s\"\nburst = 1\n",
    )])
    .unwrap();
    let b = RuleSet::compile([(
        "r.toml",
        "[[limit]]\nname = \"x\"\nkey = \"number\"\nrate = \"5/60s\"\nburst = 3\n",
    )])
    .unwrap();
    let c = RuleSet::compile([(
        "r.toml",
        "[[limit]]\nname = \"x\"\nkey = \"country\"\nrate = \"1/60s\"\nburst = 1\n",
    )])
    .unwrap();
    assert_eq!(a.limits[0].id, b.limits[0].id);
    assert_ne!(a.limits[0].id, c.limits[0].id);
}

#[test]
fn skip_must_name_a_rule() {
    // "limit" for "limits": the allow list would silently skip nothing.
    let list = "[[list]]\nname = \"qa\"\naction = \"allow\"\nusers = [\"qa\"]\nskip = [\"limit\", \"later\"]\n";
    let e = RuleSet::compile([("a.toml", list)]).unwrap_err();
    let e: Vec<String> = e.iter().map(ToString::to_string).collect();
    assert!(e.contains(&"a.toml:1: qa: skip: \"limit\" is neither all, deny, policies, limits, heuristics nor a rule name".to_owned()), "{e:?}");
    // A rule defined in a later file is a rule name.
    let later = "[[limit]]\nname = \"later\"\nkey = \"number\"\nrate = \"1/60s\"\nburst = 1\n";
    let list =
        "[[list]]\nname = \"qa\"\naction = \"allow\"\nusers = [\"qa\"]\nskip = [\"later\"]\n";
    assert!(RuleSet::compile([("a.toml", list), ("b.toml", later)]).is_ok());
    // An empty list would skip nothing too.
    let list = "[[list]]\nname = \"qa\"\naction = \"allow\"\nusers = [\"qa\"]\nskip = []\n";
    let e = errors(list);
    assert_eq!(e, ["r.toml:1: qa: skip = [] skips nothing: list what the allow list skips, or leave skip out for \"all\""]);
}

#[test]
fn ip_spread_prefix_lengths_are_checked_like_a_limits() {
    let h = |extra: &str| {
        errors(&format!(
            "[[heuristic]]\nname = \"s\"\nkind = \"ip_spread\"\nwindow = \"1h\"\nmax_numbers = 3\n{extra}"
        ))
    };
    // Silently clamped to /32 before.
    let e = h("key = \"subnet\"\nipv4_prefix = 40\n");
    assert!(
        e.iter()
            .any(|e| e.contains("ipv4_prefix must be at most 32")),
        "{e:?}"
    );
    let e = h("key = \"subnet\"\nipv6_prefix = 200\n");
    assert!(
        e.iter().any(|e| e.contains("ipv6_prefix at most 128")),
        "{e:?}"
    );
    // Silently ignored before: the key is the IP.
    let e = h("ipv4_prefix = 24\n");
    assert!(
        e.iter()
            .any(|e| e.contains("only apply to key = \"subnet\"")),
        "{e:?}"
    );
    assert!(h("key = \"subnet\"\nipv4_prefix = 32\nipv6_prefix = 128\n").is_empty());
}

#[test]
fn max_block_below_block_for_is_an_error() {
    // The block would silently last block_for, not max_block.
    let e = errors("[[heuristic]]\nname = \"p\"\nkind = \"prefix_velocity\"\nwindow = \"10m\"\nmax_distinct = 8\nblock_for = \"1h\"\nmax_block = \"30m\"\n");
    assert_eq!(
        e,
        ["r.toml:1: p: max_block (\"30m\") must be at least block_for (\"1h\")"]
    );
}

#[test]
fn prefix_velocity_drop_digits_are_listed_once() {
    // [3, 3] counted every request twice in the same 1k block: max_requests = 4 refused
    // the third.
    let e = errors("[[heuristic]]\nname = \"pv\"\nkind = \"prefix_velocity\"\ndrop_digits = [3, 4, 3]\nwindow = \"10m\"\nmax_requests = 4\n");
    assert_eq!(e, ["r.toml:1: pv: drop_digits lists 3 twice"]);
}

#[test]
fn a_missing_field_names_the_rule_it_is_missing_from() {
    // toml reports a missing field at the table's `[[limit]]` header; the error named the
    // rule before it (`ok`, which has nothing wrong).
    let text = "[[limit]]\nname = \"ok\"\nkey = \"number\"\nrate = \"1/60s\"\nburst = 1\n\n[[limit]]\nname = \"no-rate\"\nkey = \"number\"\nburst = 1\n";
    assert_eq!(errors(text), ["r.toml:7: no-rate: missing field `rate`"]);
    // The same with no blank line between the rules, and as the file's first rule.
    let text = "[[limit]]\nname = \"ok\"\nkey = \"number\"\nrate = \"1/60s\"\nburst = 1\n[[limit]]\nname = \"no-rate\"\nkey = \"number\"\nburst = 1\n";
    assert_eq!(errors(text), ["r.toml:6: no-rate: missing field `rate`"]);
    assert_eq!(
        errors("[[limit]]\nname = \"first\"\nkey = \"number\"\nburst = 1\n"),
        ["r.toml:1: first: missing field `rate`"]
    );
}

#[test]
fn an_indented_rule_is_named_in_its_errors() {
    // TOML ignores indentation before a header; the name lookup must too, or a missing
    // field (reported at the header) or a bad key names the rule before.
    let text = "[[limit]]\nname = \"ok\"\nkey = \"number\"\nrate = \"1/60s\"\nburst = 1\n  [[limit]]\n  name = \"no-rate\"\n  key = \"number\"\n  burst = 1\n";
    assert_eq!(errors(text), ["r.toml:6: no-rate: missing field `rate`"]);
    let text = "[[limit]]\nname = \"ok\"\nkey = \"number\"\nrate = \"1/60s\"\nburst = 1\n\t[[limit]]\n\tname = \"typo\"\n\tkey = \"number\"\n\trate = \"1/60s\"\n\tburts = 1\n";
    let e = errors(text);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with("r.toml:10: typo: unknown field `burts`"),
        "{e:?}"
    );
}
