//! Comparing an inference answer recorded on one device with the same
//! request recomputed on another.
//!
//! ONNX Runtime's CPU kernels give the same bits for the same model, input
//! and library on every run, and so do its CUDA kernels on one GPU model
//! and driver with the host's deterministic settings — but the two device
//! classes differ in the last bits (other summation orders, fused
//! multiply-adds, other approximations of `exp`/`tanh`).  A run made on a
//! GPU journals each answer's bytes ([`crate::journal::AnswerSource`]); a
//! re-execution on another device recomputes the answer, compares it with
//! the recorded one here, and delivers the *recorded* one to the agent, so
//! the rest of the run stays bit-identical and only the comparison is
//! approximate.
//!
//! # The rule
//!
//! * Bitwise equal answers are [`Comparison::Identical`].
//! * Two `f32` tensors (ABI layout, [`Tensor::decode_abi`]) of the same
//!   shape are compared element by element, numpy-`allclose` style:
//!   `|r − c| ≤ atol + rtol · |c|`, where `r` is the recorded element and
//!   `c` the recomputed one (the verifier's own result is the reference).
//!   NaN equals NaN at the same position (any payload); an infinity equals
//!   only the same infinity.
//! * Everything else — an error on either side, tensors of another dtype
//!   (integer labels, `u8`, `f64`), different shapes or dtypes, bytes that
//!   are not a tensor — must be bitwise equal; otherwise it is
//!   [`Comparison::Outside`] with the reason.
//!
//! # Defaults
//!
//! `atol` [`DEFAULT_ATOL`] = 1e-5 and `rtol` [`DEFAULT_RTOL`] = 1e-4,
//! overridable per model (`tolerance = { atol = …, rtol = … }` in the
//! manifest's `[[models]]` table).  Why these:
//!
//! * `f32` has a relative precision of 2⁻²³ ≈ 1.2e-7.  Reordering a
//!   reduction of `K` terms moves a result by about `√K` ulps typically
//!   and `K` ulps at worst: about 8e-6 relative for `K` = 4096, the widest
//!   layers of the models served here.  `rtol` 1e-4 (about 840 ulps) is
//!   ten times that, and a hundred times the CPU-vs-CUDA difference
//!   measured on the MLP with TF32 off (≤ 1e-6).
//! * It is still five times smaller than the rounding of TF32 (a 10-bit
//!   mantissa: 2⁻¹¹ ≈ 4.9e-4 relative) or `f16`: an answer computed with
//!   TF32 or half precision switched on by accident is reported, not
//!   accepted.
//! * `atol` covers elements near zero, where a relative bound means
//!   nothing: a sum of terms of magnitude about 1 that cancels to nearly 0
//!   keeps an absolute error of a few ulps *of the terms*.  1e-5 is the
//!   `float32` `atol` of PyTorch's `torch.testing.assert_close`, and a
//!   hundred times the ulp of 1.0 — far below any difference a consumer of
//!   a probability, a logit or a unit embedding would act on.

use serde::{Deserialize, Serialize};
use shm_protocol::inference::{DType, Tensor};
use std::fmt;

/// Default absolute tolerance (see the module docs).
pub const DEFAULT_ATOL: f64 = 1e-5;
/// Default relative tolerance (see the module docs).
pub const DEFAULT_RTOL: f64 = 1e-4;
/// Largest tolerance a manifest may set (either bound): beyond it the
/// comparison would accept answers that are simply different.
pub const MAX_TOLERANCE: f64 = 1.0;

/// How far an `f32` element recomputed on another device may be from the
/// recorded one: `|recorded − recomputed| ≤ atol + rtol · |recomputed|`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Tolerance {
    /// Absolute part.
    pub atol: f64,
    /// Relative part.
    pub rtol: f64,
}

impl Default for Tolerance {
    fn default() -> Self {
        Self {
            atol: DEFAULT_ATOL,
            rtol: DEFAULT_RTOL,
        }
    }
}

