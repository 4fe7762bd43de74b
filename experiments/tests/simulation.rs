//! Seeded simulations of whole experiments through [`analyse`]: the error rate under repeated
//! looks (A/A), power and coverage for a real effect, and sample-ratio mismatch detection with
//! exact counts and with sketches.
//!
//! Users arrive one at a time with Bernoulli outcomes from a splitmix64 generator, so every run
//! sees the same data.

use flagstaff_experiments::stats::normal_quantile;
use flagstaff_experiments::{analyse, ArmInput, DistinctCount, MetricInput, Report, Settings};

/// Sebastiano Vigna's splitmix64: tiny, seedable, good enough for simulations.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) from the top 53 bits.
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    fn bernoulli(&mut self, p: f64) -> bool {
        self.uniform() < p
    }
}

const LOOKS: u64 = 30;
const USERS_PER_ARM: u64 = 20_000;
const METRIC: &str = "conversion";

/// One arm with exact counts: `users` users of whom `converters` converted once each.
fn arm(variant: &str, users: u64, converters: u64) -> ArmInput {
    ArmInput {
        variant: variant.to_owned(),
        weight: 50.0,
        exposures: users,
        users: users as f64,
        metrics: vec![MetricInput {
            metric: METRIC.to_owned(),
            converters: converters as f64,
            conversions: converters,
            value_count: 0,
            value_sum: 0.0,
            value_sum_squares: 0.0,
        }],
    }
}

fn exact_settings() -> Settings {
    Settings {
        sketch_relative_error: 0.0,
        ..Settings::default()
    }
}

fn treatment_uplift(report: &Report) -> flagstaff_experiments::Comparison {
    report.arms[1].metrics[0]
        .uplift
        .expect("treatment has an uplift against a converting control")
}

/// The fixed-horizon test a dashboard without sequential testing would run at every look: the
/// same delta-method variance, with z_{1−α/2} instead of the confidence sequence.
fn fixed_horizon_significant(n: u64, conv_a: u64, conv_b: u64, alpha: f64) -> bool {
    let n = n as f64;
    let (pa, pb) = (conv_a as f64 / n, conv_b as f64 / n);
    if pa == 0.0 {
        return false;
    }
    let (va, vb) = (pa * (1.0 - pa) / n, pb * (1.0 - pb) / n);
    let variance = vb / (pa * pa) + pb * pb * va / (pa * pa * pa * pa);
    let relative = pb / pa - 1.0;
    relative.abs() > normal_quantile(1.0 - alpha / 2.0) * variance.sqrt()
}

/// Runs one two-arm experiment look by look, calling `at_look` with the users per arm and both
/// arms' converters after each look.
fn run(rng: &mut SplitMix64, rate_a: f64, rate_b: f64, mut at_look: impl FnMut(u64, u64, u64)) {
    let (mut conv_a, mut conv_b, mut users) = (0u64, 0u64, 0u64);
    for look in 1..=LOOKS {
        let target = USERS_PER_ARM * look / LOOKS;
        while users < target {
            conv_a += u64::from(rng.bernoulli(rate_a));
            conv_b += u64::from(rng.bernoulli(rate_b));
            users += 1;
        }
        at_look(users, conv_a, conv_b);
    }
}

#[test]
fn peeking_at_an_aa_test_keeps_the_error_rate() {
    const EXPERIMENTS: u64 = 200;
    let settings = exact_settings();
    let (mut sequential, mut fixed) = (0u32, 0u32);
    for e in 0..EXPERIMENTS {
        let mut rng = SplitMix64(0xa11c_e5ed ^ (e << 32));
        let (mut seq_hit, mut fixed_hit) = (false, false);
        run(&mut rng, 0.10, 0.10, |n, a, b| {
            let arms = [arm("control", n, a), arm("treatment", n, b)];
            let report = analyse("control", &arms, &settings).expect("valid input");
            seq_hit |= treatment_uplift(&report).significant;
            fixed_hit |= fixed_horizon_significant(n, a, b, settings.alpha);
        });
        sequential += u32::from(seq_hit);
        fixed += u32::from(fixed_hit);
    }
    let share = |k: u32| f64::from(k) / EXPERIMENTS as f64 * 100.0;
    println!(
        "A/A, {EXPERIMENTS} experiments × {LOOKS} looks: false winners sequential {sequential} \
         ({:.1} %), fixed-horizon {fixed} ({:.1} %)",
        share(sequential),
        share(fixed)
    );
    assert!(
        sequential <= 10,
        "always-valid intervals: {sequential} of {EXPERIMENTS} false winners (allowed 10)"
    );
    assert!(
        fixed > 10 && fixed > 2 * sequential,
        "peeking at fixed-horizon intervals should inflate the error: {fixed} vs {sequential}"
    );
}

