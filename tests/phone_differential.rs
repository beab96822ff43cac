//! The fast normalization path against the full `phonenumber` parse, number by number.
//!
//! Numbers are generated (deterministic seed) from every region's metadata: each
//! descriptor's example number, random digit mutations, lengths ±2, leading zeros after
//! the calling code, prefixes of examples completed at random, random +1 NANP area codes,
//! non-geographic codes, and digit strings for every calling code. Each goes through
//! `phone::fast::normalize` and `phone::normalize_full`; when the fast path answers, the
//! two must be equal in every field (E.164, calling code, country, type, validity).
//!
//! By default: every example number of every region plus random numbers, 30,000 in all
//! (≈ 35 s in a debug build). The full million, in release (≈ 20 s):
//! `PHONE_DIFF_N=1000000 cargo test --release --test phone_differential -- --nocapture`.

use phonenumber::metadata::DATABASE;
use smsfence::phone::{self, NumberFormat};

/// splitmix64: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn digit(&mut self) -> char {
        char::from(b'0' + self.below(10) as u8)
    }
    fn digits(&mut self, n: usize) -> String {
        (0..n).map(|_| self.digit()).collect()
    }
}

/// (calling code, example national numbers) for every region.
fn seeds() -> Vec<(u16, Vec<String>)> {
    let mut out = Vec::new();
    for m in DATABASE.iter() {
        let d = m.descriptors();
        let examples: Vec<String> = [
            Some(d.general()),
            d.fixed_line(),
            d.mobile(),
            d.toll_free(),
            d.premium_rate(),
            d.shared_cost(),
            d.personal_number(),
            d.voip(),
            d.pager(),
            d.uan(),
            d.voicemail(),
            d.emergency(),
            d.short_code(),
            d.standard_rate(),
            d.carrier(),
            d.no_international(),
        ]
        .into_iter()
        .flatten()
        .filter_map(|x| x.example().map(str::to_owned))
        .collect();
        out.push((m.country_code(), examples));
    }
    out.sort();
    out
}

fn mutate(rng: &mut Rng, cc: u16, examples: &[String]) -> String {
    let base = if examples.is_empty() {
        let len = 4 + rng.below(10) as usize;
        rng.digits(len)
    } else {
        examples[rng.below(examples.len() as u64) as usize].clone()
    };
    let mut n: Vec<char> = base.chars().collect();
    match rng.below(8) {
        0 => {}
        1 | 2 => {
            for _ in 0..1 + rng.below(3) {
                if !n.is_empty() {
                    let i = rng.below(n.len() as u64) as usize;
                    n[i] = rng.digit();
                }
            }
        }
        3 => {
            // length ±2
            let delta = rng.below(5) as i64 - 2;
            if delta < 0 {
                let keep = n.len().saturating_sub((-delta) as usize);
                n.truncate(keep);
            } else {
                for _ in 0..delta {
                    n.push(rng.digit());
                }
            }
        }
        4 => {
            // leading zeros
            for _ in 0..1 + rng.below(2) {
                n.insert(0, '0');
            }
        }
        5 => {
            // a prefix of the example, completed at random to a length ±2
            let keep = rng.below(n.len() as u64 + 1) as usize;
            let target = (n.len() as i64 + rng.below(5) as i64 - 2).max(1) as usize;
            n.truncate(keep);
            while n.len() < target {
                n.push(rng.digit());
            }
        }
        6 => {
            // any digits
            let len = 1 + rng.below(15) as usize;
            n = rng.digits(len).chars().collect();
        }
        _ => {
            // shift the tail (numerically adjacent numbers)
            let len = n.len();
            if len > 3 {
                let tail: String = rng.digits(3);
                n.truncate(len - 3);
                n.extend(tail.chars());
            }
        }
    }
    format!("{cc}{}", n.into_iter().collect::<String>())
}