// Validated tolerances are finite, so comparing their bits is equality.
impl PartialEq for Tolerance {
    fn eq(&self, other: &Self) -> bool {
        self.atol.to_bits() == other.atol.to_bits() && self.rtol.to_bits() == other.rtol.to_bits()
    }
}

impl Eq for Tolerance {}

impl fmt::Display for Tolerance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "atol {:e}, rtol {:e}", self.atol, self.rtol)
    }
}

impl Tolerance {
    /// Checks one bound of a tolerance (`what` names it in the error): a
    /// finite number from 0 to [`MAX_TOLERANCE`].
    pub fn check_bound(what: &str, v: f64) -> Result<f64, String> {
        if v.is_finite() && (0.0..=MAX_TOLERANCE).contains(&v) {
            Ok(v)
        } else {
            Err(format!(
                "{what} must be a number from 0 to {MAX_TOLERANCE} (got {v})"
            ))
        }
    }

    /// The most `recomputed` may differ from the recorded element.
    fn allowed(&self, recomputed: f32) -> f64 {
        self.atol + self.rtol * f64::from(recomputed).abs()
    }
}

/// How close two answers within the tolerance are.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Closeness {
    /// Largest `|recorded − recomputed|` over the elements.
    pub max_abs_diff: f64,
    /// Largest share of the allowed difference used by one element
    /// (`|r − c| / (atol + rtol·|c|)`; at most 1 when within).
    pub max_used: f64,
}

impl Closeness {
    /// Both maxima of `self` and `other`.
    pub fn max(self, other: Closeness) -> Closeness {
        Closeness {
            max_abs_diff: self.max_abs_diff.max(other.max_abs_diff),
            max_used: self.max_used.max(other.max_used),
        }
    }
}

/// Why two answers are not equal within the tolerance.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Mismatch {
    /// What differs, in words.
    pub reason: String,
    /// For `f32` tensors of one shape: the largest `|r − c|`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_abs_diff: Option<f64>,
    /// The element that exceeds the tolerance the most (flat index), with
    /// its recorded and recomputed values.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub element: Option<(u64, f32, f32)>,
}

/// How a recorded answer compares with its recomputation.
#[derive(Debug, Clone, PartialEq)]
pub enum Comparison {
    /// Bitwise the same.
    Identical,
    /// `f32` tensors of one shape, every element within the tolerance.
    Within(Closeness),
    /// Not equal within the tolerance.
    Outside(Mismatch),
}

fn outside(reason: String) -> Comparison {
    Comparison::Outside(Mismatch {
        reason,
        max_abs_diff: None,
        element: None,
    })
}

fn describe(t: &Tensor) -> String {
    let dims: Vec<String> = t.shape().iter().map(u64::to_string).collect();
    format!("{}[{}]", t.dtype().name(), dims.join(","))
}

fn short(e: &str) -> String {
    const MAX: usize = 200;
    if e.len() <= MAX {
        return e.to_owned();
    }
    let mut end = MAX;
    while !e.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &e[..end])
}

