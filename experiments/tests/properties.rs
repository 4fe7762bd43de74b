//! Invariants over random inputs: [`analyse`] never panics and never reports a NaN or an
//! infinity; the sketch's wire form accepts exactly the valid sparse sequences and never
//! panics; merging is order-independent and deltas reproduce merges.

use flagstaff_experiments::{
    analyse, ArmInput, DistinctCount, Estimate, MetricInput, Report, Settings, REGISTERS,
};
use proptest::prelude::*;

/// Counts from sketches: usually ordinary, sometimes at the edges of f64.
fn count() -> impl Strategy<Value = f64> {
    prop_oneof![
        4 => 0.0..1e4,
        2 => 0.0..1e8,
        1 => Just(0.0),
        1 => Just(f64::MIN_POSITIVE),
        1 => Just(0.3),
        1 => Just(1e300),
        1 => Just(f64::MAX),
    ]
}

/// Any value, including ones `analyse` must refuse rather than compute with.
fn any_number() -> impl Strategy<Value = f64> {
    prop_oneof![
        6 => -1e6..1e6,
        1 => Just(0.0),
        1 => Just(f64::MAX),
        1 => Just(-f64::MAX),
        1 => Just(1e-300),
        1 => Just(f64::NAN),
        1 => Just(f64::INFINITY),
    ]
}

fn metric(name: &'static str) -> impl Strategy<Value = MetricInput> {
    (
        count(),
        any::<u64>(),
        prop_oneof![
            Just(0u64),
            Just(1),
            Just(2),
            0..1_000_000u64,
            Just(u64::MAX)
        ],
        any_number(),
        prop_oneof![count(), Just(-1.0)],
    )
        .prop_map(
            move |(converters, conversions, value_count, value_sum, value_sum_squares)| {
                MetricInput {
                    metric: name.to_owned(),
                    converters,
                    conversions,
                    value_count,
                    value_sum,
                    value_sum_squares,
                }
            },
        )
}

fn arm(index: usize) -> impl Strategy<Value = ArmInput> {
    (
        prop_oneof![8 => 0.001..100.0, 1 => Just(0.0), 1 => Just(1e300), 1 => Just(f64::MAX)],
        any::<u64>(),
        count(),
        prop::collection::vec(prop_oneof![metric("conversion"), metric("revenue")], 0..3),
    )
        .prop_map(move |(weight, exposures, users, metrics)| ArmInput {
            variant: format!("arm-{index}"),
            weight,
            exposures,
            users,
            metrics,
        })
}

fn arms() -> impl Strategy<Value = Vec<ArmInput>> {
    (1..5usize).prop_flat_map(|k| (0..k).map(arm).collect::<Vec<_>>())
}

fn settings() -> impl Strategy<Value = Settings> {
    (
        prop_oneof![Just(0.05), 1e-12..0.999, Just(0.0), Just(1.0)],
        prop_oneof![Just(5_000.0), 1.0..1e9, Just(1e-300), Just(0.0)],
        prop_oneof![Just(0.0), Just(DistinctCount::relative_error()), 0.0..0.999],
        prop_oneof![Just(0.001), 1e-12..0.5],
    )
        .prop_map(
            |(alpha, tuning_users, sketch_relative_error, srm_threshold)| Settings {
                alpha,
                tuning_users,
                sketch_relative_error,
                srm_threshold,
            },
        )
}

fn check_estimate(what: &str, e: &Estimate) -> Result<(), TestCaseError> {
    prop_assert!(
        e.value.is_finite() && e.low.is_finite() && e.high.is_finite(),
        "{what}: {e:?}"
    );
    prop_assert!(e.low <= e.value && e.value <= e.high, "{what}: {e:?}");
    Ok(())
}