fn generate(rng: &mut Rng, seeds: &[(u16, Vec<String>)]) -> String {
    match rng.below(20) {
        0 | 1 => {
            // +1 NANP: random area code, exchange and line.
            format!("1{}{}", 200 + rng.below(800), rng.digits(7))
        }
        2 => {
            let codes = [800u16, 808, 870, 878, 881, 882, 883, 888, 979];
            let cc = codes[rng.below(codes.len() as u64) as usize];
            let len = 6 + rng.below(8) as usize;
            format!("{cc}{}", rng.digits(len))
        }
        3 => {
            // any 1-3 digit start, any length
            let len = 3 + rng.below(16) as usize;
            rng.digits(len)
        }
        _ => {
            let (cc, ex) = &seeds[rng.below(seeds.len() as u64) as usize];
            mutate(rng, *cc, ex)
        }
    }
}

#[test]
fn fast_path_matches_full_parse() {
    let n: usize = std::env::var("PHONE_DIFF_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30_000);
    let seeds = seeds();
    assert!(seeds.len() > 240, "metadata for every region");
    let mut rng = Rng(0x5EED_5EED_2026);
    let (mut fast, mut valid_fast, mut valid_total, mut mismatches) = (0usize, 0, 0, Vec::new());

    // Every example number of every region, then random ones.
    let mut inputs: Vec<String> = seeds
        .iter()
        .flat_map(|(cc, ex)| ex.iter().map(move |e| format!("{cc}{e}")))
        .collect();
    while inputs.len() < n {
        inputs.push(generate(&mut rng, &seeds));
    }
    // Grouped by calling code: the full parse keeps its regexes in a 100-entry LRU cache,
    // and random order would make it recompile nearly every pattern on every number.
    inputs.sort_unstable();
    for digits in &inputs {
        let plus = format!("+{digits}");
        let full = phone::normalize_full(&plus, NumberFormat::E164, None);
        if full.as_ref().is_ok_and(|d| d.is_valid()) {
            valid_total += 1;
        }
        if let Some(got) = phone::fast::normalize(digits) {
            fast += 1;
            if got.is_valid() {
                valid_fast += 1;
            }
            if full.as_ref() != Ok(&got) || got.e164() != plus {
                mismatches.push(format!("{plus}: fast {got:?} full {full:?}"));
            }
        }
        // The public entry point, in each shape that reads as international (and digits
        // without `+` on an E.164 route with no region, which are not a number).
        if rng.below(16) == 0 {
            for (raw, format) in [
                (plus.clone(), NumberFormat::E164),
                (digits.clone(), NumberFormat::InternationalDigits),
                (format!("00{digits}"), NumberFormat::InternationalDigits),
                (digits.clone(), NumberFormat::E164),
            ] {
                let a = phone::normalize(&raw, format, None);
                let b = phone::normalize_full(&raw, format, None);
                if a != b {
                    mismatches.push(format!("{raw} ({format:?}): {a:?} vs {b:?}"));
                }
            }
        }
    }
    println!(
        "{} numbers: fast path answered {fast} ({:.1}%), {valid_fast} of {valid_total} valid",
        inputs.len(),
        100.0 * fast as f64 / inputs.len() as f64
    );
    assert!(
        mismatches.is_empty(),
        "{} mismatches, first: {:#?}",
        mismatches.len(),
        &mismatches[..mismatches.len().min(20)]
    );
    // The fast path must actually carry the common case: most valid numbers.
    assert!(
        valid_fast * 100 >= valid_total * 85,
        "fast path took only {valid_fast} of {valid_total} valid numbers"
    );
}

#[test]
fn fast_path_declines_what_it_does_not_model() {
    // Not digits, too short, leading zero, unknown code, too long.
    for d in [
        "",
        "4",
        "44",
        "0447700900123",
        "44 7700",
        "9991234567",
        "4477009001234567",
    ] {
        assert!(phone::fast::normalize(d).is_none(), "{d:?}");
    }
    let d = phone::fast::normalize("447400123456").expect("a UK mobile takes the fast path");
    assert_eq!(d.e164(), "+447400123456");
    assert_eq!(d.number_type(), phone::NumberType::Mobile);
}