/// Compares a `recorded` answer (an ABI tensor or an error text) with the
/// same request `recomputed` here, by the rule of the module docs.
pub fn compare(
    recorded: &Result<Vec<u8>, String>,
    recomputed: &Result<Vec<u8>, String>,
    tol: Tolerance,
) -> Comparison {
    if recorded == recomputed {
        return Comparison::Identical;
    }
    let (r, c) = match (recorded, recomputed) {
        (Ok(r), Ok(c)) => (r, c),
        (Err(r), Ok(_)) => {
            return outside(format!(
                "the recorded answer is the error `{}`, the recomputed one a tensor",
                short(r)
            ));
        }
        (Ok(_), Err(c)) => {
            return outside(format!(
                "the recorded answer is a tensor, the recomputed one the error `{}`",
                short(c)
            ));
        }
        (Err(r), Err(c)) => {
            return outside(format!(
                "the recorded error `{}` differs from the recomputed error `{}`",
                short(r),
                short(c)
            ));
        }
    };
    let (rt, ct) = match (Tensor::decode_abi(r), Tensor::decode_abi(c)) {
        (Ok(rt), Ok(ct)) => (rt, ct),
        (Err(e), _) | (_, Err(e)) => {
            return outside(format!(
                "the answers differ and are not both tensors ({e}): compared bitwise"
            ));
        }
    };
    if rt.dtype() != ct.dtype() || rt.shape() != ct.shape() {
        return outside(format!(
            "the recorded answer is {}, the recomputed one {}",
            describe(&rt),
            describe(&ct)
        ));
    }
    if rt.dtype() != DType::F32 {
        return outside(format!(
            "{} answers differ; only f32 answers are compared within a tolerance, others bitwise",
            describe(&rt)
        ));
    }
    let mut close = Closeness::default();
    // (index, used share, recorded, recomputed) of the worst element
    // beyond the tolerance.
    let mut worst: Option<(u64, f64, f32, f32)> = None;
    let values = rt.data().chunks_exact(4).zip(ct.data().chunks_exact(4));
    for (i, (a, b)) in values.enumerate() {
        let a = f32::from_le_bytes([a[0], a[1], a[2], a[3]]);
        let b = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let (diff, used) = if a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()) {
            (0.0, 0.0)
        } else if a.is_nan() || b.is_nan() || a.is_infinite() || b.is_infinite() {
            (f64::INFINITY, f64::INFINITY)
        } else {
            let diff = (f64::from(a) - f64::from(b)).abs();
            let allowed = tol.allowed(b);
            let used = if diff == 0.0 {
                0.0
            } else if allowed > 0.0 {
                diff / allowed
            } else {
                f64::INFINITY
            };
            (diff, used)
        };
        close.max_abs_diff = close.max_abs_diff.max(diff);
        close.max_used = close.max_used.max(used);
        if used > 1.0 && worst.is_none_or(|w| used > w.1) {
            worst = Some((i as u64, used, a, b));
        }
    }
    match worst {
        None => Comparison::Within(close),
        Some((i, _, a, b)) => Comparison::Outside(Mismatch {
            reason: format!(
                "furthest outside: element {i} of {}, recorded {a:e}, recomputed {b:e}",
                describe(&rt)
            ),
            max_abs_diff: Some(close.max_abs_diff),
            element: Some((i, a, b)),
        }),
    }
}

/// Answers recorded on one device for one model and found equal within
/// the model's tolerance when recomputed on another (part of `verify`'s and
/// `replay`'s report).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WithinTolerance {
    /// The device that computed the recorded answers (`cuda:0`).
    pub device: String,
    /// Where they were recomputed (`cpu`).
    pub recomputed_on: String,
    /// The model version (`id@version`).
    pub model: String,
    /// How many answers.
    pub answers: u64,
    /// How many of them were bitwise equal anyway.
    pub bitwise: u64,
    /// Largest `|recorded − recomputed|` of any element.
    pub max_abs_diff: f64,
    /// Largest share of the allowed difference one element used (≤ 1).
    pub max_used: f64,
    /// The model's absolute tolerance.
    pub atol: f64,
    /// The model's relative tolerance.
    pub rtol: f64,
}

impl fmt::Display for WithinTolerance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} answers from {} equal within tolerance on {} (model {}: max abs diff {:.1e}, \
             tolerance atol {:e} + rtol {:e}·|x|, at most {:.1}% of it used)",
            self.answers,
            self.device,
            self.recomputed_on,
            self.model,
            self.max_abs_diff,
            self.atol,
            self.rtol,
            self.max_used * 100.0
        )
    }
}

