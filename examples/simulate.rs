//! A traffic simulator: labelled JSON lines of legitimate users and SMS-pumping attacks,
//! for `smsfence replay`.
//!
//! ```sh
//! cargo run --release --example simulate -- --out /tmp/sim.jsonl
//! cargo run --release -- replay --rules rules /tmp/sim.jsonl --by-label
//! ```
//!
//! Deterministic for a given `--seed`. Every line carries `label`: `legit`, or the attack
//! scenario (`range_walk`, `distributed_pumping`, `slow_and_low`, `premium_rate`,
//! `sms_bombing`). Legitimate users spread over a day and many countries: most verify
//! within a minute, some retry after a minute, some never finish. Numbers are generated in
//! real mobile ranges and checked with smsfence's own normalizer.

use std::io::Write;

use smsfence::clock::Timestamp;
use smsfence::phone::{normalize, NumberFormat, NumberType};

/// xorshift64*: small, fast, deterministic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
    fn digits(&mut self, n: u32) -> String {
        (0..n)
            .map(|_| char::from(b'0' + self.below(10) as u8))
            .collect()
    }
}

/// (country, weight, mobile prefix choices, digits after the prefix)
const LEGIT: &[(&str, u64, &[&str], u32)] = &[
    (
        "US",
        30,
        &[
            "+1201", "+1212", "+1305", "+1312", "+1415", "+1512", "+1617", "+1702", "+1713",
            "+1917",
        ],
        7,
    ),
    ("GB", 12, &["+4474", "+4475", "+4477", "+4478", "+4479"], 8),
    (
        "DE",
        10,
        &["+49151", "+49152", "+49157", "+49160", "+49170", "+49176"],
        8,
    ),
    ("FR", 8, &["+336", "+337"], 8),
    ("IN", 10, &["+9198", "+9197", "+9199", "+9190"], 8),
    ("BR", 8, &["+55119", "+55219"], 8),
    ("ES", 5, &["+346"], 8),
    ("IT", 5, &["+393"], 9),
    ("AU", 4, &["+614"], 8),
    ("JP", 4, &["+8190", "+8180"], 8),
    ("MX", 4, &["+5255"], 8),
];

const T0: u64 = 1_795_305_600; // 2026-11-22T00:00:00Z

/// (ms, sequence, event, number, ip, user, label)
type Event = (
    u64,
    u64,
    String,
    String,
    Option<String>,
    Option<String>,
    &'static str,
);

struct Out<W: Write> {
    w: W,
    lines: u64,
}

impl<W: Write> Out<W> {
    #[allow(clippy::too_many_arguments)]
    fn event(
        &mut self,
        t: u64,
        event: &str,
        number: &str,
        ip: Option<&str>,
        user: Option<&str>,
        label: &str,
    ) {
        let ts = Timestamp::from_nanos(t * 1_000_000).to_rfc3339();
        let mut v = serde_json::json!({"ts": ts, "event": event, "number": number, "label": label});
        if let Some(ip) = ip {
            v["ip"] = ip.into();
        }
        if let Some(u) = user {
            v["user"] = u.into();
        }
        serde_json::to_writer(&mut self.w, &v).expect("write");
        self.w.write_all(b"\n").expect("write");
        self.lines += 1;
    }
}

fn valid_mobile(n: &str) -> bool {
    normalize(n, NumberFormat::E164, None).is_ok_and(|d| {
        d.is_valid()
            && matches!(
                d.number_type(),
                NumberType::Mobile | NumberType::FixedLineOrMobile
            )
    })
}

fn number(rng: &mut Rng, prefixes: &[&str], digits: u32) -> String {
    loop {
        let p = prefixes[rng.below(prefixes.len() as u64) as usize];
        let n = format!("{p}{}", rng.digits(digits));
        if valid_mobile(&n) {
            return n;
        }
    }
}

fn ip(rng: &mut Rng) -> String {
    format!(
        "{}.{}.{}.{}",
        11 + rng.below(200),
        rng.below(256),
        rng.below(256),
        1 + rng.below(254)
    )
}

