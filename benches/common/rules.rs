//! Shared by the benches: the shipped rules rewritten so that every request is forwarded.
//! (`benches/load/load.py` applies the same transformation to the files it serves.)

use smsfence::rules::RuleSet;

/// The shipped rules with every request forwarded, but every rule still evaluated and
/// every key still written (the worst case for memory: nothing is refused early): limits
/// keyed on the number as shipped (a distinct number never reaches them, and their keys
/// live as long as in production), every other limit raised out of reach, every
/// heuristic in shadow mode (its windows written as when enforced, never refusing).
pub fn all_forwarded_rules() -> RuleSet {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/rules");
    let mut files: Vec<(String, String)> = Vec::new();
    for e in std::fs::read_dir(dir).expect("the rules directory") {
        let p = e.expect("a dir entry").path();
        if p.extension().is_some_and(|x| x == "toml") {
            let text = std::fs::read_to_string(&p).expect("a rule file");
            files.push((p.display().to_string(), forwarded(&text)));
        }
    }
    files.sort();
    RuleSet::compile(files.iter().map(|(f, t)| (f.as_str(), t.as_str()))).expect("rules compile")
}

/// See [`all_forwarded_rules`]: rewrites one rule file, table by table.
fn forwarded(text: &str) -> String {
    let mut out = String::new();
    let mut block: Vec<&str> = Vec::new();
    let flush = |block: &mut Vec<&str>, out: &mut String| {
        let head = block.first().map_or("", |l| l.trim());
        let number_limit = head == "[[limit]]"
            && block
                .iter()
                .any(|l| l.trim().replace(' ', "") == "key=\"number\"");
        for (i, l) in block.iter().enumerate() {
            let t = l.trim_start();
            if head == "[[limit]]" && !number_limit && t.starts_with("rate =") {
                let unit = t.split('/').nth(1).unwrap_or("1s\"");
                out.push_str(&format!("rate = \"1000000000/{unit}\n"));
            } else if head == "[[limit]]" && !number_limit && t.starts_with("burst =") {
                out.push_str("burst = 1000000000\n");
            } else if !(head == "[[heuristic]]" && t.starts_with("mode =")) {
                out.push_str(l);
                out.push('\n');
            }
            if i == 0 && head == "[[heuristic]]" {
                out.push_str("mode = \"shadow\"\n");
            }
        }
        block.clear();
    };
    for l in text.lines() {
        if l.starts_with('[') {
            flush(&mut block, &mut out);
        }
        block.push(l);
    }
    flush(&mut block, &mut out);
    out
}