/// A recorded answer that a re-execution on another device could not
/// confirm: not equal within its model's tolerance, or kept only as a hash
/// that the recomputation does not match.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AnswerDivergence {
    /// The tick the answer was delivered after (its agent received it in
    /// the next one).
    pub tick: u64,
    /// The requesting agent.
    pub agent: u64,
    /// Its name.
    pub agent_name: String,
    /// Its request id.
    pub request_id: u64,
    /// The model version (`id@version`, or the name asked for).
    pub model: String,
    /// The device that computed the recorded answer.
    pub recorded_on: String,
    /// Where it was recomputed.
    pub recomputed_on: String,
    /// For `f32` tensors of one shape: the largest `|r − c|`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_abs_diff: Option<f64>,
    /// The model's absolute tolerance.
    pub atol: f64,
    /// The model's relative tolerance.
    pub rtol: f64,
    /// What differs.
    pub reason: String,
}

impl fmt::Display for AnswerDivergence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "inference answer delivered after tick {} to agent {} ({}), request {}, model {}: \
             recorded on {}, recomputed on {}",
            self.tick,
            self.agent,
            self.agent_name,
            self.request_id,
            self.model,
            self.recorded_on,
            self.recomputed_on
        )?;
        if let Some(d) = self.max_abs_diff {
            write!(
                f,
                ": max abs diff {d:.2e} outside the tolerance atol {:e} + rtol {:e}·|x|",
                self.atol, self.rtol
            )?;
        }
        write!(f, "; {}", self.reason)
    }
}

/// What a re-execution found comparing recorded answers of other devices
/// with its own: the answers within tolerance, per device and model, and
/// the first that was not.
#[derive(Debug, Clone, Default)]
pub struct AnswerChecks {
    within: std::collections::BTreeMap<(String, String, String), WithinTolerance>,
    diverged: Option<AnswerDivergence>,
}

impl AnswerChecks {
    /// Counts one answer recorded on `device`, recomputed on `here`, for
    /// `model` with `tol`: equal within it, bitwise (`close` `None`) or not.
    pub fn within(
        &mut self,
        device: &str,
        here: &str,
        model: &str,
        tol: Tolerance,
        close: Option<Closeness>,
    ) {
        let key = (device.to_owned(), here.to_owned(), model.to_owned());
        let w = self.within.entry(key).or_insert_with(|| WithinTolerance {
            device: device.to_owned(),
            recomputed_on: here.to_owned(),
            model: model.to_owned(),
            answers: 0,
            bitwise: 0,
            max_abs_diff: 0.0,
            max_used: 0.0,
            atol: tol.atol,
            rtol: tol.rtol,
        });
        w.answers += 1;
        match close {
            None => w.bitwise += 1,
            Some(c) => {
                w.max_abs_diff = w.max_abs_diff.max(c.max_abs_diff);
                w.max_used = w.max_used.max(c.max_used);
            }
        }
    }

    /// Notes an answer that was not confirmed (the first one is kept).
    pub fn diverged(&mut self, d: AnswerDivergence) {
        self.diverged.get_or_insert(d);
    }

    /// The first unconfirmed answer since the last call, taken.
    pub fn take_divergence(&mut self) -> Option<AnswerDivergence> {
        self.diverged.take()
    }

    /// Adds the counts of `other` (another segment of a verification).
    pub fn merge(&mut self, other: AnswerChecks) {
        for (k, o) in other.within {
            match self.within.get_mut(&k) {
                Some(w) => {
                    w.answers += o.answers;
                    w.bitwise += o.bitwise;
                    w.max_abs_diff = w.max_abs_diff.max(o.max_abs_diff);
                    w.max_used = w.max_used.max(o.max_used);
                }
                None => {
                    self.within.insert(k, o);
                }
            }
        }
        if let Some(d) = other.diverged {
            self.diverged(d);
        }
    }