fn check_report(report: &Report) -> Result<(), TestCaseError> {
    if let Some(p) = report.srm.p_value {
        prop_assert!((0.0..=1.0).contains(&p), "SRM p {p}");
    }
    for share in &report.srm.shares {
        prop_assert!(share.expected_share.is_finite() && share.observed_share.is_finite());
    }
    for arm in &report.arms {
        prop_assert!(arm.users.is_finite());
        for m in &arm.metrics {
            check_estimate("rate", &m.rate)?;
            prop_assert!(m.rate.low >= 0.0 && m.rate.high <= 1.0, "{:?}", m.rate);
            if let Some(c) = &m.uplift {
                check_estimate("uplift", &c.relative)?;
                prop_assert!(c.relative.low >= -1.0);
                prop_assert!((0.0..=1.0).contains(&c.chance_to_beat_control));
            }
            if let Some(mean) = &m.mean_value {
                check_estimate("mean value", mean)?;
            }
        }
    }
    // The report is plain data: JSON carries all of it (serde_json's default float parsing may
    // move the last digit, so the read-back is compared by shape, not bit for bit).
    let json = serde_json::to_string(report).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let back: Report =
        serde_json::from_str(&json).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(back.arms.len(), report.arms.len());
    prop_assert_eq!(back.srm.mismatch, report.srm.mismatch);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn analyse_never_reports_nan_or_infinity(arms in arms(), settings in settings(), control in 0..5usize) {
        let control = format!("arm-{control}");
        match analyse(&control, &arms, &settings) {
            Ok(report) => {
                prop_assert_eq!(report.arms.len(), arms.len());
                check_report(&report)?;
            }
            // Refusals name what they refuse; that they happen at all is decided by the input.
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn valid_inputs_are_analysed(arms in arms(), settings in settings()) {
        let valid_settings = settings.alpha > 0.0 && settings.alpha < 1.0 && settings.tuning_users > 0.0;
        let valid_arms = arms.iter().all(|a| {
            a.weight > 0.0 && a.weight.is_finite() && a.metrics.iter().all(|m| {
                m.value_sum.is_finite() && m.value_sum_squares >= 0.0
            })
        }) && arms.iter().all(|a| {
            let mut names: Vec<_> = a.metrics.iter().map(|m| &m.metric).collect();
            names.sort();
            names.windows(2).all(|w| w[0] != w[1])
        });
        let result = analyse("arm-0", &arms, &settings);
        prop_assert_eq!(result.is_ok(), valid_settings && valid_arms, "{:?}", result.err());
    }

    #[test]
    fn sparse_decoding_accepts_exactly_valid_input(entries in prop::collection::vec(
        prop_oneof![
            4 => (0..REGISTERS as u32, 1..=51u32).prop_map(|(i, r)| i << 8 | r),
            1 => any::<u32>(),
        ],
        0..64,
    )) {
        let valid = entries.iter().all(|e| (e >> 8) < REGISTERS as u32 && (1..=51).contains(&(e & 0xff)))
            && entries.windows(2).all(|w| w[0] >> 8 < w[1] >> 8);
        let decoded = DistinctCount::from_sparse(&entries);
        prop_assert_eq!(decoded.is_ok(), valid);
        let json = serde_json::to_string(&entries).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let wire = serde_json::from_str::<DistinctCount>(&json);
        prop_assert_eq!(wire.is_ok(), valid);
        if let (Ok(a), Ok(b)) = (decoded, wire) {
            prop_assert_eq!(a.to_sparse(), entries);
            prop_assert_eq!(a, b);
        }
    }

    #[test]
    fn arbitrary_wire_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = serde_json::from_slice::<DistinctCount>(&bytes);
    }

}

proptest! {
    // Each case walks several 16,384-register sketches; fewer cases keep the debug run short.
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn merge_is_order_independent_and_deltas_reproduce_it(
        a in prop::collection::vec(any::<u64>(), 0..300),
        b in prop::collection::vec(any::<u64>(), 0..300),
    ) {
        let sketch = |hashes: &[u64]| {
            let mut s = DistinctCount::new();
            for &h in hashes {
                s.insert_hash(h);
            }
            s
        };
        let (sa, sb) = (sketch(&a), sketch(&b));
        let mut ab = sa.clone();
        ab.merge(&sb);
        let mut ba = sb.clone();
        ba.merge(&sa);
        prop_assert_eq!(&ab, &ba);
        let all: Vec<u64> = a.iter().chain(&b).copied().collect();
        prop_assert_eq!(&ab, &sketch(&all));
        let mut applied = sa.clone();
        prop_assert!(applied.merge_sparse(&ab.delta_from(&sa)).is_ok());
        prop_assert_eq!(&applied, &ab);
        prop_assert!(ab.estimate().is_finite() && ab.estimate() >= 0.0);
    }
}