fn main() {
    let mut out_path = String::from("sim.jsonl");
    let mut seed = 42u64;
    let mut users = 20_000u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--out" => out_path = args.next().expect("--out FILE"),
            "--seed" => seed = args.next().and_then(|s| s.parse().ok()).expect("--seed N"),
            "--users" => users = args.next().and_then(|s| s.parse().ok()).expect("--users N"),
            _ => {
                eprintln!("usage: simulate [--out FILE] [--seed N] [--users N]");
                std::process::exit(2);
            }
        }
    }
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    // Events are generated per actor, then sorted by time (ms, then generation order).
    let mut events: Vec<Event> = Vec::new();
    let mut seq = 0u64;
    let mut push = |events: &mut Vec<_>,
                    t: u64,
                    ev: &str,
                    n: &str,
                    ip: Option<String>,
                    user: Option<String>,
                    label: &'static str| {
        seq += 1;
        events.push((t, seq, ev.to_owned(), n.to_owned(), ip, user, label));
    };
    let day_ms = 86_400_000;
    let total_weight: u64 = LEGIT.iter().map(|c| c.1).sum();

    // Legitimate users over one day.
    for u in 0..users {
        let mut pick = rng.below(total_weight);
        let country = LEGIT.iter().find(|c| {
            if pick < c.1 {
                true
            } else {
                pick -= c.1;
                false
            }
        });
        let (_, _, prefixes, digits) = country.expect("weights cover the range");
        let n = number(&mut rng, prefixes, *digits);
        let user = format!("user-{u}");
        let addr = ip(&mut rng);
        let t = T0 * 1000 + rng.below(day_ms);
        push(
            &mut events,
            t,
            "send",
            &n,
            Some(addr.clone()),
            Some(user.clone()),
            "legit",
        );
        let roll = rng.below(100);
        if roll < 85 {
            let delay = 10_000 + rng.below(50_000);
            push(&mut events, t + delay, "verified", &n, None, None, "legit");
        } else if roll < 95 {
            // No code arrived (or was lost): retry after a minute or two, then verify.
            let retry = t + 61_000 + rng.below(60_000);
            push(
                &mut events,
                retry,
                "send",
                &n,
                Some(addr),
                Some(user),
                "legit",
            );
            if rng.chance(0.8) {
                push(
                    &mut events,
                    retry + 15_000 + rng.below(30_000),
                    "verified",
                    &n,
                    None,
                    None,
                    "legit",
                );
            }
        }
        // else: never finishes.
    }

    let attack_start = T0 * 1000 + 6 * 3_600_000;
    // 1. Range walk: consecutive numbers in one Zimbabwean block, every few seconds.
    let base: u64 = 263_771_200_000;
    for i in 0..2_000u64 {
        let n = format!("+{}", base + i);
        let addr = format!("45.{}.{}.{}", 10 + i % 7, i % 250, 1 + i % 200);
        push(
            &mut events,
            attack_start + i * 3_000,
            "send",
            &n,
            Some(addr),
            None,
            "range_walk",
        );
    }
    // 2. Distributed pumping: random numbers across Kyrgyz mobile prefixes, many IPs.
    let kg: &[&str] = &["+996555", "+996700", "+996770", "+996550", "+996222"];
    for i in 0..3_000u64 {
        let n = number(&mut rng, kg, 6);
        let addr = ip(&mut rng);
        push(
            &mut events,
            attack_start + 3_600_000 + i * 2_400,
            "send",
            &n,
            Some(addr),
            None,
            "distributed_pumping",
        );
    }
    // 3. Slow and low: one Sierra Leone send every few minutes for a day, each number once.
    let sl: &[&str] = &["+23276", "+23277", "+23278", "+23230", "+23233"];
    for i in 0..400u64 {
        let n = number(&mut rng, sl, 6);
        let addr = ip(&mut rng);
        push(
            &mut events,
            T0 * 1000 + i * 216_000 + rng.below(60_000),
            "send",
            &n,
            Some(addr),
            None,
            "slow_and_low",
        );
    }
    // 4. Premium-rate numbers.
    for i in 0..300u64 {
        let n = if i % 2 == 0 {
            format!("+44909{}", rng.digits(7))
        } else {
            format!("+1900{}", rng.digits(7))
        };
        push(
            &mut events,
            attack_start + i * 10_000,
            "send",
            &n,
            Some(ip(&mut rng)),
            None,
            "premium_rate",
        );
    }
    // 5. SMS bombing: one victim, from rotating IPs, for half an hour.
    let victim = number(&mut rng, &["+4474"], 8);
    for i in 0..600u64 {
        push(
            &mut events,
            attack_start + 7_200_000 + i * 3_000,
            "send",
            &victim,
            Some(ip(&mut rng)),
            None,
            "sms_bombing",
        );
    }

    events.sort_by_key(|e| (e.0, e.1));
    let file = std::fs::File::create(&out_path).expect("create the output file");
    let mut out = Out {
        w: std::io::BufWriter::new(file),
        lines: 0,
    };
    for (t, _, ev, n, ip, user, label) in &events {
        out.event(*t, ev, n, ip.as_deref(), user.as_deref(), label);
    }
    out.w.flush().expect("flush");
    eprintln!("wrote {} events to {out_path}", out.lines);
}