    /// The answers within tolerance, by device, where recomputed, and model.
    pub fn report(&self) -> Vec<WithinTolerance> {
        self.within.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32s(v: &[f32]) -> Result<Vec<u8>, String> {
        Ok(Tensor::from_slice(vec![1, v.len() as u64], v)
            .unwrap()
            .encode_abi())
    }

    fn ulps(x: f32, k: u32) -> f32 {
        f32::from_bits(x.to_bits() + k)
    }

    #[test]
    fn equal_answers_are_identical() {
        let a = f32s(&[1.0, -2.0, f32::NAN]);
        assert_eq!(compare(&a, &a, Tolerance::default()), Comparison::Identical);
        let e: Result<Vec<u8>, String> = Err("unknown model `x`".into());
        assert_eq!(compare(&e, &e, Tolerance::default()), Comparison::Identical);
    }

    #[test]
    fn a_few_ulps_are_within_and_measured() {
        let c = [0.5f32, -3.25, 1e-30, 0.0, 1234.5];
        let r: Vec<f32> = c.iter().map(|x| ulps(*x, 3)).collect();
        let Comparison::Within(close) = compare(&f32s(&r), &f32s(&c), Tolerance::default()) else {
            panic!("not within")
        };
        // 3 ulps of 1234.5 (ulp 2^-13) is the largest difference.
        let want = 3.0 * 2f64.powi(-13);
        assert!((close.max_abs_diff - want).abs() < 1e-12, "{close:?}");
        assert!(close.max_used > 0.0 && close.max_used < 0.01, "{close:?}");
    }

    #[test]
    fn the_bound_is_atol_plus_rtol_times_the_recomputed_value() {
        let tol = Tolerance {
            atol: 1e-3,
            rtol: 1e-2,
        };
        // Allowed for c = 10: 1e-3 + 0.1 = 0.101.
        let just_in = compare(&f32s(&[10.1]), &f32s(&[10.0]), tol);
        assert!(matches!(just_in, Comparison::Within(_)), "{just_in:?}");
        let out = compare(&f32s(&[10.11]), &f32s(&[10.0]), tol);
        let Comparison::Outside(m) = out else {
            panic!("{out:?}")
        };
        assert_eq!(m.element, Some((0, 10.11, 10.0)));
        assert!((m.max_abs_diff.unwrap() - 0.11).abs() < 1e-5);
        assert!(m.reason.contains("element 0"), "{}", m.reason);
        // Near zero only atol counts.
        assert!(matches!(
            compare(&f32s(&[0.0009]), &f32s(&[0.0]), tol),
            Comparison::Within(_)
        ));
        assert!(matches!(
            compare(&f32s(&[0.0011]), &f32s(&[0.0]), tol),
            Comparison::Outside(_)
        ));
    }

    #[test]
    fn the_worst_element_is_reported() {
        let tol = Tolerance::default();
        let c = [1.0f32, 2.0, 3.0, 4.0];
        let r = [1.0f32, 2.1, 3.5, 4.0];
        let Comparison::Outside(m) = compare(&f32s(&r), &f32s(&c), tol) else {
            panic!()
        };
        assert_eq!(m.element.map(|e| e.0), Some(2));
        assert!((m.max_abs_diff.unwrap() - 0.5).abs() < 1e-6);
    }

    #[test]
    fn nan_and_infinity_must_match_exactly() {
        let tol = Tolerance::default();
        let nan2 = f32::from_bits(f32::NAN.to_bits() | 1);
        assert!(matches!(
            compare(&f32s(&[f32::NAN, 1.0]), &f32s(&[nan2, ulps(1.0, 1)]), tol),
            Comparison::Within(_)
        ));
        assert!(matches!(
            compare(&f32s(&[f32::NAN]), &f32s(&[1.0]), tol),
            Comparison::Outside(_)
        ));
        assert!(matches!(
            compare(&f32s(&[f32::INFINITY]), &f32s(&[f32::MAX]), tol),
            Comparison::Outside(_)
        ));
        assert!(matches!(
            compare(&f32s(&[f32::INFINITY]), &f32s(&[f32::NEG_INFINITY]), tol),
            Comparison::Outside(_)
        ));
    }

    #[test]
    fn everything_else_is_compared_bitwise() {
        let tol = Tolerance {
            atol: 1.0,
            rtol: 1.0,
        };
        let i64s = |v: &[i64]| {
            Ok::<_, String>(
                Tensor::from_slice(vec![v.len() as u64], v)
                    .unwrap()
                    .encode_abi(),
            )
        };
        let cases = [
            (i64s(&[1, 2]), i64s(&[1, 3]), "only f32"),
            (f32s(&[1.0, 2.0]), f32s(&[1.0]), "f32[1,2]"),
            (f32s(&[1.0]), i64s(&[1]), "i64[1]"),
            (Err("boom".into()), f32s(&[1.0]), "the error `boom`"),
            (f32s(&[1.0]), Err("oom".into()), "the error `oom`"),
            (Err("a".into()), Err("b".into()), "differs from"),
            (Ok(vec![1, 2, 3]), Ok(vec![1, 2, 4]), "not both tensors"),
        ];
        for (r, c, why) in cases {
            match compare(&r, &c, tol) {
                Comparison::Outside(m) => assert!(m.reason.contains(why), "{why}: {}", m.reason),
                other => panic!("{why}: {other:?}"),
            }
        }
    }

    #[test]
    fn checks_add_up_per_device_and_model_and_keep_the_first_divergence() {
        let tol = Tolerance::default();
        let close = |d: f64| {
            Some(Closeness {
                max_abs_diff: d,
                max_used: d / 1e-5,
            })
        };
        let mut a = AnswerChecks::default();
        a.within("cuda:0", "cpu", "mlp@v1", tol, close(2e-7));
        a.within("cuda:0", "cpu", "mlp@v1", tol, None);
        let mut b = AnswerChecks::default();
        b.within("cuda:0", "cpu", "mlp@v1", tol, close(3e-7));
        b.within("cuda:0", "cpu", "mlp@v2", tol, close(1e-7));
        let d = |tick| AnswerDivergence {
            tick,
            agent: 1,
            agent_name: "a".into(),
            request_id: 2,
            model: "mlp@v1".into(),
            recorded_on: "cuda:0".into(),
            recomputed_on: "cpu".into(),
            max_abs_diff: Some(0.5),
            atol: tol.atol,
            rtol: tol.rtol,
            reason: "element 3".into(),
        };
        b.diverged(d(5));
        b.diverged(d(9));
        a.merge(b);
        let r = a.report();
        assert_eq!(r.len(), 2);
        assert_eq!(
            (r[0].model.as_str(), r[0].answers, r[0].bitwise),
            ("mlp@v1", 3, 1)
        );
        assert_eq!(r[0].max_abs_diff, 3e-7);
        let line = r[0].to_string();
        assert!(
            line.starts_with("3 answers from cuda:0 equal within tolerance on cpu (model mlp@v1: max abs diff 3.0e-7"),
            "{line}"
        );
        let first = a.take_divergence().unwrap();
        assert_eq!(first.tick, 5);
        assert!(a.take_divergence().is_none());
        let text = first.to_string();
        for part in [
            "after tick 5",
            "agent 1 (a)",
            "request 2",
            "model mlp@v1",
            "recorded on cuda:0",
            "max abs diff 5.00e-1",
            "atol 1e-5",
        ] {
            assert!(text.contains(part), "{part}: {text}");
        }
    }

    #[test]
    fn bounds_are_checked() {
        assert_eq!(Tolerance::check_bound("atol", 0.0), Ok(0.0));
        assert_eq!(Tolerance::check_bound("rtol", 1e-3), Ok(1e-3));
        for bad in [-1e-9, 1.5, f64::NAN, f64::INFINITY] {
            let e = Tolerance::check_bound("atol", bad).unwrap_err();
            assert!(e.starts_with("atol must be"), "{e}");
        }
    }
}