#[test]
fn a_real_uplift_is_found_and_covered() {
    const EXPERIMENTS: u64 = 20;
    let settings = exact_settings();
    let truth = 0.12 / 0.10 - 1.0;
    let mut covered_at_every_look = 0;
    for e in 0..EXPERIMENTS {
        let mut rng = SplitMix64(0x0b5e_55ed ^ (e << 32));
        let mut always_covered = true;
        let mut last = None;
        run(&mut rng, 0.10, 0.12, |n, a, b| {
            let arms = [arm("control", n, a), arm("treatment", n, b)];
            let report = analyse("control", &arms, &settings).expect("valid input");
            let uplift = treatment_uplift(&report);
            always_covered &= uplift.relative.low <= truth && truth <= uplift.relative.high;
            last = Some(uplift);
        });
        let last = last.expect("at least one look");
        println!(
            "10 % vs 12 %, run {e}: uplift {:.3} [{:.3}, {:.3}], chance to beat {:.4}",
            last.relative.value, last.relative.low, last.relative.high, last.chance_to_beat_control
        );
        assert!(
            last.significant,
            "run {e}: not significant at the last look"
        );
        assert!(last.relative.low > 0.0, "run {e}: uplift not positive");
        assert!(
            last.relative.low <= truth && truth <= last.relative.high,
            "run {e}: last interval misses the true uplift {truth}"
        );
        assert!(last.chance_to_beat_control > 0.99);
        covered_at_every_look += u32::from(always_covered);
    }
    assert!(
        covered_at_every_look >= 19,
        "the interval covered the truth at all looks in only {covered_at_every_look} of {EXPERIMENTS} runs"
    );
}

/// Assigns 20,000 users to two arms with `share_a` of them going to `a`, counting them both
/// exactly and in sketches keyed by user id.
fn assign(seed: u64, share_a: f64) -> ([u64; 2], [DistinctCount; 2]) {
    let mut rng = SplitMix64(seed);
    let mut counts = [0u64; 2];
    let mut sketches = [DistinctCount::new(), DistinctCount::new()];
    for user in 0..20_000u64 {
        let arm = usize::from(!rng.bernoulli(share_a));
        counts[arm] += 1;
        let key = format!("user-{seed}-{user}");
        // Users come back: exposures repeat, the sketch counts each user once.
        sketches[arm].insert(&key);
        sketches[arm].insert(&key);
    }
    (counts, sketches)
}

fn srm_of(users: [f64; 2], relative_error: f64) -> flagstaff_experiments::Srm {
    let mut arms = [arm("control", 0, 0), arm("treatment", 0, 0)];
    for (arm, users) in arms.iter_mut().zip(users) {
        arm.users = users;
        arm.metrics.clear();
    }
    let settings = Settings {
        sketch_relative_error: relative_error,
        ..Settings::default()
    };
    analyse("control", &arms, &settings)
        .expect("valid input")
        .srm
}

#[test]
fn a_skewed_assignment_is_a_sample_ratio_mismatch() {
    for (name, share_a, expect_mismatch) in [("skewed 52/48", 0.52, true), ("fair", 0.5, false)] {
        let (counts, sketches) = assign(if expect_mismatch { 7 } else { 8 }, share_a);
        let exact = srm_of(counts.map(|c| c as f64), 0.0);
        let sketched = srm_of(
            [sketches[0].estimate(), sketches[1].estimate()],
            DistinctCount::relative_error(),
        );
        println!(
            "{name}: users {counts:?}, sketched [{:.0}, {:.0}]; SRM p exact {:?}, sketched {:?}",
            sketches[0].estimate(),
            sketches[1].estimate(),
            exact.p_value,
            sketched.p_value
        );
        assert_eq!(exact.mismatch, expect_mismatch, "{name}, exact counts");
        assert_eq!(
            sketched.mismatch, expect_mismatch,
            "{name}, sketched counts"
        );
        assert_eq!(exact.shares[0].expected_share, 0.5);
        let observed = exact.shares[0].observed_share;
        // A fair 20,000-user split has a standard deviation of 0.0035 in its share.
        assert!(
            (observed - share_a).abs() < 0.02,
            "{name}: observed {observed}"
        );
    }
}
